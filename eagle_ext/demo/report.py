"""What the demo shows: the metrics log (JSON lines), the training curves (PNG) and plain-text tables."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from eagle_ext._io import atomic_path

__all__ = ["MetricsLog", "format_table", "plot_curves", "read_metrics"]


class MetricsLog:
    """Append-only JSON-lines log; each record is flushed as soon as it is written, so a crashed or
    interrupted run keeps every line before it. Opening truncates: one file per run."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        self._file = open(self.path, "w")  # noqa: SIM115 - held open for the run, closed by close()
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


def plot_curves(records: Sequence[dict], path: str | os.PathLike) -> bool:
    """Plot EAGLE-3 loss / accuracy / tau_sim and P-EAGLE loss / per-depth accuracy against the step into a
    PNG at ``path``. Returns False (and writes nothing) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for ax, key, title in zip(axes[:3], ("loss", "accuracy", "tau_sim"),
                              ("EAGLE-3 loss", "EAGLE-3 accuracy", "EAGLE-3 tau_sim")):
        for split, style in (("train", "-"), ("eval", "o")):  # eval: held-out points before and after
            x, y = _series(records, "eagle3", split, key)
            if x:
                ax.plot(x, y, style, label=split)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    ax = axes[3]
    x, y = _series(records, "peagle", "train", "depth_accuracy")
    for d, column in enumerate(zip(*y)):
        ax.plot(x, column, label=f"depth {d}")
    ax.set_title("P-EAGLE accuracy per depth (train)")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if x:
        ax.legend()
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return True


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A left-aligned plain-text table (floats with 3 decimals)."""
    cells = [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
