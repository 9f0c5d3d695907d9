"""One-shot GPU check of eagle_ext: every phase under a budget, all results in one directory.

A lent GPU machine gives about 15 minutes in all (a few of them start-up) and at most 10 minutes per
command, so the whole check is ONE command of at most ``TOTAL_S`` = 8 minutes whose phases run in order
of value, each writing its results the moment it ends:

1. ``build``: ``pip install --no-build-isolation --no-deps -e .`` (the C++ extension for this Python),
   then a load check that writes ``env.json`` (device, torch, CUDA, Triton versions);
2. ``triton_tests``: the ``gpu`` tests of every Triton kernel (numerical parity) -> ``junit_triton_tests.xml``;
3. ``bench_fused_linear_kl``: the fused projection + loss against eager -> ``fused_linear_kl_cuda.json``;
4. ``bench_eagle3_step`` and 5. ``bench_peagle_step``: whole training steps -> ``*_step_cuda.json``;
6. ``census``: host syncs per training step and flex recompiles (``benchmarks/gpu_census.py``) ->
   ``census_cuda.json``;
7. ``other_gpu_tests``: every other ``gpu`` test (flex compiles, the recipe on CUDA) -> ``junit_other_gpu_tests.xml``.

Budgets add up: phase ``i`` must end by ``start + sum(budget[0..i])`` (time a phase leaves unused rolls
over to the next ones), then ``SUMMARY_S`` is kept for the summary. A phase still running ``grace`` seconds
before its end gets SIGINT (pytest then writes its junit XML, a benchmark its partial JSON: they write per
row and on ``KeyboardInterrupt``), and SIGKILL at its end. Each phase's output streams into
``<results>/<phase>.log``; ``<results>/summary.json`` is rewritten after every phase.

Triton's cache lives in the results directory (``<results>/cache/triton``: ``TRITON_CACHE_DIR``, with
autotune timings kept, ``TRITON_CACHE_AUTOTUNING=1``), so a rerun that carries it back skips the kernel
compiles and the autotune benchmarks; Inductor's (larger, tied to the machine) is shared by the phases
from a temporary directory. The tests run with one autotune config per kernel and the benchmarks with two
(``EAGLE_EXT_AUTOTUNE_CONFIGS``), which bounds the number of Triton compiles.

Usage (repository root or anywhere): ``bash benchmarks/gpu_check.sh [--dry-run] [--results-dir DIR]``.
Results directory: ``--results-dir``, else ``$OUT/gpu_check`` when ``OUT`` is set (the device tool's
output folder, copied back), else ``benchmarks/results/gpu/<device>``. ``--dry-run`` prints the plan with
its budgets, checks it (budgets add up, every phase leaves results) and runs nothing; it needs no GPU.

Standard library only: it runs before the package is built.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL_S = 480  # the whole command: 8 minutes
SUMMARY_S = 10  # kept at the end for summary.json
MIN_PHASE_S = 15  # a phase with less time than this left is skipped (and recorded as skipped)

# The gpu tests of the Triton kernels (phase 2); every other gpu test runs in the last phase.
TRITON_TESTS = (
    "tests/test_fused_linear_kl.py",
    "tests/test_cod_block_mask.py::test_cuda_triton_builder_equals_create_block_mask",
    "tests/test_cod_block_mask.py::test_cuda_build_from_host_indices_makes_no_host_sync",
)


@dataclasses.dataclass
class Phase:
    """One step of the check. ``command`` is an argv list (``{py}``, ``{results}`` substituted);
    ``results``: files (relative to the results directory) the phase leaves besides its log; ``kind``:
    how the dry run checks that it does (``pytest``: ``--junitxml`` names them; ``bench``: the module
    writes them through ``PartialResults``; ``command``: the command names them)."""

    name: str
    budget_s: int
    grace_s: int
    kind: str
    command: list[str]
    results: list[str]
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    module: str | None = None  # bench: the module run with -m


def _pytest(name, budget, grace, targets, per_test_timeout, extra=()):
    junit = f"junit_{name}.xml"
    command = ["{py}", "-m", "pytest", "-m", "gpu", "-o", "addopts=", "-q", "-ra", "-p", "no:cacheprovider",
               "--continue-on-collection-errors", f"--junitxml={{results}}/{junit}", "-o", "junit_family=xunit2",
               f"--timeout={per_test_timeout}", *extra, *targets]
    return Phase(name, budget, grace, "pytest", command, [junit], {"EAGLE_EXT_AUTOTUNE_CONFIGS": "1"})


def _bench(module, result, budget, grace=12, args=()):
    name = module.rsplit(".", 1)[-1]
    command = ["{py}", "-m", module, "--device", "cuda", *args]
    return Phase(name, budget, grace, "bench", command, [result], {"EAGLE_EXT_AUTOTUNE_CONFIGS": "2"}, module)


BUILD = (
    "{py} -m pip install --no-build-isolation --no-deps --no-index -e . && "
    "{py} -c 'import json, torch, eagle_ext._ext as e; e.load_extension(); "
    "import importlib.util as u; t = u.find_spec(\"triton\") and __import__(\"triton\").__version__; "
    "env = dict(torch=torch.__version__, cuda=torch.version.cuda, triton=t, "
    "device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None); "
    "json.dump(env, open(\"{results}/env.json\", \"w\"), indent=1); print(\"extension loads\", env)'"
)

PHASES = [
    Phase("build", 80, 10, "command", ["bash", "-c", BUILD], ["env.json"]),
    _pytest("triton_tests", 115, 15, TRITON_TESTS, 90),
    _bench("benchmarks.bench_fused_linear_kl", "fused_linear_kl_cuda.json", 85, args=("--no-compile",)),
    _bench("benchmarks.bench_eagle3_step", "eagle3_step_cuda.json", 50),
    _bench("benchmarks.bench_peagle_step", "peagle_step_cuda.json", 45),
    _bench("benchmarks.gpu_census", "census_cuda.json", 50),
    _pytest("other_gpu_tests", 45, 12, ["tests"], 120, [f"--deselect={t}" for t in TRITON_TESTS]),
]
# Left out on purpose (no budget left in 8 minutes): bench_cod_block_mask (its Triton builder is checked by
# triton_tests; its speed target is a CPU one), the CPU-only benchmarks, and bench_offline (needs datasets).


def check_plan(phases: list[Phase], total_s: int = TOTAL_S, summary_s: int = SUMMARY_S) -> list[str]:
    """Problems with a plan (empty when it is sound): budgets that do not add up to at most ``total_s``
    with ``summary_s`` kept, a grace that leaves no time to run, and phases that would not leave their
    results in the results directory."""
    problems = []
    spent = sum(p.budget_s for p in phases) + summary_s
    if spent > total_s:
        problems.append(f"phase budgets {[p.budget_s for p in phases]} + summary {summary_s} s = {spent} s "
                        f"exceed the total {total_s} s")
    names = [p.name for p in phases]
    if len(set(names)) != len(names):
        problems.append(f"phase names must be unique, got {names}")
    for p in phases:
        if p.budget_s < MIN_PHASE_S or not 0 < p.grace_s < p.budget_s:
            problems.append(f"{p.name}: budget {p.budget_s} s / grace {p.grace_s} s: need budget >= "
                            f"{MIN_PHASE_S} s and 0 < grace < budget")
        if not p.results:
            problems.append(f"{p.name}: declares no result file")
        for r in p.results:
            if os.path.isabs(r) or ".." in r.split("/"):
                problems.append(f"{p.name}: result {r!r} is not inside the results directory")
        command = " ".join(p.command)
        if p.kind == "pytest":
            for r in p.results:
                if f"--junitxml={{results}}/{r}" not in p.command:
                    problems.append(f"{p.name}: pytest does not write {r} (no --junitxml={{results}}/{r})")
            for target in p.command:
                path = target.split("::")[0]
                if path.startswith("tests") and not os.path.exists(os.path.join(ROOT, path)):
                    problems.append(f"{p.name}: test path {path} does not exist")
        elif p.kind == "bench":
            problems += _check_bench(p)
        elif p.kind == "command":
            for r in p.results:
                if f"{{results}}/{r}" not in command:
                    problems.append(f"{p.name}: the command does not write {{results}}/{r}")
        else:
            problems.append(f"{p.name}: unknown kind {p.kind!r}")
    return problems


def _check_bench(p: Phase) -> list[str]:
    """A benchmark leaves ``<name>_cuda.json`` iff it writes through ``PartialResults("<name>", ...)``
    (per row, and on SIGINT); read its source rather than import it (no torch needed here)."""
    path = os.path.join(ROOT, *p.module.split(".")) + ".py" if p.module else ""
    if not os.path.isfile(path):
        return [f"{p.name}: module {p.module} not found (looked for {path})"]
    source = open(path).read()
    problems = []
    for r in p.results:
        stem = r.removesuffix("_cuda.json")
        if not re.search(r'PartialResults\(\s*(?:"' + re.escape(stem) + r'"|name)', source):
            problems.append(f"{p.name}: {p.module} does not write {r} through PartialResults({stem!r}, ...)")
        if f'"{stem}"' not in source:
            problems.append(f"{p.name}: {p.module} never names its result {stem!r}")
    if "--device" not in source:
        problems.append(f"{p.name}: {p.module} takes no --device option")
    return problems


def format_plan(phases: list[Phase], results: str, total_s: int = TOTAL_S, summary_s: int = SUMMARY_S) -> str:
    lines = [f"gpu_check plan: {len(phases)} phases, total {total_s} s (summary {summary_s} s), results in {results}",
             f"{'#':>2} {'phase':<22} {'budget':>6} {'ends by':>7} {'SIGINT':>7}  results"]
    end = 0
    for i, p in enumerate(phases, 1):
        end += p.budget_s
        lines.append(f"{i:>2} {p.name:<22} {p.budget_s:>5}s {end:>6}s {end - p.grace_s:>6}s  "
                     f"{p.name}.log, {', '.join(p.results)}")
    lines.append(f"   {'summary':<22} {summary_s:>5}s {end + summary_s:>6}s {'':>7}  summary.json")
    return "\n".join(lines)


def _device_slug() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        out = []
    name = out[0] if out else "cuda"
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") or "cuda"


def default_results_dir() -> str:
    if os.environ.get("OUT"):
        return os.path.join(os.environ["OUT"], "gpu_check")
    return os.path.join(ROOT, "benchmarks", "results", "gpu", _device_slug())


def _write_json(path: str, payload) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp_")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _tail(path: str, chars: int = 2500) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-chars:]
    except OSError:
        return ""


def _junit_counts(path: str) -> dict | None:
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root)
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    counts["failed"] = sorted(f"{c.get('classname')}::{c.get('name')}" for s in suites for c in s.iter("testcase")
                              if c.find("failure") is not None or c.find("error") is not None)
    return counts


def _importable(python: str, module: str) -> bool:
    try:
        return subprocess.run([python, "-c", f"import {module}"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _default_sigint() -> None:
    """In a phase's process, before exec: SIGINT back to its default. A shell starting this script in the
    background makes SIGINT ignored, and an ignored signal stays ignored across exec, so Python would never turn
    the phase's SIGINT into KeyboardInterrupt (no junit, no partial results)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _signal_group(pid: int, sig: int) -> None:
    """Signal the phase's process group (pytest and what it started, a benchmark and its workers)."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:  # it ended in between
        pass


def run_phase(p: Phase, ends_at: float, results: str, base_env: dict, python: str) -> dict:
    """Run one phase until ``ends_at`` (monotonic): SIGINT ``grace`` s before, SIGKILL at it."""
    record = {"phase": p.name, "budget_s": p.budget_s}
    left = ends_at - time.monotonic()
    if left < MIN_PHASE_S:
        record.update(rc="skipped", seconds=0, note=f"{left:.0f} s left")
        return record
    command = [c.replace("{py}", python).replace("{results}", results) for c in p.command]
    if p.kind == "pytest" and not _importable(python, "pytest_timeout"):
        command = [c for c in command if not c.startswith("--timeout=")]  # the phase's SIGINT still bounds it
    log = os.path.join(results, f"{p.name}.log")
    env = {**base_env, **p.env}
    t0 = time.monotonic()
    print(f"== {p.name} (until +{left:.0f} s, SIGINT {p.grace_s} s before): {' '.join(command)}", flush=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_default_sigint)
        interrupted = killed = False
        try:
            rc = proc.wait(timeout=max(1.0, left - p.grace_s))
        except subprocess.TimeoutExpired:
            interrupted = True
            _signal_group(proc.pid, signal.SIGINT)
            try:
                rc = proc.wait(timeout=p.grace_s)
            except subprocess.TimeoutExpired:
                killed = True
                _signal_group(proc.pid, signal.SIGKILL)
                rc = proc.wait()
    record.update(rc=rc, seconds=round(time.monotonic() - t0, 1), interrupted=interrupted, killed=killed,
                  results={r: os.path.exists(os.path.join(results, r)) for r in p.results}, tail=_tail(log))
    if p.kind == "pytest":
        record["pytest"] = _junit_counts(os.path.join(results, p.results[0]))
    print(f"== {p.name}: rc {rc} after {record['seconds']} s"
          f"{' (SIGINT)' if interrupted else ''}{' (SIGKILL)' if killed else ''}; results {record['results']}",
          flush=True)
    print(record["tail"][-1500:], flush=True)
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print and check the plan, run nothing")
    parser.add_argument("--results-dir", help="default: $OUT/gpu_check, else benchmarks/results/gpu/<device>")
    parser.add_argument("--python", default=os.environ.get("PYTHON", sys.executable))
    args = parser.parse_args(argv)
    results = os.path.abspath(args.results_dir) if args.results_dir else (
        "<results>" if args.dry_run else default_results_dir())
    print(format_plan(PHASES, results), flush=True)
    problems = check_plan(PHASES)
    for problem in problems:
        print(f"plan error: {problem}", file=sys.stderr)
    if problems:
        return 2
    if args.dry_run:
        print("dry run: plan is sound (budgets add up, every phase leaves its results)")
        return 0

    start = time.monotonic()
    os.makedirs(results, exist_ok=True)
    cache = os.path.join(results, "cache")
    base_env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": ROOT + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""),
        "EAGLE_EXT_RESULTS_DIR": results,
        "TRITON_CACHE_DIR": os.path.join(cache, "triton"),
        "TRITON_CACHE_AUTOTUNING": "1",
        "TORCHINDUCTOR_CACHE_DIR": tempfile.mkdtemp(prefix="gpu_check_inductor_"),
    }
    summary = {"total_budget_s": TOTAL_S, "results_dir": results, "phases": [],
               "plan": [dataclasses.asdict(p) for p in PHASES], "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    summary_path = os.path.join(results, "summary.json")
    _write_json(summary_path, summary)
    ends_at = start
    for p in PHASES:
        ends_at += p.budget_s
        summary["phases"].append(run_phase(p, ends_at, results, base_env, args.python))
        summary["seconds"] = round(time.monotonic() - start, 1)
        _write_json(summary_path, summary)  # every phase's result lands as soon as it ends
    if os.path.exists(os.path.join(results, "env.json")):
        summary["env"] = json.load(open(os.path.join(results, "env.json")))
    summary["cache_bytes"] = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(cache) for f in fs)
    summary["seconds"] = round(time.monotonic() - start, 1)
    _write_json(summary_path, summary)
    short = {p["phase"]: (p["rc"], p["seconds"]) for p in summary["phases"]}
    print(json.dumps({"seconds": summary["seconds"], "phases": short}, indent=1))
    print(f"gpu_check done in {summary['seconds']} s; results in {results}", flush=True)
    if shutil.which("du"):
        subprocess.run(["du", "-sh", results], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
