"""vLLM in the loop (marker ``vllm``; skipped, with the install command, where no interpreter has vLLM):

- the serving commands of docs/serving.md, run with exactly the documented speculative config;
- ``eval --engine both`` agrees exactly with eagle_ext's decoder in greedy fp32, for EAGLE-3 and P-EAGLE;
- vLLM given an SGLang export as it stands (``--no-convert``) captures other aux layers than training did, and
  ``--engine both`` catches it; a serving field edited away from the training record is refused before loading;
- ``regenerate --engine vllm`` on 3 prompts (and equal to the hf engine's greedy fp32 answers).

One toy target (pre-trained, so drafts get accepted) and its EAGLE-3 / P-EAGLE drafts are trained once per module.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import replace

import pytest

from eagle_ext.cli import main

# vLLM starts an engine per mode (about 20 s each on 2 free cores, a minute on busy ones): generous limits
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1800)]

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "serving.md")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A pre-trained toy target, an EAGLE-3 run (speculators + sglang exports, fp32) and a P-EAGLE run
    (speculators, fp32)."""
    from eagle_ext.demo.toy import DemoConfig, run_pipeline
    from eagle_ext.serve.export_cli import export_checkpoint

    out = str(tmp_path_factory.mktemp("toy"))
    cfg = replace(DemoConfig(), num_conversations=300, eval_conversations=8, target_steps=100, eagle3_steps=60,
                  peagle_steps=30, log_every=20, eval_batches=1, show_progress=False)
    run_pipeline(cfg, out)
    paths = {"out": out, "target": os.path.join(out, "target"), "eagle3": os.path.join(out, "eagle3"),
             "peagle": os.path.join(out, "peagle")}
    paths["speculators"] = export_checkpoint(paths["eagle3"], "speculators", dtype="fp32")
    paths["sglang"] = export_checkpoint(paths["eagle3"], "sglang", dtype="fp32")
    paths["peagle_speculators"] = export_checkpoint(paths["peagle"], "speculators", dtype="fp32")
    prompts = os.path.join(out, "prompts.jsonl")
    with open(os.path.join(out, "data", "eval.jsonl")) as f:
        rows = [json.loads(line) for line in f][:4]
    with open(prompts, "w") as f:
        for row in rows:
            first_user = next(m for m in row["messages"] if m["role"] == "user")
            f.write(json.dumps({"prompt": first_user["content"]}) + "\n")
    paths["prompts"] = prompts
    return paths


def _documented_commands() -> list[list[str]]:
    with open(DOCS) as f:
        text = f.read()
    section = text[text.index("## Serving in vLLM"):]
    block = section[section.index("```bash"):]
    block = block[:block.index("```", 3)]
    return [shlex.split(line) for line in re.findall(r"^(?:vllm serve|eagle-ext export) .*$", block, re.MULTILINE)]


def test_documented_vllm_commands(toy, tmp_path):
    """Every command of docs/serving.md's vLLM block, run as written (paths substituted)."""
    from eagle_ext.engines.vllm import VllmEngine

    def sub(arg: str) -> str:
        return (arg.replace("RUN_PEAGLE", toy["peagle"]).replace("TARGET", toy["target"])
                .replace("RUN", toy["eagle3"]))

    commands = _documented_commands()
    served = [c for c in commands if c[:2] == ["vllm", "serve"]]
    assert len(served) == 4, commands  # speculators EAGLE-3, P-EAGLE, converted sglang, speculators on its own
    for command in commands:
        if command[:2] == ["eagle-ext", "export"]:
            src, out = sub(command[2]), sub(command[command.index("--out") + 1])
            assert command[command.index("--format") + 1] == "speculators"
            assert main(["export", src, "--format", "speculators", "--out", out]) == 0
            assert out != src and os.path.isdir(out)
    prompt = [[5, 6, 7, 8, 9, 10, 11, 12]]
    for command in served:
        model = sub(command[2])
        spec = None
        if "--speculative-config" in command:
            spec = json.loads(sub(command[command.index("--speculative-config") + 1]))
            assert "method" in spec
        with VllmEngine(model, dtype="float32", speculative_config=spec) as engine:
            engine.generate(prompt, max_new_tokens=24, ignore_eos=True)
            counters = engine.last["spec"]
        assert counters["num_drafts"] > 0 and counters["num_accepted_tokens"] > 0, (command, counters)


def _eval(toy, draft, out, *extra):
    return main(["eval", "--target", toy["target"], "--draft", draft, "--prompts", toy["prompts"],
                 "--num-draft-tokens", "3", "--max-new-tokens", "24", "--dtype", "fp32", "--device", "cpu",
                 "--engine", "both", "--no-progress", "--out", str(out), *extra])


@pytest.mark.parametrize("draft", ["speculators", "peagle_speculators",
                                   pytest.param("sglang", marks=pytest.mark.slow)])
def test_engine_both_agrees_exactly_in_fp32(toy, tmp_path, capsys, draft):
    out = tmp_path / "both.json"
    assert _eval(toy, toy[draft], out) == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    assert report["agree"] and report["settings"]["tolerance"] == 0.0
    hf, vllm = report["hf"]["speculative"][0], report["vllm"]["speculative"][0]
    assert hf["rounds"] == vllm["rounds"] and hf["acceptance_rate"] == pytest.approx(vllm["acceptance_rate"])
    assert hf["tau"] > 1.0  # a trained draft on a trained target: the check compared real acceptances
    assert report["vllm"]["settings"]["engine"] == "vllm" and report["vllm"]["target_only"]["new_tokens"] > 0
    assert "hf and vLLM agree exactly" in capsys.readouterr().out


def test_engine_both_catches_wrong_aux_layer_ids(toy, tmp_path, capsys):
    """vLLM given the SGLang export as it stands (--no-convert) reads its aux ids as layer inputs, one layer
    early, and says nothing; eagle_ext's decoder reads them right, so the acceptances part and the check fails."""
    out = tmp_path / "both.json"
    assert _eval(toy, toy["sglang"], out, "--no-convert") == 1
    err = capsys.readouterr().err
    assert "accept the draft differently" in err and "aux layer ids" in err
    report = json.loads(out.read_text())
    assert not report["agree"] and report["parity_problems"]


def test_eval_refuses_serving_ids_that_disagree_with_training(toy, tmp_path, capsys):
    """A speculators field edited away from the training record is refused before any model loads."""
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(toy["speculators"], broken)
    config = json.loads((broken / "config.json").read_text())
    assert config["eagle_ext"]["aux_layer_ids"] == [0, 2, 3] and config["eagle_aux_hidden_state_layer_ids"] == [1, 3, 4]
    config["eagle_aux_hidden_state_layer_ids"] = [2, 3, 4]
    (broken / "config.json").write_text(json.dumps(config))
    assert _eval(toy, str(broken), tmp_path / "both.json") == 2
    assert "is not a valid export" in capsys.readouterr().err


def test_regenerate_with_vllm_matches_hf_greedy(toy, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    rows = [json.dumps(json.loads(line)["prompt"]) for line in open(toy["prompts"])][:2]
    multi = {"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": None},
                          {"role": "user", "content": "and then"}]}
    prompts.write_text("\n".join(rows + [json.dumps(multi)]) + "\n")
    outs = {}
    for engine in ("vllm", "hf"):
        out = tmp_path / f"{engine}.jsonl"
        args = ["regenerate", "--target", toy["target"], "--prompts", str(prompts), "--out", str(out),
                "--max-new-tokens", "16", "--engine", engine, "--dtype", "fp32", "--no-progress"]
        assert main(args) == 0
        outs[engine] = {r["prompt_index"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert sorted(outs["vllm"]) == [0, 1, 2]
    assert len([m for m in outs["vllm"][2]["messages"] if m["role"] == "assistant"]) == 2
    for i in range(3):
        assert outs["vllm"][i]["messages"] == outs["hf"][i]["messages"]
    settings = json.loads((tmp_path / "vllm.jsonl.settings.json").read_text())
    assert settings["engine"] == "vllm" and settings["dtype"] == "fp32"
    # resuming with the other engine is refused
    args = ["regenerate", "--target", toy["target"], "--prompts", str(prompts), "--out", str(tmp_path / "vllm.jsonl"),
            "--max-new-tokens", "16", "--dtype", "fp32", "--no-progress"]
    assert main(args) == 2
    assert "different settings" in capsys.readouterr().err


@pytest.mark.slow
def test_smollm2_reference_draft_in_vllm_agrees_within_bf16_tolerance(tmp_path, capsys):
    """The shipped reference draft (an SGLang export without embedding, converted for vLLM) on SmolLM2-135M-
    Instruct in bf16: eagle_ext's decoder and vLLM agree within --parity-tolerance, and it is accepted."""
    pytest.importorskip("gguf")
    from eagle_ext.demo.smollm2 import SmolLM2NotInstalled, smollm2_path
    from eagle_ext.demo.smollm2_demo import REFERENCE_DIR, write_eval_prompts

    try:
        target = smollm2_path()
    except SmolLM2NotInstalled as exc:
        pytest.skip(str(exc))
    prompts = tmp_path / "prompts.jsonl"
    write_eval_prompts(str(prompts), 5)
    out = tmp_path / "both.json"
    code = main(["eval", "--target", target, "--draft", os.path.join(REFERENCE_DIR, "draft"), "--prompts",
                 str(prompts), "--num-draft-tokens", "3", "--max-new-tokens", "48", "--dtype", "bf16", "--device",
                 "cpu", "--engine", "both", "--no-progress", "--out", str(out)])
    report = json.loads(out.read_text())
    assert code == 0, report["parity_problems"]
    assert report["settings"]["tolerance"] == 0.15
    assert report["vllm"]["speculative"][0]["tau"] > 1.3 and report["hf"]["speculative"][0]["tau"] > 1.3
