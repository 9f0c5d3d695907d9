"""Document packing: C++ vs pure-Python greedy (time), greedy vs best-fit decreasing (padding), and
``build_packed_eagle3_dataset`` end to end against the seed system's packer on list and Arrow input.

Targets (DESIGN.md §6, issue 12): C++ greedy >= 50x faster than pure Python on 1M documents; best-fit >= 30%
less padding than greedy on a realistic length mix (log-normal, median ~600 tokens, W=4096); the whole
dataset build >= 5x the seed on Python lists and >= 50x on Arrow input (20k documents, ~16M tokens), both
timed with the garbage collector paused (as ``timeit`` does) and on torch's default thread count.
"""

from __future__ import annotations

import argparse
import contextlib
import gc

import torch

from benchmarks._common import print_table, time_fn, write_results
from eagle_ext.data.packing import build_packed_eagle3_dataset
from eagle_ext.ops.packing import fill_packed_rows, pack_documents
from eagle_ext.testing.corpus import lognormal_lengths
from tests.reference.packing import best_fit_rows, fill_rows, greedy_rows, seed_packed_dataset

PACKED_KEYS = ("input_ids", "loss_mask", "attention_mask", "position_ids", "doc_remaining")


def _same_rows(ours: list[dict], seed: list[dict]) -> bool:
    return len(ours) == len(seed) and all(
        a["seq_lens"] == b["seq_lens"]
        and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in PACKED_KEYS)
        for a, b in zip(ours, seed)
    )


def _corpus(num_docs: int, realistic: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat ``(ids, loss_mask, lengths)``: log-normal lengths (median 600); ids uniform in [0, 128k) with the
    second half of every document supervised, or every id and mask 1 (interned Python ints, the cheapest
    list input)."""
    lengths = lognormal_lengths(num_docs, median=600, sigma=0.8)
    total = int(lengths.sum())
    if not realistic:
        return torch.ones(total, dtype=torch.int64), torch.ones(total, dtype=torch.int64), lengths
    ids = torch.randint(0, 128_000, (total,), generator=torch.Generator().manual_seed(0))
    starts = torch.repeat_interleave(lengths.cumsum(0) - lengths, lengths)
    position = torch.arange(total) - starts
    loss = (position >= torch.repeat_interleave(lengths // 2, lengths)).to(torch.int64)
    return ids, loss, lengths


def _list_samples(ids: torch.Tensor, loss: torch.Tensor, lengths: torch.Tensor) -> list[dict]:
    ids_l, loss_l = ids.tolist(), loss.tolist()
    ends = lengths.cumsum(0).tolist()
    return [
        {"input_ids": ids_l[e - n : e], "loss_mask": loss_l[e - n : e]} for e, n in zip(ends, lengths.tolist())
    ]


def _arrow_dataset(ids: torch.Tensor, loss: torch.Tensor, lengths: torch.Tensor):
    """A ``datasets.Dataset`` in the schema of eagle_ext.data.tokenization (int32 ids, int8 masks), in record
    batches of 1000 rows as ``datasets`` writes them."""
    import datasets
    import numpy as np
    import pyarrow as pa

    offsets = np.concatenate([[0], lengths.cumsum(0).numpy()]).astype(np.int32)
    table = pa.table({
        "input_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids.numpy().astype(np.int32))),
        "loss_mask": pa.ListArray.from_arrays(pa.array(offsets), pa.array(loss.numpy().astype(np.int8))),
    })
    return datasets.Dataset(pa.Table.from_batches(table.to_batches(max_chunksize=1000)))


def end_to_end(num_docs: int, width: int) -> list[dict]:
    """``build_packed_eagle3_dataset`` vs the seed packer (tests/reference/packing.py) on the same input."""
    out = []
    cases = [
        ("lists, ids in [0, 128k), half supervised", True, "list"),
        ("lists, every id and mask 1", False, "list"),
        ("datasets.Dataset (Arrow int32 / int8)", True, "arrow"),
    ]
    for name, realistic, kind in cases:
        ids, loss, lengths = _corpus(num_docs, realistic)
        make = _list_samples if kind == "list" else _arrow_dataset
        samples = make(ids, loss, lengths)
        t_seed, t_ours = _time_build(samples, width, gc_running=False)
        t_seed_gc, t_ours_gc = _time_build(samples, width, gc_running=True)
        same = _same_rows(build_packed_eagle3_dataset(samples, width), seed_packed_dataset(samples, width))
        out.append({"case": f"{name}: {num_docs} docs, {int(lengths.sum()) / 1e6:.1f}M tokens",
                    "seed s": t_seed, "ours s": t_ours, "speedup": t_seed / t_ours,
                    "target": ">= 5x" if kind == "list" else ">= 50x", "same rows": same,
                    "seed s, GC on": t_seed_gc, "ours s, GC on": t_ours_gc,
                    "speedup, GC on": t_seed_gc / t_ours_gc})
        del samples
        gc.collect()
    return out


@contextlib.contextmanager
def _gc_paused():
    """Pause the cyclic garbage collector, as ``timeit`` does: a full collection walks every object of the
    process (0.1-0.2 s here, with torch, pyarrow and datasets loaded) whenever enough objects have been
    allocated, so it lands on whichever side happens to cross the threshold."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _time_build(samples, width: int, gc_running: bool) -> tuple[float, float]:
    """(seed seconds (one run), ours seconds (median of 3 after a warm-up)), with the garbage collector
    paused or running."""
    with contextlib.nullcontext() if gc_running else _gc_paused():
        t_seed = time_fn(lambda: seed_packed_dataset(samples, width), warmup=0, repeat=1)
        t_ours = time_fn(lambda: build_packed_eagle3_dataset(samples, width), warmup=1, repeat=3)
    return t_seed, t_ours


def padding_fraction(lengths: torch.Tensor, num_rows: int, width: int) -> float:
    return 1.0 - float(lengths.clamp(max=width).sum()) / (num_rows * width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100k documents instead of 1M")
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--dataset-docs", type=int, default=20_000,
                        help="documents in the end-to-end dataset build (20k: ~16M tokens)")
    args = parser.parse_args()
    num_docs = 100_000 if args.quick else 1_000_000
    fill_docs = 2_000 if args.quick else 20_000
    width = args.width
    threads = torch.get_num_threads()  # the default: rows are written on torch's intra-op threads
    lengths = lognormal_lengths(num_docs, median=600, max_len=8192)
    as_list = lengths.tolist()

    rows = []
    t_py = time_fn(lambda: greedy_rows(as_list, width), warmup=0, repeat=3)
    t_cpp = time_fn(lambda: pack_documents(lengths, width, "greedy"), repeat=20)
    t_bf = time_fn(lambda: pack_documents(lengths, width, "best_fit"), repeat=3)
    assert pack_documents(lengths, width, "greedy")[0].tolist() == greedy_rows(as_list, width)[0]
    rows.append({"case": f"assign greedy, {num_docs} docs", "reference s": t_py, "ours s": t_cpp,
                 "speedup": t_py / t_cpp})
    # The linear-scan best-fit reference is quadratic: time it on a slice only.
    n_bf = 20_000
    t_bf_py = time_fn(lambda: best_fit_rows(as_list[:n_bf], width), warmup=0, repeat=1)
    t_bf_small = time_fn(lambda: pack_documents(lengths[:n_bf], width, "best_fit"), repeat=3)
    rows.append({"case": f"assign best-fit, {n_bf} docs", "reference s": t_bf_py, "ours s": t_bf_small,
                 "speedup": t_bf_py / t_bf_small})
    rows.append({"case": f"assign best-fit, {num_docs} docs (reference too slow)", "ours s": t_bf})

    # Row filling: per-token Python loop vs C++ on a subset (the full corpus would not fit in RAM as rows).
    sub = lengths[:fill_docs]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 32000, (int(sub.sum()),), generator=g)
    loss = torch.randint(0, 2, (int(sub.sum()),), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), sub.cumsum(0)])
    row_of_doc, num_rows = pack_documents(sub, width, "greedy")
    docs = [(ids[a:b].tolist(), loss[a:b].tolist()) for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
    rod = row_of_doc.tolist()
    t_fill_py = time_fn(lambda: fill_rows(docs, rod, num_rows, width, 0), warmup=0, repeat=1)
    t_fill = time_fn(lambda: fill_packed_rows(ids, loss, offsets, row_of_doc, num_rows, width), repeat=3)
    rows.append({"case": f"fill rows, {fill_docs} docs", "reference s": t_fill_py, "ours s": t_fill,
                 "speedup": t_fill_py / t_fill})
    table = print_table(rows, ["case", "reference s", "ours s", "speedup"],
                        title=f"packing time (W={width}, {threads} threads; reference = pure Python)")

    n_greedy = pack_documents(lengths, width, "greedy")[1]
    n_best = pack_documents(lengths, width, "best_fit")[1]
    pad_g, pad_b = padding_fraction(lengths, n_greedy, width), padding_fraction(lengths, n_best, width)
    pad_rows = [
        {"strategy": "greedy (next-fit)", "rows": n_greedy, "padding %": 100 * pad_g},
        {"strategy": "best-fit decreasing", "rows": n_best, "padding %": 100 * pad_b},
    ]
    table2 = print_table(pad_rows, ["strategy", "rows", "padding %"],
                         title=f"padding, {num_docs} log-normal docs (median 600, clipped at 8192), W={width}")
    reduction = 1 - pad_b / pad_g
    print(f"best-fit removes {100 * reduction:.1f}% of greedy's padding (target >= 30%); "
          f"C++ greedy is {t_py / t_cpp:.0f}x faster than Python (target >= 50x)")
    build_rows = end_to_end(args.dataset_docs, width)
    columns = ["case", "seed s", "ours s", "speedup", "target", "same rows", "seed s, GC on", "ours s, GC on",
               "speedup, GC on"]
    table3 = print_table(build_rows, columns,
                         title=f"build_packed_eagle3_dataset vs the seed packer (W={width}, greedy, "
                               f"{threads} threads; first columns with the garbage collector paused for "
                               "both, as timeit does; GC on: running)")
    write_results("packing", {
        "num_docs": num_docs, "width": width, "threads": threads, "timings": rows, "padding": pad_rows,
        "padding_reduction": reduction, "dataset_build": build_rows, "tables": [table, table2, table3],
    })


if __name__ == "__main__":
    main()
