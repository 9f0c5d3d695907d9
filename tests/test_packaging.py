"""The built wheel carries every file the package reads at run time (configs, demo assets).

The fast test checks pyproject's package-data globs against the files in the source tree; the slow one builds the
wheel, installs it into a fresh virtual environment and runs the quick tiny demo and a dry run of every shipped
config from there (outside the source tree, so nothing is read from the checkout).
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import zipfile

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10: pytest itself depends on tomli there
    import tomli as tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "eagle_ext")
_CODE_SUFFIXES = (".py", ".pyc", ".so", ".pyd")


def _package_data_globs() -> list[str]:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]["package-data"]["eagle_ext"]


def _data_files() -> list[str]:
    """Every non-code file under eagle_ext/ (relative to it), as a wheel would need to carry."""
    found = []
    for root, dirs, names in os.walk(PACKAGE):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        found += [os.path.relpath(os.path.join(root, n), PACKAGE) for n in names if not n.endswith(_CODE_SUFFIXES)]
    return sorted(found)


def test_every_shipped_data_file_is_listed_in_package_data():
    matched = set()
    for pattern in _package_data_globs():  # setuptools expands these with glob(recursive=True) in the package dir
        matched |= {os.path.relpath(p, PACKAGE) for p in glob.glob(os.path.join(PACKAGE, pattern), recursive=True)
                    if os.path.isfile(p)}
    data = _data_files()
    assert any(p.startswith("configs" + os.sep) for p in data)  # the configs exist in the tree
    missing = [p for p in data if p not in matched]
    assert not missing, f"files the wheel would leave out (add them to [tool.setuptools.package-data]): {missing}"


# ---------------------------------------------------------------------------------------------- slow: the wheel

#: config.json of each shipped config's target, as much as a dry run reads (the hub is not reachable in tests)
_TARGET_CONFIGS = {
    "llama31_8b": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                   "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0},
    "qwen3_8b": {"model_type": "qwen3", "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
                 "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
                 "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0},
    "smollm2": {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
                "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0},
}


def _run(cmd: list[str], cwd: str, env: dict, timeout: int = 1200) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_wheel_installs_and_runs_the_tiny_demo_and_every_shipped_config(tmp_path):
    import sysconfig

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["OMP_NUM_THREADS"] = "1"
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), ROOT],
         cwd=str(tmp_path), env=env, timeout=1800)
    (wheel,) = glob.glob(str(wheels / "eagle_ext-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    for rel in _data_files():
        assert "eagle_ext/" + rel.replace(os.sep, "/") in names, f"{rel} is not in {os.path.basename(wheel)}"

    # a fresh venv that sees this environment's dependencies (torch, transformers, ...) but not its eagle_ext:
    # a .pth line adds the site-packages directory to sys.path without running its .pth files (the editable install)
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=str(tmp_path), env=env)
    vpy = str(venv / "bin" / "python")
    site = subprocess.run([vpy, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, "_parent_env.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", vpy, "install", "--no-deps", "-q", wheel], cwd=str(tmp_path), env=env)
    work = tmp_path / "work"
    work.mkdir()
    where = _run([vpy, "-c", "import eagle_ext, os; print(os.path.dirname(eagle_ext.__file__))"], str(work), env)
    package = where.stdout.strip()
    assert package.startswith(str(venv)), package

    cli = str(venv / "bin" / "eagle-ext")
    demo = _run([cli, "demo", "--target", "tiny", "--quick", "--no-progress"], str(work), env, timeout=1800)
    assert "EAGLE-3 draft, held-out eval" in demo.stdout

    data = str(work / "runs" / "demo" / "data" / "train.jsonl")
    configs = sorted(glob.glob(os.path.join(package, "configs", "*.yaml")))
    assert len(configs) == len(glob.glob(os.path.join(PACKAGE, "configs", "*.yaml")))
    for config in configs:
        name = os.path.basename(config)
        overrides = [f"output_dir={work / 'dry' / name}"]
        if not name.startswith("tiny_cpu"):  # the tiny configs point at what the demo just wrote
            key = next(k for k in _TARGET_CONFIGS if name.startswith(k))
            target = work / "targets" / key
            target.mkdir(parents=True, exist_ok=True)
            (target / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"],
                                                            **_TARGET_CONFIGS[key]}))
            overrides += [f"target.name_or_path={target}", f"data.train_path={data}", f"data.eval_path={data}"]
        out = _run([cli, "train", "-c", config, "--dry-run", *overrides], str(work), env)
        assert "estimated peak memory per rank" in out.stdout, name
