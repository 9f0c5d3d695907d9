"""What the demo shows: the metrics log (JSON lines), the training curves (PNG) and plain-text tables."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from eagle_ext._io import atomic_path
from eagle_ext.algorithms import ALGORITHM_NAMES, REGISTRY

__all__ = ["MetricsLog", "format_table", "plot_curves", "read_metrics", "save_figure"]


class MetricsLog:
    """Append-only JSON-lines log; each record is flushed as soon as it is written, so a crashed or
    interrupted run keeps every line before it. Opening truncates (one file per run) unless ``append`` (a
    resumed run continues its log; ``records`` then holds only this process's records)."""

    def __init__(self, path: str | os.PathLike, *, append: bool = False):
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        self._file = open(self.path, "a" if append else "w")  # noqa: SIM115 - held open, closed by close()
        self.records: list[dict] = []

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self.records.append(record)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a :class:`MetricsLog` file, in order."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _series(records: Sequence[dict], phase: str, split: str, key: str) -> tuple[list[int], list[float]]:
    picked = [r for r in records if r["phase"] == phase and r["split"] == split and key in r]
    return [r["step"] for r in picked], [r[key] for r in picked]


_TITLES = {spec.name: spec.label for spec in REGISTRY.values()}  # phase -> title, from the registry


def plot_curves(records: Sequence[dict], path: str | os.PathLike) -> bool:
    """Training curves against the step into a PNG at ``path``: one row per algorithm present in ``records``
    (``phase``: a registered algorithm's name) with loss, accuracy and the algorithm's own metric, whichever its
    records carry: tau_sim (EAGLE-3) or per-depth accuracy (P-EAGLE); train as lines, eval as points. Returns False (and writes nothing) when matplotlib is not installed.

    Raises:
        ValueError: ``records`` holds no EAGLE-3 or P-EAGLE record.
    """
    phases = [p for p in _TITLES if any(r.get("phase") == p for r in records)]
    if not phases:
        raise ValueError(f"records holds no record with a phase of {ALGORITHM_NAMES}; nothing to plot")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(len(phases), 3, figsize=(14, 3.8 * len(phases)), squeeze=False)
    for row, phase in zip(axes, phases):
        name = _TITLES[phase]
        for ax, key in zip(row[:2], ("loss", "accuracy")):
            for split, style in (("train", "-"), ("eval", "o")):
                x, y = _series(records, phase, split, key)
                if x:
                    ax.plot(x, y, style, label=split)
            ax.set_title(f"{name} {key}")
        ax = row[2]
        if any(r.get("phase") == phase and "tau_sim" in r for r in records):
            for split, style in (("train", "-"), ("eval", "o")):
                x, y = _series(records, phase, split, "tau_sim")
                if x:
                    ax.plot(x, y, style, label=split)
            ax.set_title(f"{name} tau_sim")
        else:
            x, y = _series(records, phase, "train", "depth_accuracy")
            for d, column in enumerate(zip(*y)):
                ax.plot(x, column, label=f"depth {d}")
            ax.set_title(f"{name} accuracy per depth (train)")
        for ax in row:
            ax.set_xlabel("step")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole: no 2.5 on a short run
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    return True


def save_figure(fig, path: str | os.PathLike, *, dpi: int) -> None:
    """Write a matplotlib figure as PNG atomically, then close it (also when writing fails)."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A left-aligned plain-text table (floats with 3 decimals)."""
    cells = [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
