"""COD sample indices at L=8192, K=8: C++ vs the torch references (target: >= 5x, identical output)."""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import print_table, time_fn, write_results
from eagle_ext.ops.cod import generate_cod_sample_indices
from tests.reference.cod import cod_reference, cod_seed_algorithm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seq-length", type=int, default=8192)
    args = parser.parse_args()
    L, K = args.seq_length, 8
    repeat = 3 if args.quick else 10
    g = torch.Generator().manual_seed(0)
    cases = {
        "fully supervised": torch.ones(L, dtype=torch.int64),
        "50% supervised": (torch.rand(L, generator=g) < 0.5).long(),
        "fully supervised, max_anchors=512": torch.ones(L, dtype=torch.int64),
    }
    rows = []
    for name, mask in cases.items():
        cap = 512 if "max_anchors" in name else None
        ours = generate_cod_sample_indices(L, mask, K, seed=1, max_anchors=cap)
        ref = cod_reference(L, mask, K, max_anchors=cap, seed=1)
        assert all(torch.equal(a, b) for a, b in zip(ours, ref)), "C++ and reference disagree"
        t_ours = time_fn(lambda m=mask, c=cap: generate_cod_sample_indices(L, m, K, seed=1, max_anchors=c),
                         repeat=repeat)
        t_ref = time_fn(lambda m=mask, c=cap: cod_reference(L, m, K, max_anchors=c, seed=1), repeat=repeat)
        row = {"case": name, "elements": ours[0].numel(), "C++ ms": 1e3 * t_ours,
               "reference ms": 1e3 * t_ref, "speedup vs reference": t_ref / t_ours}
        if cap is None:
            t_seed = time_fn(lambda m=mask: cod_seed_algorithm(L, m, K), repeat=repeat)
            row["seed algorithm ms"] = 1e3 * t_seed
            row["speedup vs seed"] = t_seed / t_ours
        rows.append(row)
    cols = ["case", "elements", "C++ ms", "reference ms", "speedup vs reference", "seed algorithm ms",
            "speedup vs seed"]
    table = print_table(rows, cols, title=f"COD sample indices, L={L}, K={K} (identical output to the reference)")
    write_results("cod", {"seq_length": L, "num_depths": K, "rows": rows, "table": table})


if __name__ == "__main__":
    main()
