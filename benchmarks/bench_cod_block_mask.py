"""COD BlockMask: direct builder vs ``create_block_mask`` (eager and ``torch.compile``), time and peak memory.

Each case is one packed row (4 fully supervised documents, 1/16 padding) whose COD layout (K = 8,
r = 0.7, r_min = 0.2) has about ``n`` elements (``L ~ n / 3.37``); FlexAttention's block size 128. Methods:

- ``direct``: ``build_cod_block_mask`` (vectorised torch on CPU; on CUDA the Triton kernels, plus the torch
  builder on CUDA as ``direct-torch``, and ``direct-host``: host indices built into a CUDA BlockMask, the
  P-EAGLE trainer's sync-free route: per-element work on the CPU, block grid on the GPU);
- ``eager``: ``create_block_mask(mask_mod)``, which materialises the ``n x n`` mask (about 12 bytes per
  pair); skipped with a note where that exceeds ``--eager-limit-gb``;
- ``compiled``: ``torch.compile(create_block_mask)`` (compile time excluded from the timings and printed
  by the worker; its peak excludes whatever the compiling first call left allocated; ``--no-compile``
  skips it).

Target (DESIGN.md §6): direct >= 20x faster than eager on CPU, O(blocks) memory. The smallest size also
checks (after the timings) that the direct BlockMask equals the eager one tensor for tensor.

Usage: ``python -m benchmarks.bench_cod_block_mask [--quick] [--no-compile] [--device cpu|cuda]``.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks._common import fmt_bytes, measure, print_table, write_results
from eagle_ext.ops.cod import generate_cod_sample_indices
from eagle_ext.ops.cod_block_mask import BLOCK_MASK_TENSORS, build_cod_block_mask, cod_block_mask_reference
from eagle_ext.peagle.mask import cod_mask_mod, document_ids_from_lengths

NUM_DEPTHS = 8
ELEMENTS_PER_POSITION = 3.37  # COD total / L for a fully supervised row at K=8, r=0.7, r_min=0.2
EAGER_BYTES_PER_PAIR = 12  # measured: bool mask + int64 intermediates of the vmapped mask_mod


def cod_row(n_target: int, device: str):
    """``(anchor_pos, depth, document_ids)`` of a packed row (4 documents + 1/16 padding) with ~n elements."""
    width = max(16, round(n_target / ELEMENTS_PER_POSITION))
    for _ in range(3):  # rescale the row width until the COD total lands within 1% of the target
        used = width - width // 16
        lengths = [used // 4] * 3 + [used - 3 * (used // 4)]
        doc = document_ids_from_lengths(lengths, width)
        anchor, depth = generate_cod_sample_indices(
            width, (doc >= 0).long(), NUM_DEPTHS, document_ids=doc, seed=0
        )
        if abs(anchor.numel() - n_target) <= 0.01 * n_target:
            break
        width = max(16, round(width * n_target / anchor.numel()))
    return anchor.to(device), depth.to(device), doc.to(device)


def case_direct(n: int, dev: str, block_size: int, backend: str, host: bool = False):
    # A tiny call first pages in the code the timed calls run, so that it is not counted as their memory.
    where = "cpu" if host else dev
    build_cod_block_mask(*cod_row(256, where), block_size=block_size, backend=backend, device=dev)
    anchor, depth, doc = cod_row(n, where)
    return lambda: build_cod_block_mask(anchor, depth, doc, block_size=block_size, backend=backend, device=dev)


def case_eager(n: int, dev: str, block_size: int):
    cod_block_mask_reference(*cod_row(256, dev), block_size=block_size)
    anchor, depth, doc = cod_row(n, dev)
    return lambda: cod_block_mask_reference(anchor, depth, doc, block_size=block_size)


def case_compiled(n: int, dev: str, block_size: int):
    from torch.nn.attention.flex_attention import create_block_mask

    anchor, depth, doc = cod_row(n, dev)
    mask_mod = cod_mask_mod(anchor, depth, doc)
    size = anchor.numel()
    compiled = torch.compile(create_block_mask)

    def run():
        return compiled(mask_mod, None, None, size, size, device=dev, BLOCK_SIZE=block_size)

    start = time.perf_counter()
    run()
    if dev == "cuda":
        torch.cuda.synchronize()
    print(f"  [compiled] n={size}: compile + first call {time.perf_counter() - start:.1f} s", flush=True)
    return run


def check_equal(n: int, dev: str, block_size: int) -> None:
    anchor, depth, doc = cod_row(n, dev)
    ours = build_cod_block_mask(anchor, depth, doc, block_size=block_size)
    ref = cod_block_mask_reference(anchor, depth, doc, block_size=block_size)
    for name in BLOCK_MASK_TENSORS:
        if not torch.equal(getattr(ours, name), getattr(ref, name)):
            raise AssertionError(f"direct and create_block_mask differ in {name} at n={anchor.numel()}")
    print(f"check: direct == create_block_mask (all 8 tensors) at n={anchor.numel()}", flush=True)


def eager_fits(n: int, dev: str, limit_gb: float) -> tuple[bool, str]:
    need = EAGER_BYTES_PER_PAIR * n * n
    limit = limit_gb * 2**30
    if dev == "cuda":
        limit = max(limit, 0.5 * torch.cuda.get_device_properties(0).total_memory)
    if need <= limit:
        return True, ""
    return False, f"eager create_block_mask skipped at n={n}: needs ~{fmt_bytes(need)} (> {fmt_bytes(limit)})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat (smoke run)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile(create_block_mask)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--sizes", type=int, nargs="*", help="COD element counts (default 8k 16k 32k 64k)")
    parser.add_argument(
        "--compile-limit-s",
        type=float,
        default=60.0,
        help="skip compiled create_block_mask where one call is predicted (n^2 from the "
        "previous size) to take longer",
    )
    parser.add_argument("--threads", type=int, help="CPU: intra-op threads of every case (default: torch's)")
    parser.add_argument(
        "--eager-limit-gb",
        type=float,
        default=8.0,
        help="skip eager create_block_mask above this estimated memory (CUDA: or half the GPU)",
    )
    args = parser.parse_args()
    dev, bs = args.device, args.block_size
    sizes = args.sizes or ([2048, 4096] if args.quick else [8192, 16384, 32768, 65536])
    repeat = 1 if args.quick else 5
    threads = {} if args.threads is None or dev != "cpu" else {"_threads": args.threads}
    slow_repeat = 1 if args.quick else 2

    direct = (
        {"direct": ("triton", False), "direct-host": ("triton", True), "direct-torch": ("torch", False)}
        if dev == "cuda"
        else {"direct": ("torch", False)}
    )
    rows, notes = [], []
    compiled_seconds_per_pair = None
    for n in sizes:
        anchor, _, doc = cod_row(n, "cpu")
        count = anchor.numel()
        row = {"n": count, "L": doc.numel(), "block pairs": (-(-count // bs)) ** 2}
        for label, (backend, host) in direct.items():
            r = measure(
                case_direct,
                device=dev,
                repeat=repeat,
                n=n,
                dev=dev,
                block_size=bs,
                backend=backend,
                host=host,
                **threads,
            )
            row[f"{label} ms"], row[f"{label} peak"] = 1e3 * r["seconds"], r["peak_bytes"]
        fits, why = eager_fits(count, dev, args.eager_limit_gb)
        if fits:
            r = measure(
                case_eager, device=dev, warmup=0, repeat=slow_repeat, n=n, dev=dev, block_size=bs, **threads
            )
            row["eager ms"], row["eager peak"] = 1e3 * r["seconds"], r["peak_bytes"]
            row["speedup vs eager"] = row["eager ms"] / row["direct ms"]
        else:
            notes.append(why)
            print(why, flush=True)
        predicted = None if compiled_seconds_per_pair is None else compiled_seconds_per_pair * count**2
        if not args.no_compile and predicted is not None and predicted > args.compile_limit_s:
            notes.append(
                f"compiled create_block_mask skipped at n={count}: one call predicted to take "
                f"~{predicted:.0f} s (> --compile-limit-s {args.compile_limit_s:.0f})"
            )
            print(notes[-1], flush=True)
        elif not args.no_compile:
            try:
                r = measure(
                    case_compiled,
                    device=dev,
                    warmup=0,
                    repeat=slow_repeat,
                    n=n,
                    dev=dev,
                    block_size=bs,
                    **threads,
                )
            except RuntimeError as exc:  # a compile failure is a result to report, not a crash
                notes.append(f"compiled create_block_mask failed at n={count}: {exc}")
                print(notes[-1], flush=True)
            else:
                row["compiled ms"], row["compiled peak"] = 1e3 * r["seconds"], r["peak_bytes"]
                compiled_seconds_per_pair = r["seconds"] / count**2
                row["speedup vs compiled"] = row["compiled ms"] / row["direct ms"]
        rows.append(row)

    # Last, so that the parent stays small while the spawned CPU cases run: they inherit its resident
    # high-water mark, which would otherwise inflate their measured peaks.
    check_equal(sizes[0], dev, bs)
    columns = ["n", "L", "block pairs"]
    for label in list(direct) + ["eager", "compiled"]:
        columns += [f"{label} ms", f"{label} peak"]
    columns += ["speedup vs eager", "speedup vs compiled"]
    shown = [{k: fmt_bytes(v) if k.endswith("peak") else v for k, v in row.items()} for row in rows]
    threads_note = f", {args.threads} thread(s)" if threads else ""
    title = f"COD BlockMask build on {dev}{threads_note}, block {bs}, K={NUM_DEPTHS} (peak = extra memory of one call)"
    table = print_table(shown, columns, title=title)
    for note in notes:
        print(f"- {note}")
    write_results(
        "cod_block_mask",
        {
            "block_size": bs,
            "num_depths": NUM_DEPTHS,
            "rows": rows,
            "notes": notes,
            "table": table,
            "quick": args.quick,
            "threads": args.threads,
        },
        device=dev,
    )


if __name__ == "__main__":
    main()
