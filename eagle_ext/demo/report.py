"""The SmolLM2 demo's report: ``report.json`` (built from the evaluator's reports, schema checked), ``report.png``
and the printed table.

``report.json``::

    {"target": {"name", "path"}, "device", "dtype", "threads", "settings": {...},
     "phases": {phase: seconds}, "total_seconds", "files": {what: path},
     "drafts": {"reference" | "live": {"algorithm", "path", "format", "metrics", "training": {...},
                                      "by_k": {"3": PER_K, "5": PER_K},
                                      "vllm_by_k": {"3": PER_K}}},     # present when vLLM evaluated
     "vllm": {"version", "device"} | null}

where ``PER_K`` holds :data:`PER_K_FIELDS` (``tau``: tokens committed per target forward, the bonus token
included; ``per_position_acceptance``: K rates, the fraction of rounds that accepted draft token j;
``target_tokens_per_s`` is the target-only baseline decoded in the same run, interleaved per prompt) plus the
round counts.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from eagle_ext.algorithms import REGISTRY
from eagle_ext.serve.speculative import lossless_label
from eagle_ext.train.reporting import format_table, read_metrics, save_figure

__all__ = ["ALGORITHM_TITLES", "DRAFT_NAMES", "PER_K_FIELDS", "build_report", "by_k", "check_report", "format_report_table",
           "plot_report"]

#: the drafts every report holds, in the order they are shown
DRAFT_NAMES = ("reference", "live")
#: per-K field -> its JSON type(s)
PER_K_FIELDS: dict[str, tuple[type, ...]] = {
    "tau": (float,), "per_position_acceptance": (list,), "target_tokens_per_s": (float,),
    "speculative_tokens_per_s": (float,), "speedup": (float,), "lossless": (bool,),
}
#: algorithm -> how tables print it (the registry's labels)
ALGORITHM_TITLES = {name: spec.label for name, spec in REGISTRY.items()}


def by_k(eval_report: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The per-K entries of one drafter's :func:`eagle_ext.serve.speculative.evaluate_speculative` report, keyed by
    K as a string (JSON keys)."""
    base = float(eval_report["target_only"]["tokens_per_s"])
    out = {}
    for s in eval_report["speculative"]:
        out[str(s["num_draft_tokens"])] = {
            "tau": float(s["tau"]),
            "per_position_acceptance": [float(x) for x in s["acceptance_rate"]],
            "target_tokens_per_s": base,
            "speculative_tokens_per_s": float(s["tokens_per_s"]),
            "speedup": float(s["speedup"]),
            "lossless": s["lossless"],
            "matching_prompts": s.get("matching_prompts"),
            "rounds": int(s["rounds"]),
            "new_tokens": int(s["new_tokens"]),
            "target_forwards": int(s["target_forwards"]),
        }
    return out


def build_report(*, target: dict[str, Any], device: str, dtype: str, threads: int, settings: dict[str, Any],
                 phases: dict[str, float], files: dict[str, str], drafts: dict[str, dict[str, Any]],
                 evaluations: Mapping[str, Mapping[str, Any]],
                 vllm_evaluations: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Assemble ``report.json`` (see the module docstring) and check it.

    Args:
        drafts: per name in :data:`DRAFT_NAMES`: ``algorithm``, ``path``, ``format``, ``metrics`` (the training
            log) and ``training`` (a summary); ``by_k`` is added from ``evaluations``.
        evaluations: per draft name, its evaluator report.
        vllm_evaluations: per draft name, its :func:`eagle_ext.serve.vllm_eval.evaluate_vllm` report (or None).

    Raises:
        ValueError: the assembled report breaks the schema (:func:`check_report`).
    """
    report = {
        "target": target, "device": device, "dtype": dtype, "threads": threads, "settings": settings,
        "phases": {k: round(float(v), 1) for k, v in phases.items()},
        "total_seconds": round(float(sum(phases.values())), 1),
        "files": files,
        "drafts": {name: {**drafts[name], "by_k": by_k(evaluations[name])} for name in drafts},
        "vllm": None,
    }
    if vllm_evaluations:
        for name in drafts:
            report["drafts"][name]["vllm_by_k"] = by_k(vllm_evaluations[name])
        first = next(iter(vllm_evaluations.values()))["settings"]
        report["vllm"] = {"version": first.get("vllm_version"), "device": first.get("device")}
    check_report(report)
    return report


def _fail(where: str, value: Any, expected: str) -> None:
    raise ValueError(f"report {where} must be {expected}, got {value!r}")


def check_report(report: Mapping[str, Any]) -> None:
    """Check ``report`` against the schema of the module docstring.

    Raises:
        ValueError: naming the first field that is missing or has the wrong type or length.
    """
    if not isinstance(report, Mapping):
        _fail("", type(report).__name__, "a mapping")
    for key, tp in (("target", dict), ("device", str), ("dtype", str), ("phases", dict), ("files", dict),
                    ("drafts", dict)):
        if not isinstance(report.get(key), tp):
            _fail(f"[{key!r}]", report.get(key), f"a {tp.__name__}")
    for phase, seconds in report["phases"].items():
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
            _fail(f"['phases'][{phase!r}]", seconds, "a number of seconds >= 0")
    for what, path in report["files"].items():
        if not isinstance(path, str):
            _fail(f"['files'][{what!r}]", path, "a path string")
    drafts = report["drafts"]
    if set(drafts) != set(DRAFT_NAMES):
        _fail("['drafts'] keys", sorted(drafts), f"exactly {list(DRAFT_NAMES)}")
    for name in DRAFT_NAMES:
        entry, where = drafts[name], f"['drafts'][{name!r}]"
        if not isinstance(entry, Mapping):
            _fail(where, entry, "a mapping")
        expected_algorithms = ("eagle3",) if name == "reference" else tuple(ALGORITHM_TITLES)
        if entry.get("algorithm") not in expected_algorithms:
            _fail(f"{where}['algorithm']", entry.get("algorithm"), f"one of {expected_algorithms}")
        if not isinstance(entry.get("path"), str):
            _fail(f"{where}['path']", entry.get("path"), "a path string")
        ks = entry.get("by_k")
        if not isinstance(ks, Mapping) or not ks:
            _fail(f"{where}['by_k']", ks, "a non-empty mapping K -> metrics")
        _check_by_k(ks, f"{where}['by_k']")
        if "vllm_by_k" in entry:
            if not isinstance(entry["vllm_by_k"], Mapping) or not entry["vllm_by_k"]:
                _fail(f"{where}['vllm_by_k']", entry["vllm_by_k"], "a non-empty mapping K -> metrics")
            _check_by_k(entry["vllm_by_k"], f"{where}['vllm_by_k']")


def _check_by_k(ks: Mapping[str, Any], where: str) -> None:
    for k, metrics in ks.items():
        at = f"{where}[{k!r}]"
        if not (isinstance(k, str) and k.isdigit() and int(k) >= 1):
            _fail(f"{where} key", k, "K >= 1 as a string")
        if not isinstance(metrics, Mapping):
            _fail(at, metrics, "a mapping")
        for field, types in PER_K_FIELDS.items():
            value = metrics.get(field)
            if isinstance(value, bool) and bool not in types or not isinstance(value, types):
                _fail(f"{at}[{field!r}]", value, " or ".join(t.__name__ for t in types))
        rates = metrics["per_position_acceptance"]
        if len(rates) != int(k) or not all(isinstance(r, float) and (math.isnan(r) or 0 <= r <= 1) for r in rates):
            _fail(f"{at}['per_position_acceptance']", rates, f"{k} rates in [0, 1] (one per draft position)")
        tau = metrics["tau"]
        if not (math.isnan(tau) or 1 <= tau <= int(k) + 1):
            _fail(f"{at}['tau']", tau, f"in [1, {int(k) + 1}]")


def _fmt_rate(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2f}"


def format_report_table(report: Mapping[str, Any]) -> str:
    """The demo's closing table: one row per draft, engine and K (tau, acceptance per position, target-only and
    speculative tokens/s of that engine, speed-up, lossless), a settings line above it and the phase times
    below."""
    s = report["settings"]
    vllm = report.get("vllm") or {}
    head = (f"{report['target']['name']} ({report['dtype']}, {report['device']}, {report['threads']} threads): "
            f"{s['num_prompts']} held-out prompts, up to {s['max_new_tokens']} new tokens, greedy"
            + (f"; engines: eagle_ext's decoder and vLLM {vllm.get('version')} (batch 1)" if vllm else ""))
    rows = []
    for name in DRAFT_NAMES:
        entry = report["drafts"][name]
        steps = entry.get("training", {}).get("steps", "-")
        for engine, key in (("eagle_ext", "by_k"), ("vLLM", "vllm_by_k")):
            for k, m in sorted(entry.get(key, {}).items(), key=lambda kv: int(kv[0])):
                rows.append([name, ALGORITHM_TITLES[entry["algorithm"]], steps, engine, k, _fmt_rate(m["tau"]),
                             " ".join(_fmt_rate(r) for r in m["per_position_acceptance"]),
                             f"{m['target_tokens_per_s']:.1f}", f"{m['speculative_tokens_per_s']:.1f}",
                             f"{m['speedup']:.2f}x", lossless_label(m, s["num_prompts"])])
    table = format_table(["draft", "algorithm", "steps", "engine", "K", "tau", "acceptance per position",
                          "target tok/s", "spec tok/s", "speed-up", "lossless"], rows)
    phases = " | ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in report["phases"].items())
    return f"{head}\n{table}\nphases: {phases} | total {report['total_seconds']:.1f} s"


def _train_curve(path: str) -> tuple[list[int], list[float], list[float]]:
    """(cumulative training tokens, loss, accuracy) of the train records of a metrics log."""
    tokens, loss, accuracy, seen = [], [], [], 0
    for r in read_metrics(path):
        if r.get("split") == "train":
            seen += int(r.get("tokens", 0))
            tokens.append(seen)
            loss.append(r["loss"])
            accuracy.append(r["accuracy"])
    return tokens, loss, accuracy


def plot_report(report: Mapping[str, Any], path: str | os.PathLike) -> bool:
    """``report.png``: training loss and accuracy against training tokens (each draft's ``metrics`` log), tau per
    draft and K, acceptance per draft position, and target-only vs speculative tokens/s. Returns False (and
    writes nothing) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    drafts = report["drafts"]
    labels = {n: f"{n} ({ALGORITHM_TITLES[drafts[n]['algorithm']]})" for n in DRAFT_NAMES}
    colors = {"reference": "tab:blue", "live": "tab:orange"}
    fig = plt.figure(figsize=(16, 8.5))
    grid = fig.add_gridspec(2, 6)
    ax_loss, ax_acc = fig.add_subplot(grid[0, :3]), fig.add_subplot(grid[0, 3:])
    ax_tau, ax_pos, ax_tps = (fig.add_subplot(grid[1, 2 * i: 2 * i + 2]) for i in range(3))
    for name in DRAFT_NAMES:
        tokens, loss, accuracy = _train_curve(drafts[name]["metrics"])
        if tokens:
            ax_loss.plot(tokens, loss, "-o", ms=2, color=colors[name], label=labels[name])
            ax_acc.plot(tokens, accuracy, "-o", ms=2, color=colors[name], label=labels[name])
    for ax, what in ((ax_loss, "training loss (EAGLE-3: soft CE, P-EAGLE: KL)"),
                     (ax_acc, "training accuracy (first draft token)")):
        ax.set_xscale("log")
        ax.set_xlabel("training tokens")
        ax.set_title(what)

    ks = sorted({int(k) for n in DRAFT_NAMES for k in drafts[n]["by_k"]})
    pairs = [(n, k, drafts[n]["by_k"][str(k)]) for n in DRAFT_NAMES for k in ks if str(k) in drafts[n]["by_k"]]
    bars = ax_tau.bar(range(len(pairs)), [m["tau"] for _, _, m in pairs], color=[colors[n] for n, _, _ in pairs])
    ax_tau.bar_label(bars, fmt="%.2f")
    ax_tau.set_xticks(range(len(pairs)), [f"{n}\nK = {k}" for n, k, _ in pairs], fontsize=8)
    ax_tau.axhline(1.0, color="grey", lw=0.8)
    ax_tau.set_title("tau (tokens per target forward)")

    for name in DRAFT_NAMES:
        for k, style in zip(ks, ("-o", "--s", ":^", "-.v")):
            m = drafts[name]["by_k"].get(str(k))
            if m:
                rates = m["per_position_acceptance"]
                ax_pos.plot(range(1, len(rates) + 1), rates, style, color=colors[name], label=f"{name}, K = {k}")
    ax_pos.set_xticks(range(1, max(ks) + 1))
    ax_pos.set_xlabel("draft position")
    ax_pos.set_ylim(0, 1)
    ax_pos.set_title("acceptance rate per draft position")

    names = ["target-only", *(f"{n}\nK = {k}" for n, k, _ in pairs)]
    values = [pairs[0][2]["target_tokens_per_s"], *(m["speculative_tokens_per_s"] for _, _, m in pairs)]
    bars = ax_tps.bar(range(len(values)), values, color=["grey", *(colors[n] for n, _, _ in pairs)])
    ax_tps.bar_label(bars, labels=[f"{s:.2f}x" for s in (1.0, *(m["speedup"] for _, _, m in pairs))])
    ax_tps.set_xticks(range(len(values)), names, fontsize=8)
    ax_tps.set_title("decoding tokens/s (greedy, same run)")
    for ax in (ax_loss, ax_acc, ax_tau, ax_pos):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    ax_tps.grid(alpha=0.3, axis="y")
    fig.suptitle(f"eagle_ext demo: {report['target']['name']} ({report['dtype']}, {report['device']})")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    return True
