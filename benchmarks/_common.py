"""Shared helpers for the benchmark scripts: timing, peak memory, tables and JSON results.

Every benchmark runs the fast path and its reference side by side in one run. Peak memory is measured as
the extra memory a case needs beyond its inputs:

- CUDA: ``torch.cuda.max_memory_allocated`` after a reset, minus what was allocated before the call;
- CPU: each case runs in a fresh spawned process; after its inputs are built the kernel's resident-set
  high-water mark is reset (``/proc/self/clear_refs``) and its growth (``VmHWM`` in
  ``/proc/self/status``) over the resident set at that moment is reported. ``ru_maxrss`` would not do:
  it keeps the parent's size from the fork that started the child. Freed allocator caches make this an
  upper bound on the live tensors, which is what a user's RAM sees.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from eagle_ext._io import write_json

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# gpu_check.sh points every benchmark at its one results directory with this variable.
RESULTS_DIR_ENV = "EAGLE_EXT_RESULTS_DIR"


def results_dir() -> str:
    """Where result JSON goes: ``$EAGLE_EXT_RESULTS_DIR`` when set, else ``benchmarks/results``."""
    return os.environ.get(RESULTS_DIR_ENV) or RESULTS_DIR


def device_name(device: str | torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], Any], *, device: str | torch.device = "cpu", warmup: int = 1, repeat: int = 3) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeat`` runs after ``warmup`` runs."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _child(case: Callable[..., Callable[[], Any]], kwargs: dict, warmup: int, repeat: int, queue) -> None:
    try:
        torch.set_num_threads(kwargs.pop("_threads", torch.get_num_threads()))
        run = case(**kwargs)
        _reset_peak_rss()
        base = _current_rss_bytes()
        seconds = time_fn(run, warmup=warmup, repeat=repeat)
        queue.put({"seconds": seconds, "peak_bytes": max(0, _peak_rss_bytes() - base)})
    except BaseException as exc:  # report, then let the parent raise
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def measure(
    case: Callable[..., Callable[[], Any]],
    *,
    device: str | torch.device = "cpu",
    warmup: int = 1,
    repeat: int = 3,
    **kwargs,
) -> dict[str, float]:
    """Time ``case(**kwargs)()`` and measure its peak extra memory.

    ``case`` builds the inputs and returns the zero-argument callable to measure. On CPU it must be a
    module-level function (it runs in a spawned process so that memory high-water marks are per case).
    Returns ``{"seconds": median, "peak_bytes": bytes}``.
    """
    device = torch.device(device)
    if device.type == "cuda":
        run = case(**kwargs)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        seconds = time_fn(run, device=device, warmup=warmup, repeat=repeat)
        return {"seconds": seconds, "peak_bytes": torch.cuda.max_memory_allocated(device) - base}
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(case, dict(kwargs), warmup, repeat, queue))
    proc.start()
    result = queue.get()
    proc.join()
    if "error" in result:
        raise RuntimeError(f"benchmark case {case.__name__}{kwargs} failed: {result['error']}")
    return result


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def print_table(rows: list[dict[str, Any]], columns: list[str], title: str | None = None) -> str:
    """Print ``rows`` as a Markdown table with the given ``columns``; return the text."""
    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = []
    if title:
        lines.append(f"### {title}")
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        lines.append("| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def write_results(
    name: str, payload: dict[str, Any], device: str | torch.device = "cpu", *, quiet: bool = False
) -> str:
    """Write ``payload`` plus environment facts to ``<results_dir()>/<name>_<device>.json`` atomically."""
    device = torch.device(device)
    out_dir = results_dir()
    os.makedirs(out_dir, exist_ok=True)
    record = {
        "benchmark": name,
        "device": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **payload,
    }
    path = os.path.join(out_dir, f"{name}_{device.type}.json")
    write_json(path, record, indent=2, sort_keys=True)
    if not quiet:
        print(f"wrote {path}", flush=True)
    return path


class PartialResults:
    """Result JSON that is rewritten after every row, so a benchmark stopped early leaves what it measured.

    Use as a context manager around the measuring code::

        with PartialResults("fused_linear_kl", device) as out:
            out.add("rows", row)          # written to disk at once, with "complete": false
            out.update(table=text)        # idem
        # on a normal exit: written once more with "complete": true

    On ``KeyboardInterrupt`` (``gpu_check.sh`` stops an over-budget phase with SIGINT) the file is written
    with ``"interrupted": true`` and the exit code is 130, without a traceback. Any other exception is
    recorded under ``"error"`` before it propagates.
    """

    def __init__(self, name: str, device: str | torch.device = "cpu", **payload: Any):
        self.name, self.device = name, torch.device(device)
        self.payload: dict[str, Any] = {"complete": False, **payload}
        self.path: str | None = None

    def write(self, *, quiet: bool = True) -> str:
        self.path = write_results(self.name, self.payload, self.device, quiet=quiet)
        return self.path

    def add(self, key: str, item: Any) -> None:
        """Append ``item`` to the list ``payload[key]`` and write."""
        self.payload.setdefault(key, []).append(item)
        self.write()

    def update(self, **items: Any) -> None:
        self.payload.update(items)
        self.write()

    def __enter__(self) -> PartialResults:
        self.write()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.payload["complete"] = True
            self.write(quiet=False)
            return False
        if issubclass(exc_type, KeyboardInterrupt):
            self.payload["interrupted"] = True
            path = self.write()
            print(f"interrupted: partial results in {path}", flush=True)
            raise SystemExit(130)
        self.payload["error"] = f"{exc_type.__name__}: {exc}"
        self.write(quiet=False)
        return False
