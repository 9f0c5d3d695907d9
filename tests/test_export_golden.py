"""Byte-identical exports: tiny drafts whose every tensor holds integer-derived values (no RNG, no transcendental
functions, so neither a torch version nor a CPU changes them) are exported in every format that holds them,
converted between formats and exported from checkpoint metadata; the sha256 of every written file, and of what
:func:`load_exported_draft` reads back, must equal the values recorded before the export code was refactored
into the format table (issue #21).

The only normalisations: ``eagle_ext.__version__`` is pinned (it is written into every ``config.json``) and the
temporary directory is replaced by ``<TMP>`` in ``config.json`` (a conversion records its source's path).

Run as a script (``python tests/test_export_golden.py``) to print the current hashes as a ``GOLDEN`` literal.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import pytest
import torch
from transformers import LlamaConfig

import eagle_ext
from eagle_ext.models import Eagle3DraftModel
from eagle_ext.serve import check_export, export_draft, load_exported_draft
from eagle_ext.serve.export import convert_export, export_trained_draft

V, VD, H, L, MASK = 256, 96, 64, 6, 255
AUX = [1, 2, 4]
VERSION = "0.0.0+golden"
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


def _target_config(**overrides) -> LlamaConfig:
    base = dict(vocab_size=V, hidden_size=H, intermediate_size=128, num_hidden_layers=L, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, max_position_embeddings=512, rms_norm_eps=1e-6)
    return LlamaConfig(**{**base, **overrides})


def deterministic_draft(kind: str, vd: int | None = VD, *, config: dict | None = None, **kw) -> Eagle3DraftModel:
    """A draft whose floating tensor ``i`` (in state-dict key order) holds ``((arange * 7919 + 104729 * (i + 1))
    mod 2003 - 1001) / 16384``: exact integer arithmetic, one correctly rounded division."""
    target = _target_config(**(config or {}))
    if kind == "peagle":
        kw.update(num_hidden_layers=2, parallel_drafting=True, mask_token_id=MASK)
    draft = Eagle3DraftModel.from_target_config(target, vd, **kw)
    state = draft.state_dict()
    filled = {}
    for i, (name, t) in enumerate(sorted(state.items())):
        if t.is_floating_point():
            ints = (torch.arange(t.numel(), dtype=torch.int64) * 7919 + 104729 * (i + 1)) % 2003 - 1001
            filled[name] = (ints.to(torch.float64) / 16384).to(t.dtype).reshape(t.shape)
    draft.load_state_dict(filled, strict=False)
    if draft.is_compressed:  # an unsorted selection: the export reorders it by ascending target id
        draft.set_vocab_mapping((torch.arange(vd, dtype=torch.int64) * 37 + 11) % V)
    return draft.eval()


def _drafts() -> dict[str, Eagle3DraftModel]:
    return {
        "eagle3": deterministic_draft("eagle3"),
        "eagle3_full": deterministic_draft("eagle3", None, config={"rope_parameters": LLAMA3_ROPE}),
        "eagle3_31": deterministic_draft("eagle3", config={"attention_bias": True}, fc_norm=True, norm_output=True,
                                         bias=True),
        "peagle": deterministic_draft("peagle"),
    }


def _export(drafts, name, fmt, dtype="bf16", **kw):
    return lambda out: export_draft(drafts[name], out, format=fmt, dtype=dtype, aux_layer_ids=AUX,
                                    target_num_hidden_layers=L, target_name_or_path="example-org/target",
                                    speculative_tokens=4, **kw)


def _trained(drafts, name, fmt, depth_key):
    meta = {"algorithm": name, "aux_layer_ids": AUX, "step": 7, "epoch": 1, depth_key: 5,
            "target": {"name_or_path": "org/trained-target", "num_hidden_layers": L}}
    return lambda out: export_trained_draft(drafts[name], meta, out, format=fmt, checkpoint="ckpt/step_7")


def _convert(src, fmt, dtype=None):
    return lambda out: convert_export(out.parent / src, out, format=fmt, dtype=dtype)


#: export name -> how it is written (in this order: a conversion reads an export written before it)
def _cases(drafts) -> dict:
    return {
        "eagle3-speculators-bf16": _export(drafts, "eagle3", "speculators"),
        "eagle3-speculators-fp32": _export(drafts, "eagle3", "speculators", "fp32"),
        "eagle3-sglang-bf16": _export(drafts, "eagle3", "sglang"),
        "eagle3-sglang-fp16-noemb": _export(drafts, "eagle3", "sglang", "fp16", include_embeddings=False),
        "eagle3_full-speculators-bf16": _export(drafts, "eagle3_full", "speculators"),
        "eagle3_full-sglang-bf16": _export(drafts, "eagle3_full", "sglang"),
        "eagle3_31-speculators-fp32": _export(drafts, "eagle3_31", "speculators", "fp32", metadata={"run": "x"}),
        "peagle-speculators-bf16": _export(drafts, "peagle", "speculators"),
        "peagle-specforge_peagle-bf16": _export(drafts, "peagle", "specforge_peagle"),
        "trained-eagle3-sglang": _trained(drafts, "eagle3", "sglang", "ttt_steps"),
        "trained-peagle-speculators": _trained(drafts, "peagle", "speculators", "num_depths"),
        "convert-sglang-speculators": _convert("eagle3-sglang-bf16", "speculators"),
        "convert-sglang-noemb-speculators": _convert("eagle3-sglang-fp16-noemb", "speculators"),
        "convert-speculators-sglang-fp32": _convert("eagle3-speculators-bf16", "sglang", "fp32"),
        "convert-specforge_peagle-speculators": _convert("peagle-specforge_peagle-bf16", "speculators"),
    }


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _loaded_digest(out) -> str:
    """sha256 over what load_exported_draft returns: its fields and every state-dict tensor's bytes."""
    embed = None
    if "embed_tokens.weight" not in json.dumps(sorted(_tensor_names(out))):
        embed = torch.zeros(V, H)
    loaded = load_exported_draft(out, embed_tokens=embed)
    h = hashlib.sha256(json.dumps([loaded.algorithm, loaded.format, loaded.aux_layer_ids, loaded.mask_token_id,
                                   loaded.target_name_or_path]).encode())
    for name, t in sorted(loaded.draft.state_dict().items()):
        h.update(name.encode() + str(t.dtype).encode() + t.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _tensor_names(out):
    from safetensors import safe_open

    with safe_open(os.path.join(out, "model.safetensors"), framework="pt") as f:
        return list(f.keys())


def export_hashes(root) -> dict[str, dict[str, str]]:
    """Write every case under ``root`` and return ``{case: {file: sha256[:16], "loaded": digest}}``."""
    drafts, hashes = _drafts(), {}
    for case, write in _cases(drafts).items():
        out = write(root / case)
        assert check_export(out) == [], case
        files = {}
        for file in sorted(os.listdir(out)):
            with open(os.path.join(out, file), "rb") as f:
                data = f.read()
            files[file] = _sha(data.replace(os.fspath(root).encode(), b"<TMP>"))
        files["loaded"] = _loaded_digest(out)
        hashes[case] = files
    return hashes


GOLDEN: dict[str, dict[str, str]] = {
    "eagle3-speculators-bf16": {"config.json": "57ae38bd56c6c45e", "model.safetensors": "4417c70e906418cc", "loaded": "3a4fa23042058f3a"},
    "eagle3-speculators-fp32": {"config.json": "cdb1553d79ea1cb6", "model.safetensors": "807ff1d512d2a041", "loaded": "a57491ea9e465902"},
    "eagle3-sglang-bf16": {"config.json": "bc03518bca6ef29f", "model.safetensors": "a6d16f78feb87110", "loaded": "be468cf2625f1d84"},
    "eagle3-sglang-fp16-noemb": {"config.json": "1fdc3cae3d838456", "model.safetensors": "a1bb37e81158f2a4", "loaded": "b6a6f3281bb4087c"},
    "eagle3_full-speculators-bf16": {"config.json": "da24d39ab40ebe72", "model.safetensors": "619a95f23a8cff1e", "loaded": "170723dca7b6f5ef"},
    "eagle3_full-sglang-bf16": {"config.json": "d32967e5fdb35e37", "model.safetensors": "091a843798249cef", "loaded": "18ac298c7182f979"},
    "eagle3_31-speculators-fp32": {"config.json": "698765b4b3fdafaf", "model.safetensors": "b5005909468995db", "loaded": "512f166631e2f6ad"},
    "peagle-speculators-bf16": {"config.json": "04936514eebfc740", "model.safetensors": "720bc3662b94f3bb", "loaded": "07e7c851ddfcc15f"},
    "peagle-specforge_peagle-bf16": {"config.json": "f015b6a2185e2b9a", "model.safetensors": "720bc3662b94f3bb", "loaded": "a143df1775994502"},
    "trained-eagle3-sglang": {"config.json": "348c5393f975190d", "model.safetensors": "a6d16f78feb87110", "loaded": "fdac7665369dc425"},
    "trained-peagle-speculators": {"config.json": "9515cd66234ed13d", "model.safetensors": "720bc3662b94f3bb", "loaded": "5c5bfb251fa36c1b"},
    "convert-sglang-speculators": {"config.json": "aadc1f1738801800", "model.safetensors": "4417c70e906418cc", "loaded": "3a4fa23042058f3a"},
    "convert-sglang-noemb-speculators": {"config.json": "03153549b081d99d", "model.safetensors": "67ecbef73c4800cf", "loaded": "57da7534e638a88e"},
    "convert-speculators-sglang-fp32": {"config.json": "533737e9d17a6662", "model.safetensors": "050508f5aeee86ac", "loaded": "be468cf2625f1d84"},
    "convert-specforge_peagle-speculators": {"config.json": "462d82ef36ae78f4", "model.safetensors": "720bc3662b94f3bb", "loaded": "07e7c851ddfcc15f"},
}


@pytest.fixture(scope="module")
def hashes(tmp_path_factory):
    pinned, eagle_ext.__version__ = eagle_ext.__version__, VERSION
    try:
        return export_hashes(tmp_path_factory.mktemp("golden"))
    finally:
        eagle_ext.__version__ = pinned


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_export_bytes_match_the_recorded_hashes(hashes, case):
    assert hashes[case] == GOLDEN[case]


def test_every_case_is_recorded(hashes):
    assert sorted(hashes) == sorted(GOLDEN)


if __name__ == "__main__":
    import pathlib
    import tempfile

    eagle_ext.__version__ = VERSION
    with tempfile.TemporaryDirectory() as tmp:
        result = export_hashes(pathlib.Path(tmp))
    print("GOLDEN: dict[str, dict[str, str]] = {")
    for case, files in result.items():
        print(f"    {json.dumps(case)}: {json.dumps(files)},")
    print("}")
    sys.exit(0)
