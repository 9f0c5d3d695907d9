"""``python -m eagle_ext demo``: the quickest real end-to-end job the project can run today.

Today that is the data side of training on a synthetic chat-length corpus, through the compiled ops: pack the
documents into fixed-width rows (greedy and best-fit), then sample the P-EAGLE COD elements of every packed
row with document boundaries respected, and split them into sequence partitions. Draft training joins this
demo as the trainer modules land.
"""

from __future__ import annotations

import json
import os
import tempfile

import torch
from tqdm import tqdm

from eagle_ext.demo.corpus import assistant_mask, lognormal_lengths
from eagle_ext.ops.cod import assign_cod_segments, generate_cod_sample_indices
from eagle_ext.ops.packing import fill_packed_rows, pack_documents


def _write_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)


def run_demo(quick: bool = False, output_dir: str = "runs/demo") -> int:
    num_docs, width = (2_000, 2048) if quick else (20_000, 4096)
    print("eagle_ext demo: packing + COD sampling on a synthetic chat corpus (CPU, nothing downloaded).")
    print("Draft training is added to this demo as the EAGLE-3 / P-EAGLE trainers land.\n")
    lengths = lognormal_lengths(num_docs, median=600, max_len=width)
    masks = assistant_mask(lengths)
    token_ids = torch.randint(3, 32000, (int(lengths.sum()),), generator=torch.Generator().manual_seed(0))
    loss = torch.cat(masks)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])

    summary = {"num_docs": num_docs, "row_width": width, "tokens": int(lengths.sum())}
    rows = None
    for strategy in ("greedy", "best_fit"):
        row_of_doc, num_rows = pack_documents(lengths, width, strategy)
        packed = fill_packed_rows(token_ids, loss, offsets, row_of_doc, num_rows, width, pad_token_id=0)
        pad = 1.0 - packed["attention_mask"].float().mean().item()
        summary[strategy] = {"rows": num_rows, "padding_fraction": round(pad, 4)}
        print(f"  {strategy:9s}: {num_rows:6d} rows of {width}, padding {100 * pad:5.2f}%")
        rows = packed
    saved = 1 - summary["best_fit"]["padding_fraction"] / max(summary["greedy"]["padding_fraction"], 1e-9)
    print(f"  best-fit removes {100 * saved:.1f}% of greedy's padding\n")

    # COD on the shifted loss mask of each best-fit row, chains confined to documents.
    num_rows = rows["input_ids"].shape[0]
    totals = torch.zeros(8, dtype=torch.int64)
    elements = 0
    for r in tqdm(range(num_rows), desc="COD sampling", unit="row"):
        seq = rows["seq_lens"][r, : rows["num_docs"][r]]
        doc = torch.repeat_interleave(torch.arange(seq.numel()), seq)
        doc = torch.where(rows["attention_mask"][r].bool(), doc, torch.full_like(doc, -1))
        shifted = torch.cat([rows["loss_mask"][r, 1:], torch.zeros(1, dtype=torch.int64)])
        anchor, depth = generate_cod_sample_indices(width, shifted, 8, document_ids=doc, seed=r)
        segments = assign_cod_segments(anchor, depth, width, 4)
        assert int(segments.max()) < 4
        totals += torch.bincount(depth, minlength=8)
        elements += anchor.numel()
    per_depth = (totals / num_rows).tolist()
    summary["cod_elements_per_row"] = round(elements / num_rows, 1)
    summary["cod_per_depth_mean"] = [round(x, 1) for x in per_depth]
    print(f"  COD: {elements / num_rows:.0f} elements per row of {width} "
          f"({elements / num_rows / width:.2f}x the row), per depth {[round(x) for x in per_depth]}")
    path = os.path.join(output_dir, "demo_summary.json")
    _write_json(path, summary)
    print(f"\nwrote {path}")
    return 0
