"""The vLLM engine plumbing that runs without vLLM: interpreter discovery, the worker's counter arithmetic, the
speculative configs the docs promise, SGLang -> speculators conversion, the parity check and the eval CLI's
engine arguments. The runs in vLLM itself are in test_vllm.py (marker ``vllm``)."""

from __future__ import annotations

import json
import os
import stat
import sys
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig

from eagle_ext.cli import main
from eagle_ext.engines import vllm as vllm_client
from eagle_ext.engines.vllm import VllmUnavailable, find_vllm_python
from eagle_ext.engines.vllm_worker import counter_delta, spec_counters
from eagle_ext.models import Eagle3DraftModel
from eagle_ext.serve.export import check_export, convert_export, export_draft, load_exported_draft
from eagle_ext.serve.vllm_eval import (
    compare_engines,
    format_comparison,
    prepare_for_vllm,
    vllm_speculative_config,
)

AUX = [0, 2, 3]


def _draft(parallel: bool = False) -> tuple[Eagle3DraftModel, LlamaConfig]:
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(1)
    draft = Eagle3DraftModel.from_target_config(cfg, 16, parallel_drafting=parallel,
                                                mask_token_id=5 if parallel else None)
    draft.set_vocab_mapping(torch.randperm(64)[:16])
    return draft, cfg


def _export(tmp_path, fmt: str, *, parallel: bool = False, embeddings: bool = True, dtype: str = "fp32") -> str:
    draft, cfg = _draft(parallel)
    return export_draft(draft, tmp_path / f"{fmt}{'_pe' if parallel else ''}", format=fmt, aux_layer_ids=AUX,
                        target_name_or_path="/targets/t", target_num_hidden_layers=4, dtype=dtype,
                        include_embeddings=embeddings, speculative_tokens=4 if parallel else 3)


# ------------------------------------------------------------------------------------------------ discovery


def _fake_python(path, has_vllm: bool) -> str:
    path.write_text(f"#!/bin/sh\nexit {0 if has_vllm else 1}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_find_vllm_python_order_and_errors(tmp_path, monkeypatch):
    vllm_client._has_vllm.cache_clear()  # the fake interpreters below are fresh paths, but be safe
    good = _fake_python(tmp_path / "good", True)
    bad = _fake_python(tmp_path / "bad", False)
    assert find_vllm_python(good) == good
    with pytest.raises(VllmUnavailable, match=r"--vllm-python .*bad.* cannot import vllm; install it with `make vllm`"):
        find_vllm_python(bad)
    with pytest.raises(VllmUnavailable, match="does not exist"):
        find_vllm_python(str(tmp_path / "nope"))
    monkeypatch.setenv("EAGLE_EXT_VLLM_PYTHON", good)
    assert find_vllm_python() == good
    monkeypatch.setenv("EAGLE_EXT_VLLM_PYTHON", bad)
    with pytest.raises(VllmUnavailable, match="EAGLE_EXT_VLLM_PYTHON"):
        find_vllm_python()
    monkeypatch.delenv("EAGLE_EXT_VLLM_PYTHON")
    # no explicit choice: this interpreter, then .venv-vllm in the checkout or the working directory
    monkeypatch.setattr(vllm_client, "_has_vllm", lambda python: python.endswith(os.path.join(".venv-vllm", "bin",
                                                                                               "python")))
    venv = tmp_path / ".venv-vllm" / "bin"
    venv.mkdir(parents=True)
    _fake_python(venv / "python", True)
    monkeypatch.chdir(tmp_path)
    found = find_vllm_python()
    assert found.endswith(os.path.join(".venv-vllm", "bin", "python"))
    monkeypatch.setattr(vllm_client, "_has_vllm", lambda python: False)
    with pytest.raises(VllmUnavailable, match=r"vLLM was not found \(looked at: .*\); install it with"):
        find_vllm_python()


def test_worker_counters_sum_engines_and_take_deltas():
    metric = SimpleNamespace
    before = spec_counters([
        metric(name="vllm:spec_decode_num_drafts", value=10), metric(name="vllm:spec_decode_num_drafts", value=2),
        metric(name="vllm:spec_decode_num_accepted_tokens", value=7),
        metric(name="vllm:spec_decode_num_draft_tokens", value=36),
        metric(name="vllm:spec_decode_num_accepted_tokens_per_pos", values=[4, 2]),
        metric(name="vllm:spec_decode_num_accepted_tokens_per_pos", values=[1, 0, 0]),
        metric(name="vllm:num_requests_running", value=3),
    ])
    assert before == {"num_drafts": 12, "num_draft_tokens": 36, "num_accepted_tokens": 7,
                      "accepted_per_pos": [5, 2, 0]}
    after = {"num_drafts": 20, "num_draft_tokens": 60, "num_accepted_tokens": 15, "accepted_per_pos": [9, 4, 2]}
    assert counter_delta(after, before) == {"num_drafts": 8, "num_draft_tokens": 24, "num_accepted_tokens": 8,
                                            "accepted_per_pos": [4, 2, 2]}
    assert counter_delta(after, spec_counters([]))["accepted_per_pos"] == [9, 4, 2]


def test_worker_never_imports_eagle_ext_and_shadows_nothing():
    """The worker runs under vLLM's interpreter: standard library + vLLM only, and its own directory (which
    holds eagle_ext/engines/vllm.py) is dropped from sys.path before vLLM is imported."""
    import ast

    path = os.path.join(os.path.dirname(vllm_client.__file__), "vllm_worker.py")
    tree = ast.parse(open(path).read())
    modules = {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    modules |= {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert modules <= set(sys.stdlib_module_names) | {"vllm", "torch"}, modules
    assert vllm_client.WORKER == path


# ------------------------------------------------------------------------------------------------ configs


def test_vllm_speculative_config_always_names_the_method(tmp_path):
    spec = vllm_speculative_config(_export(tmp_path, "speculators"), 5)
    assert spec["method"] == "eagle3" and spec["num_speculative_tokens"] == 5 and "parallel_drafting" not in spec
    assert os.path.isabs(spec["model"])
    pe = vllm_speculative_config(_export(tmp_path, "speculators", parallel=True), 4)
    assert pe["method"] == "eagle3" and pe["parallel_drafting"] is True
    with pytest.raises(ValueError, match="sglang export; vLLM reads the aux layer ids .* one layer early"):
        vllm_speculative_config(_export(tmp_path, "sglang"), 3)


@pytest.mark.parametrize("embeddings", [True, False])
def test_sglang_export_converts_to_speculators_for_vllm(tmp_path, embeddings):
    src = _export(tmp_path, "sglang", embeddings=embeddings, dtype="bf16")
    served, note = prepare_for_vllm(src, str(tmp_path / "work"))
    assert note and "one layer early" in note and served.endswith("speculators")
    assert check_export(served) == []
    config = json.loads(open(os.path.join(served, "config.json")).read())
    assert config["eagle_aux_hidden_state_layer_ids"] == [i + 1 for i in AUX]  # vLLM's convention
    assert config["dtype"] == "bfloat16" and config["eagle_ext"]["embed_tokens"] == (
        "included" if embeddings else "target")
    assert config["eagle_ext"]["metadata"]["converted_from"] == os.path.abspath(src)
    embed = torch.randn(64, 32)
    a = load_exported_draft(src, embed_tokens=embed)
    b = load_exported_draft(served, embed_tokens=embed)
    assert a.aux_layer_ids == b.aux_layer_ids == AUX and b.target_name_or_path == "/targets/t"
    for (ka, ta), (kb, tb) in zip(sorted(a.draft.state_dict().items()), sorted(b.draft.state_dict().items())):
        assert ka == kb and torch.equal(ta, tb), ka
    spec_dir = _export(tmp_path, "speculators")
    assert prepare_for_vllm(spec_dir) == (os.path.abspath(spec_dir), None)
    with pytest.raises(ValueError, match="out_dir must differ"):
        convert_export(src, src, format="speculators")
    with pytest.raises(ValueError, match="cannot hold the eagle3 draft"):
        convert_export(src, tmp_path / "x", format="specforge_peagle")


def test_export_cli_converts_an_export_directory(tmp_path, capsys):
    src = _export(tmp_path, "sglang")
    assert main(["export", src, "--format", "speculators"]) == 0
    out = f"{src}_speculators"
    assert "eagle_aux_hidden_state_layer_ids [1, 3, 4]" in capsys.readouterr().out and check_export(out) == []
    assert main(["export", src, "--format", "speculators", "--no-embeddings"]) == 2
    assert "--no-embeddings does not apply to a conversion" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ parity


def _report(tau, rates, rounds=10, tps=10.0):
    return {"target_only": {"tokens_per_s": 10.0},
            "speculative": [{"num_draft_tokens": len(rates), "tau": tau, "acceptance_rate": rates, "rounds": rounds,
                             "tokens_per_s": tps}]}


def test_compare_engines_exact_and_tolerant():
    hf = _report(1.6, [0.4, 0.2])
    assert compare_engines(hf, _report(1.6, [0.4, 0.2])) == []
    problems = compare_engines(hf, _report(1.6, [0.4, 0.2], rounds=11))
    assert problems == ["K=2: verification rounds hf 10 vs vLLM 11"]
    problems = compare_engines(hf, _report(1.5, [0.3, 0.2]))
    assert any("tau hf 1.6000 vs vLLM 1.5000" in p and "0 (exact)" in p for p in problems)
    assert any("acceptance at position 1" in p for p in problems)
    assert compare_engines(hf, _report(1.5, [0.3, 0.2], rounds=12), tolerance=0.15) == []
    assert compare_engines(hf, _report(1.3, [0.3, 0.0]), tolerance=0.15) != []
    assert compare_engines(hf, {"speculative": [], "target_only": {}}) == ["K=2: vLLM has no result"]
    table = format_comparison(hf, _report(1.5, [0.3, 0.2], tps=12.0))
    assert "hf" in table and "vllm" in table and "1.20x" in table


# ------------------------------------------------------------------------------------------------ CLI


def test_eval_cli_engine_arguments_are_checked_before_loading(tmp_path, capsys, monkeypatch):
    target = tmp_path / "target"
    _draft()[1].save_pretrained(target)  # a config.json only: nothing loads weights before these checks
    draft = _export(tmp_path, "speculators")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('"hi"\n')
    base = ["eval", "--target", str(target), "--draft", draft, "--prompts", str(prompts)]
    assert main(base + ["--concurrency", "4"]) == 2
    assert "--concurrency 4 applies to --engine vllm" in capsys.readouterr().err
    assert main(base + ["--engine", "vllm", "--concurrency", "0"]) == 2
    assert "--concurrency must be >= 1" in capsys.readouterr().err
    assert main(base + ["--engine", "both", "--parity-tolerance", "-1"]) == 2
    assert "--parity-tolerance" in capsys.readouterr().err
    monkeypatch.setenv("EAGLE_EXT_VLLM_PYTHON", str(tmp_path / "no-python"))
    assert main(base + ["--engine", "vllm"]) == 2
    err = capsys.readouterr().err
    assert "--engine vllm" in err and "make vllm" in err


def test_eval_default_out_is_beside_the_export():
    from eagle_ext.serve.eval_cli import default_out

    assert default_out("/r/run/export/speculators", "vllm") == "/r/run/export/eval/speculators_vllm.json"
    assert default_out("/r/run/export/sglang/", "hf") == "/r/run/export/eval/sglang_hf.json"


def test_engine_that_never_answers_is_stopped_with_its_children(tmp_path):
    """A worker that hangs at start-up (here a stand-in that spawns a child and sleeps) is stopped after the
    timeout together with every process it started: vLLM's engine processes are the worker's children."""
    import time

    from eagle_ext.engines.vllm import VllmEngine

    pids = tmp_path / "pids"
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\ncase \"$1\" in -c) exit 0;; esac\nsleep 300 &\necho $! > {pids}\nsleep 300\n")
    fake.chmod(0o755)
    engine = VllmEngine("/nowhere", python=str(fake), startup_timeout=3)
    with pytest.raises(VllmUnavailable, match=r"did not answer within 3 s while starting"):
        engine.start()
    child = int(pids.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the worker's child {child} outlived the engine")
    assert engine._proc is None


def test_convert_refuses_an_export_whose_serving_ids_disagree_with_its_record(tmp_path):
    src = _export(tmp_path, "sglang")
    config = json.loads(open(os.path.join(src, "config.json")).read())
    config["eagle_config"]["eagle_aux_hidden_state_layer_ids"] = [1, 2, 3]
    with open(os.path.join(src, "config.json"), "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match=r"names aux layers \[1, 2, 3\] .* trained on \[0, 2, 3\]"):
        convert_export(src, tmp_path / "out", format="speculators")


def test_cli_turns_a_missing_or_failing_vllm_into_one_line(monkeypatch, capsys):
    from eagle_ext.serve import eval_cli

    def run(args):
        raise VllmUnavailable("vLLM was not found; install it with `make vllm`")

    monkeypatch.setattr(eval_cli, "run", run)
    assert main(["eval", "--target", "t", "--draft", "d", "--prompts", "p"]) == 2
    err = capsys.readouterr().err
    assert "eagle-ext eval: error: vLLM was not found; install it with `make vllm`" in err and "Traceback" not in err


def test_stop_ids_come_from_the_saved_generation_config_without_weights(tmp_path):
    """What eval, regenerate, synthesize and the demo stop on when vLLM decodes (no model loaded here): the
    tokenizer's EOS plus generation_config.json's, else the ids transformers derives from config.json."""
    from transformers import GenerationConfig

    from eagle_ext._hf import saved_generation_config
    from eagle_ext.serve.prompts import target_stop_token_ids

    tokenizer = SimpleNamespace(eos_token_id=2)
    cfg = _draft()[1]
    cfg.eos_token_id = 7
    cfg.save_pretrained(tmp_path / "m")
    assert target_stop_token_ids(tokenizer, str(tmp_path / "m")) == [2, 7]  # derived from config.json
    GenerationConfig(eos_token_id=[9, 11]).save_pretrained(tmp_path / "m")
    assert target_stop_token_ids(tokenizer, str(tmp_path / "m")) == [2, 9, 11]  # generation_config.json wins
    assert saved_generation_config(str(tmp_path / "nothing")) is None
    assert target_stop_token_ids(tokenizer, str(tmp_path / "nothing")) == [2]
