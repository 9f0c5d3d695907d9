"""Development-time compatibility check (marker ``compat``, not CI): the real speculators 0.9.0 and specforge 0.2.0
load our exports with their own ``from_pretrained`` and compute the same logits as our reloaded draft.

They live in a separate venv built by ``bash tools/peer-libs.sh`` (``$EAGLE_EXT_PEER_VENV``, default
``~/.cache/eagle-peer-libs/venv``; see :mod:`tests.peer_env`); without it every test here is skipped. One subprocess of that venv's python
loads every export (its imports take the time), writes the peer logits and what the peer read from the config,
and each case is then compared here.

Peer-side details (../shared/reference/serving-formats.md §6): speculators gets a local verifier directory (its
``from_pretrained`` reads the verifier config); its EAGLE-3 forward is run for one TTT step and the logits are
taken from ``lm_head``; a P-EAGLE speculators draft runs the same step-0 forward (depth 0 = EAGLE-3 step 0) and
its ``mask_hidden`` / ``mask_token_id`` are compared; specforge's EAGLE-3 RoPE buffers are rebuilt after loading;
specforge's P-EAGLE runs a parallel block (mask tokens + ``mask_hidden``) through a BlockMask made from the same
dense mask our draft uses. ``TORCHDYNAMO_DISABLE=1`` keeps their compiled helpers eager on CPU.
"""

import json
import os
import subprocess

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from eagle_ext.models import Eagle3DraftModel
from eagle_ext.serve import export_draft, load_exported_draft
from tests.peer_env import peer_venv, peer_venv_ready, skip_reason

pytestmark = [pytest.mark.compat, pytest.mark.slow]  # about 2 minutes (the peer imports)

PEER_VENV = peer_venv()
PEER_PYTHON = os.path.join(PEER_VENV, "bin", "python")

if not peer_venv_ready(PEER_VENV):
    pytest.skip(skip_reason(PEER_VENV), allow_module_level=True)

PEER_SCRIPT = r'''
import json, os, sys, warnings
warnings.simplefilter("ignore")
import torch
from safetensors.torch import load_file, save_file


def run_case(case):
    export_dir = case["export"]
    with open(os.path.join(export_dir, "config.json")) as f:
        cfg = json.load(f)
    inp = load_file(case["inputs"])
    ids, aux = inp["input_ids"], inp["aux"].float()
    out, info = {}, {}
    with torch.no_grad():
        if "speculators_model_type" in cfg:
            from speculators.models.eagle3 import Eagle3DraftModel
            from speculators.models.peagle import PEagleDraftModel
            cls = PEagleDraftModel if cfg["speculators_model_type"] == "peagle" else Eagle3DraftModel
            model = cls.from_pretrained(export_dir, torch_dtype=torch.float32).eval()
            captured = []
            model.lm_head.register_forward_hook(lambda m, i, o: captured.append(o))
            t = ids.shape[1]
            Eagle3DraftModel.forward(model, hidden_states=aux, input_ids=ids,
                                     document_ids=torch.zeros(1, t, dtype=torch.long), ttt_steps=1)
            out["logits"] = captured[0].float()
            info["class"] = type(model).__name__
            info["aux_ids"] = list(model.config.eagle_aux_hidden_state_layer_ids)
            info["draft_vocab_size"] = model.config.draft_vocab_size
            info["norm_before_residual"] = model.config.norm_before_residual
            if cls is PEagleDraftModel:
                out["mask_hidden"] = model.mask_hidden.detach().float().clone()
                info["mask_token_id"] = model.mask_token_id
        elif cfg["architectures"] == ["LlamaForCausalLMEagle3"]:
            from specforge.modeling.draft.llama3_eagle import LlamaForCausalLMEagle3
            model = LlamaForCausalLMEagle3.from_pretrained(export_dir, torch_dtype=torch.float32).eval()
            model.midlayer.self_attn._init_rope()  # transformers 5 leaves the RoPE buffers uninitialised
            h = model(hidden_states=aux, inputs_embeds=model.embed_input_ids(ids))  # norm applied inside
            out["logits"] = model.lm_head(h).float()
            info["class"] = type(model).__name__
            info["aux_ids"] = list(model.config.eagle_config["eagle_aux_hidden_state_layer_ids"])
            info["draft_vocab_size"] = model.draft_vocab_size
        else:
            from torch.nn.attention.flex_attention import create_block_mask
            from specforge.modeling.draft.peagle import PEagleDraftModel
            model = PEagleDraftModel.from_pretrained(export_dir, torch_dtype=torch.float32).eval()
            dense, is_mask = inp["mask"].bool(), inp["is_mask"].bool()
            n = dense.shape[-1]
            aux = torch.where(is_mask[None, :, None], model.mask_hidden.float().expand(1, n, -1), aux)
            block = create_block_mask(lambda b, h, q, kv: dense[q, kv], None, None, n, n, device="cpu")
            h = model(hidden_states=aux, inputs_embeds=model.embed_input_ids(ids), attention_mask=block,
                      position_ids=inp["position_ids"])
            out["logits"] = model.lm_head(h).float()
            out["mask_hidden"] = model.mask_hidden.detach().float().clone()
            info["class"] = type(model).__name__
            info["aux_ids"] = list(model.config.eagle_config["eagle_aux_hidden_state_layer_ids"])
            info["draft_vocab_size"] = model.draft_vocab_size
            info["norm_before_residual"] = model.norm_before_residual
        for name in ("d2t", "t2d"):
            if getattr(model, name, None) is not None:
                out[name] = getattr(model, name).clone()
    save_file({k: v.contiguous() for k, v in out.items()}, case["output"])
    with open(case["output"] + ".json", "w") as f:
        json.dump(info, f)


for case in json.load(open(sys.argv[1])):
    run_case(case)
'''

V, H, L, MASK, T = 256, 64, 6, 255, 9
AUX = [1, 2, 4]
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
#: name -> (format, algorithm, dtype, draft vocab size, RoPE parameters)
CASES = {
    "speculators-eagle3-fp32": ("speculators", "eagle3", "fp32", 96, None),
    "speculators-eagle3-bf16": ("speculators", "eagle3", "bf16", 96, None),
    "speculators-eagle3-llama3-rope": ("speculators", "eagle3", "fp32", 96, LLAMA3_ROPE),
    "speculators-eagle3-full-vocab": ("speculators", "eagle3", "fp32", V, None),
    "sglang-eagle3-fp32": ("sglang", "eagle3", "fp32", 96, None),
    "sglang-eagle3-bf16": ("sglang", "eagle3", "bf16", 96, None),
    "sglang-eagle3-llama3-rope": ("sglang", "eagle3", "fp32", 96, LLAMA3_ROPE),
    "sglang-eagle3-full-vocab": ("sglang", "eagle3", "fp32", V, None),
    "speculators-peagle-fp32": ("speculators", "peagle", "fp32", 96, None),
    "specforge_peagle-fp32": ("specforge_peagle", "peagle", "fp32", 96, None),
    "specforge_peagle-bf16": ("specforge_peagle", "peagle", "bf16", 96, None),
}


def _target_config(rope):
    extra = {"rope_parameters": rope} if rope else {}
    return LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=128, num_hidden_layers=L, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, max_position_embeddings=512, rms_norm_eps=1e-6, **extra)


def _inputs(kind, real):
    """Ids and aux states; P-EAGLE in the specforge layout gets a parallel block after ``real`` rows."""
    ids = torch.randint(0, V - 1, (1, T))
    inputs = {"input_ids": ids, "aux": torch.randn(1, T, 3 * H)}
    if real < T:
        mask = torch.zeros(T, T, dtype=torch.bool)
        mask[:real, :real] = torch.ones(real, real, dtype=torch.bool).tril()
        for d in range(1, T - real + 1):
            row = real + d - 1
            mask[row, :real] = True
            mask[row, real:row + 1] = True
        ids[0, real:] = MASK
        inputs.update(mask=mask, is_mask=torch.arange(T) >= real, position_ids=torch.arange(T)[None])
    return inputs


def _our_logits(draft, inputs):
    with torch.no_grad():
        if "mask" in inputs:
            hidden = torch.where(inputs["is_mask"][None, :, None], draft.mask_hidden.expand(1, T, -1), inputs["aux"])
            return draft.compute_logits(draft.forward_peagle(
                inputs["input_ids"], draft.project_hidden_states(hidden), inputs["position_ids"],
                inputs["mask"][None, None]))
        if draft.config.parallel_drafting:  # depth-0 rows only: causal attention
            return draft.compute_logits(draft.forward_peagle(
                inputs["input_ids"], draft.project_hidden_states(inputs["aux"]), torch.arange(T)[None],
                torch.ones(T, T, dtype=torch.bool).tril()[None, None]))
        return draft.compute_logits(draft(inputs["input_ids"], draft.project_hidden_states(inputs["aux"])))


@pytest.fixture(scope="module")
def peer_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("compat")
    torch.manual_seed(0)
    cases, ours = [], {}
    verifiers = {}
    for name, (fmt, kind, dtype, vd, rope) in CASES.items():
        config = _target_config(rope)
        key = json.dumps(rope, sort_keys=True)
        if key not in verifiers:  # speculators reads the verifier's config.json (offline: a local directory)
            verifiers[key] = str(root / f"verifier{len(verifiers)}")
            LlamaForCausalLM(config).save_pretrained(verifiers[key])
        parallel = kind == "peagle"
        draft = Eagle3DraftModel.from_target_config(
            config, vd, num_hidden_layers=2 if parallel else 1, parallel_drafting=parallel,
            mask_token_id=MASK if parallel else None)
        with torch.no_grad():
            for p in draft.parameters():
                p.add_(0.05 * torch.randn_like(p))
        draft.set_vocab_mapping(torch.randperm(V)[:vd])
        out = export_draft(draft, root / name, format=fmt, aux_layer_ids=AUX, target_name_or_path=verifiers[key],
                           target_num_hidden_layers=L, dtype=dtype)
        inputs = _inputs(kind, 6 if fmt == "specforge_peagle" else T)
        save_file(inputs, str(root / f"{name}.inputs.safetensors"))
        cases.append({"export": out, "inputs": str(root / f"{name}.inputs.safetensors"),
                      "output": str(root / f"{name}.peer.safetensors")})
        loaded = load_exported_draft(out).draft
        ours[name] = (loaded, _our_logits(loaded, inputs))
    manifest = root / "cases.json"
    manifest.write_text(json.dumps(cases))
    script = root / "peer_logits.py"
    script.write_text(PEER_SCRIPT)
    env = {**os.environ, "TORCHDYNAMO_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([PEER_PYTHON, str(script), str(manifest)], capture_output=True, text=True, env=env,
                          timeout=900)
    assert proc.returncode == 0, f"the peer-libs script failed:\n{proc.stderr[-6000:]}"
    results = {}
    for name, case in zip(CASES, cases, strict=True):
        with open(case["output"] + ".json") as f:
            results[name] = (load_file(case["output"]), json.load(f), *ours[name])
    return results


@pytest.mark.parametrize("name", list(CASES))
def test_peer_library_loads_our_export_with_the_same_logits(peer_results, name):
    fmt, kind, dtype, vd, _ = CASES[name]
    peer, info, draft, ours = peer_results[name]
    torch.testing.assert_close(peer["logits"], ours, atol=2e-5, rtol=1e-4)
    assert info["draft_vocab_size"] == vd
    if fmt == "speculators":
        assert info["class"] == ("PEagleDraftModel" if kind == "peagle" else "Eagle3DraftModel")
        assert info["aux_ids"] == [i + 1 for i in AUX]  # speculators reads hs[k]: our id + 1
        assert info["norm_before_residual"] is False
    else:
        assert info["class"] == ("PEagleDraftModel" if kind == "peagle" else "LlamaForCausalLMEagle3")
        assert info["aux_ids"] == AUX  # specforge / SGLang: the output of layer k
    if vd < V:
        assert torch.equal(peer["d2t"], draft.d2t) and torch.equal(peer["t2d"], draft.t2d)
    else:  # speculators: none shipped and none built; specforge: the identity maps we ship
        assert ("d2t" not in peer and "t2d" not in peer) if fmt == "speculators" else (
            not peer["d2t"].any() and bool(peer["t2d"].all()))
    if kind == "peagle":
        assert torch.equal(peer["mask_hidden"], draft.mask_hidden.detach())
        if fmt == "speculators":
            assert info["mask_token_id"] == MASK
