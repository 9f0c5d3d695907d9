"""What the docs tell a new user works as written: the offline-cache CLI commands of docs/offline.md, the dry run's
message when the target's config.json is out of reach, the peer-library venv location, whole steps on the report's
x-axis."""

from __future__ import annotations

import os
import re
import shlex

import pytest

from eagle_ext.cli import main
from eagle_ext.testing import save_tiny_target
from tests.recipe_helpers import make_chats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _shell_commands(markdown: str, heading: str) -> list[str]:
    """The ``$ ...`` commands (with backslash continuations) of the first code block under ``heading``."""
    section = markdown.split(heading, 1)[1]
    block = section.split("```", 2)[1]
    commands, current = [], None
    for line in block.splitlines():
        if current is not None:
            current += " " + line.strip()
        elif line.startswith("$ "):
            current = line[2:].strip()
        else:
            continue
        if current.endswith("\\"):
            current = current[:-1].rstrip()
        else:
            commands.append(current)
            current = None
    return commands


def test_offline_md_trains_from_a_cache_with_the_cli_as_written(tmp_path, monkeypatch, capsys):
    with open(os.path.join(ROOT, "docs", "offline.md")) as f:
        commands = _shell_commands(f.read(), "## Training from a cache with the CLI")
    assert [c.split()[:2] for c in commands] == [["eagle-ext", "precompute"]] * 2 + [["eagle-ext", "train"]]
    # what `eagle-ext demo --target tiny` leaves in runs/demo (smaller data)
    save_tiny_target(str(tmp_path / "runs" / "demo" / "target"))
    make_chats(str(tmp_path / "runs" / "demo" / "data" / "train.jsonl"), 16)
    make_chats(str(tmp_path / "runs" / "demo" / "data" / "eval.jsonl"), 4, seed=1)
    monkeypatch.chdir(tmp_path)
    for command in commands:
        argv = [a.replace("eagle_ext/configs/", os.path.join(ROOT, "eagle_ext", "configs") + os.sep)
                for a in shlex.split(command)[1:]]
        assert main(argv) == 0, command
    out = capsys.readouterr().out
    assert "finished at step 8" in out and "tau_sim" in out


def test_dry_run_says_it_reads_only_the_targets_config(tmp_path, monkeypatch, capsys):
    """Offline, the README's first command fails on the hub id's config.json: the line says what the dry run
    reads and how to point it at a local copy."""
    import transformers

    def offline(name, **kwargs):
        raise OSError(f"We couldn't connect to 'https://huggingface.co' to load the files of {name}.\nCheck your "
                      "internet connection")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", offline)
    data = tmp_path / "chats.jsonl"
    data.write_text("")
    assert main(["train", "-c", os.path.join(ROOT, "eagle_ext", "configs", "llama31_8b_eagle3.yaml"), "--dry-run",
                 f"data.train_path={data}", f"data.eval_path={data}", f"output_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("eagle-ext train: error:")]
    assert "target.name_or_path 'meta-llama/Llama-3.1-8B-Instruct': cannot read its config.json" in line
    assert "the dry run reads only that file" in line and "local model directory" in line
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert "loads nothing" not in readme and "reads the target's `config.json`" in readme


def test_peer_library_venv_is_an_environment_variable_and_its_builder_ships():
    from tests.peer_env import BUILD_SCRIPT, peer_venv, skip_reason

    assert peer_venv({"EAGLE_EXT_PEER_VENV": "/opt/peers"}) == "/opt/peers"
    assert peer_venv({"EAGLE_PEER_VENV": "/old/name"}) == "/old/name"
    assert peer_venv({}) == os.path.expanduser("~/.cache/eagle-peer-libs/venv")
    assert os.path.isfile(os.path.join(ROOT, BUILD_SCRIPT))
    assert os.path.isfile(os.path.join(ROOT, "tools", "peer-libs-constraints.txt"))
    reason = skip_reason("/opt/peers")
    assert "../shared" not in reason and "bash tools/peer-libs.sh" in reason and "EAGLE_EXT_PEER_VENV" in reason
    with open(os.path.join(ROOT, BUILD_SCRIPT)) as f:
        assert "EAGLE_EXT_PEER_VENV" in f.read()
    for doc in ("docs/development.md", "docs/serving.md"):
        with open(os.path.join(ROOT, doc)) as f:
            assert "shared/tools/peer-libs.sh" not in f.read(), doc


def test_report_x_axis_has_whole_steps(monkeypatch):
    pytest.importorskip("matplotlib")
    from eagle_ext.train import reporting

    figures = []
    monkeypatch.setattr(reporting, "save_figure", lambda fig, path, dpi: figures.append(fig))
    records = [{"phase": "eagle3", "split": "train", "step": s, "loss": 2.0 / s, "accuracy": 0.1 * s,
                "tau_sim": 1.0 + 0.1 * s} for s in (1, 2, 3)]
    assert reporting.plot_curves(records, "unused.png")
    (fig,) = figures
    fig.canvas.draw()
    for ax in fig.axes:
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_readme_thread_note_names_the_flag():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert re.search(r"`--threads N`", readme) and "OMP_NUM_THREADS" in readme
