"""Benchmark fused_linear_kl: full forward + backward time and peak extra memory, side by side.

Implementations: ``reference`` (fp32 linear -> log_softmax -> soft-CE; the baseline of the ratios on CPU),
``chunked`` (torch autograd.Function over row chunks), ``compile`` (``torch.compile`` of the reference;
skipped with a note if it fails or exceeds ``--compile-timeout``), and on CUDA ``eager_bf16`` (the usual
torch recipe: linear in bf16, then ``.float()``; the baseline of the ratios on CUDA), ``gemm`` (the
gradient-in-forward path: cuBLAS logits per row chunk, the Triton row kernel, cuBLAS dH / dW; the CUDA
default; on CPU it runs with the row kernel's torch twin), ``triton`` (the recompute kernel) and
``triton_offset`` (TTT loop only: one shared target read with ``row_offset=k``, as the EAGLE-3 trainer
calls it). Issue #20's goal for ``gemm`` at the CUDA shape: >= 1.3x faster than ``eager_bf16`` and <= 1/5
of its peak memory (``time_vs_ref`` <= 0.77, ``peak_vs_ref`` <= 0.2 in the table).

Cases:
- CPU: N=4096, H=1024, Vd=32000, fp32 (targets: chunked peak <= 1/4 of the reference, time <= 1.25x).
- CUDA: N=8192, H=4096, Vd=32000, bf16, one call and a 7-step TTT-like loop (7 calls, one weight, step
  weights 0.8^k, one backward). Every TTT call gets its own target tensor, as a trainer that shifts its
  target per step would (one shared tensor would hide per-call copies kept for backward), except
  ``triton_offset``. TFLOP/s use the 3-GEMM lower bound 6·N·H·Vd per call (forward logits, dH, dW); the
  recompute paths (triton, chunked) execute 8·N·H·Vd (they recompute the logits in backward), also
  reported; gemm executes the bound. Rows are measured most valuable first (eager_bf16, gemm, triton, then
  the slow references) and written as they land. Before timing, the gemm and Triton losses and gradients
  are checked against the fp32 reference at the full shape (the bf16 eager recipe's errors printed beside
  them), and the autotuner's chosen configs are printed.

Usage: ``python -m benchmarks.bench_fused_linear_kl [--quick] [--no-compile] [--device cpu|cuda]``.
"""

from __future__ import annotations

import argparse
import contextlib
import signal

import torch

from benchmarks._common import PartialResults, fmt_bytes, measure, print_table
from eagle_ext.ops.linear_kl import fused_linear_kl, fused_linear_kl_reference


def _eager_bf16(hidden, weight, mask, *, target_probs):
    """The common torch recipe: logits in the input dtype (fp32 accumulation inside the GEMM), then fp32."""
    log_q = torch.log_softmax(torch.nn.functional.linear(hidden, weight).float(), dim=-1)
    row = -(target_probs * log_q).sum(-1)
    return torch.where(mask, row, torch.zeros_like(row)).sum()


@contextlib.contextmanager
def _deadline(seconds: int):
    """Raise TimeoutError in the main thread after ``seconds`` (used to cap torch.compile)."""

    def _raise(signum, frame):
        raise TimeoutError(f"torch.compile took longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _reset_rss_peak() -> None:
    # Compilation and input construction happen before the measured calls; forget their RSS peak so the
    # high-water mark measured by benchmarks/_common.py covers the measured calls only (Linux).
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def _inputs(n, h, v, dtype, dev, steps, seed, shared_target):
    """(weight, hiddens, targets, mask): one weight, ``steps`` hidden states and targets (one shared target
    when ``shared_target``)."""
    gen = torch.Generator(device=dev).manual_seed(seed)
    weight = (torch.randn(v, h, device=dev, generator=gen) * h**-0.5).to(dtype).requires_grad_()
    hiddens = [torch.randn(n, h, device=dev, generator=gen).to(dtype).requires_grad_() for _ in range(steps)]
    mask = torch.rand(n, device=dev, generator=gen) > 0.2
    targets = [
        torch.softmax(2.0 * torch.randn(n, v, device=dev, generator=gen), dim=-1)
        for _ in range(1 if shared_target else steps)
    ]
    return weight, hiddens, targets, mask


def _loss_fn(impl, weight, mask, compile_fn=None):
    """``(hidden, target, k) -> loss`` for one impl (``k``: the TTT step, used by ``triton_offset``)."""
    if impl == "eager_bf16":
        return lambda hs, p, k: _eager_bf16(hs, weight, mask, target_probs=p)
    if impl == "compile":
        return lambda hs, p, k: compile_fn(hs, weight, mask, target_probs=p).loss
    if impl == "triton_offset":
        return lambda hs, p, k: fused_linear_kl(hs, weight, mask, target_probs=p, impl="triton", row_offset=k).loss
    return lambda hs, p, k: fused_linear_kl(hs, weight, mask, target_probs=p, impl=impl).loss


def case(impl, n, h, v, dtype, where, steps=1, compile_timeout=600, seed=0):
    """Build inputs for ``steps`` TTT-like calls sharing one weight on device ``where``; return the
    zero-argument fwd+bwd closure (module level: benchmarks/_common.py runs CPU cases in a subprocess)."""
    dev = torch.device(where)
    weight, hiddens, targets, mask = _inputs(
        n, h, v, getattr(torch, dtype), dev, steps, seed, shared_target=impl == "triton_offset"
    )
    loss_fn = _loss_fn(impl, weight, mask, torch.compile(fused_linear_kl_reference) if impl == "compile" else None)

    def run():
        weight.grad = None
        for hs in hiddens:
            hs.grad = None
        total = sum(
            loss_fn(hs, targets[min(k, len(targets) - 1)], k) * 0.8**k for k, hs in enumerate(hiddens)
        )
        total.backward()

    if impl == "compile":
        with _deadline(compile_timeout):
            run()
    _reset_rss_peak()
    return run


def check_correctness(*, n, h, v, dtype, seed=1):
    """CUDA, full shape: loss / dH / dW of ``triton`` and ``eager_bf16`` against the fp32 reference (max
    abs error relative to the reference's max abs value); raises if Triton is off by more than bf16 allows.
    """
    dev = torch.device("cuda")
    weight, (hidden,), (probs,), mask = _inputs(n, h, v, getattr(torch, dtype), dev, 1, seed, shared_target=True)
    out = {}
    for impl in ("reference", "eager_bf16", "gemm", "triton"):
        weight.grad = hidden.grad = None
        loss = _loss_fn(impl, weight, mask)(hidden, probs, 0)
        loss.backward()
        out[impl] = (loss.detach().float(), hidden.grad.float(), weight.grad.float())
        torch.cuda.empty_cache()
    ref = out.pop("reference")
    errors = {
        impl: {
            name: float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))
            for name, got, want in zip(("loss", "dh", "dw"), vals, ref)
        }
        for impl, vals in out.items()
    }
    for impl, err in errors.items():
        print(f"  correctness {impl} vs fp32 reference (max rel err): " + ", ".join(f"{k} {e:.2e}" for k, e in err.items()))
    for impl in ("gemm", "triton"):
        bad = {k: e for k, e in errors[impl].items() if e > 2e-2}
        if bad:
            raise RuntimeError(f"{impl} disagrees with the fp32 reference at N={n} H={h} Vd={v}: {bad}")
    return errors


def _derive(r, base, *, n, h, v, steps):
    """Add the display and ratio fields of one measured row (``base``: the baseline row or None)."""
    flops_min = 6.0 * n * h * v * steps
    r["time_ms"] = r["seconds"] * 1e3
    r["time"] = f"{r['time_ms']:.1f} ms"
    r["peak"] = fmt_bytes(r["peak_bytes"])
    r["time_vs_ref"] = r["seconds"] / base["seconds"] if base else float("nan")
    r["peak_vs_ref"] = r["peak_bytes"] / base["peak_bytes"] if base and base["peak_bytes"] else float("nan")
    r["tflops_6nhv"] = flops_min / r["seconds"] / 1e12
    # the recompute paths recompute the logits in backward: 4 GEMMs of N·H·Vd instead of 3
    recompute = r["impl"] in ("triton", "triton_offset", "chunked")
    r["tflops_executed"] = flops_min * (8 / 6 if recompute else 1.0) / r["seconds"] / 1e12
    return r


def bench(title, *, n, h, v, dtype, device, impls, steps=1, repeat=3, compile_timeout=600, out=None):
    """Measure every impl on one shape, in the order given (the baseline first); return (table rows, notes
    about skipped impls). With ``out`` (a ``PartialResults``) every row and note is written as it comes."""
    print(f"\n# {title}: N={n} H={h} Vd={v} {dtype} on {device}, {steps} call(s) per fwd+bwd", flush=True)
    rows, notes = [], []
    baseline = "eager_bf16" if device == "cuda" else "reference"
    base = None
    for impl in impls:
        try:
            r = measure(
                case,
                device=device,
                warmup=1,
                repeat=repeat,
                impl=impl,
                n=n,
                h=h,
                v=v,
                dtype=dtype,
                where=device,
                steps=steps,
                compile_timeout=compile_timeout,
            )
        except (RuntimeError, TimeoutError) as exc:
            note = f"{title}: {impl} skipped ({exc})"
            print(note, flush=True)
            notes.append(note)
            if out is not None:
                out.add("notes", note)
            if device == "cuda":
                torch.cuda.empty_cache()
            continue
        row = {"case": title, "impl": impl, **r}
        if impl == baseline:
            base = row
        rows.append(_derive(row, base, n=n, h=h, v=v, steps=steps))
        print(f"  {impl}: {r['seconds'] * 1e3:.1f} ms, peak {fmt_bytes(r['peak_bytes'])}, "
              f"time x{row['time_vs_ref']:.3f}, peak x{row['peak_vs_ref']:.3f} vs {baseline}", flush=True)
        if device == "cuda":
            if impl.startswith("triton"):
                from eagle_ext.ops.triton.linear_kl import chosen_configs

                row["autotune"] = chosen_configs()
                print(f"  {impl} autotune: {row['autotune']}", flush=True)
            torch.cuda.empty_cache()
        if out is not None:
            out.add("rows", row)
    return rows, notes


CUDA_FAST_IMPLS = ["eager_bf16", "gemm", "triton"]
COLUMNS = ["case", "impl", "time", "time_vs_ref", "peak", "peak_vs_ref", "tflops_6nhv", "tflops_executed"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, one repeat (smoke run)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile(reference)")
    parser.add_argument("--compile-timeout", type=int, default=600, help="seconds allowed for torch.compile")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    args = parser.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    compile_impl = [] if args.no_compile else ["compile"]
    if args.no_compile:
        print("note: torch.compile(reference) skipped (--no-compile)", flush=True)
    repeat = 1 if args.quick else 3
    common = dict(device=device, repeat=repeat, compile_timeout=args.compile_timeout)
    baseline = "eager_bf16" if device == "cuda" else "reference"
    name = "fused_linear_kl" + ("_quick" if args.quick else "")
    with PartialResults(name, device, rows=[], notes=[], ratio_baseline=baseline,
                        flop_count="6*N*H*Vd per call (3-GEMM lower bound)") as out:
        if device == "cpu":
            shape = dict(n=256, h=128, v=2000) if args.quick else dict(n=4096, h=1024, v=32000)
            bench("cpu", **shape, dtype="float32", impls=["reference", "chunked", "gemm", *compile_impl], out=out,
                  **common)
        else:
            shape = dict(n=1024, h=512, v=4000) if args.quick else dict(n=8192, h=4096, v=32000)
            out.update(correctness_max_rel_err_vs_fp32_reference=check_correctness(**shape, dtype="bfloat16"))
            # most valuable first: the baseline and the fused paths, then the slower references
            impls = [*CUDA_FAST_IMPLS, "reference", "chunked", *compile_impl]
            for title, steps in (("cuda", 1), ("cuda_ttt7", 7)):
                case_impls = impls[:len(CUDA_FAST_IMPLS)] + (["triton_offset"] if steps > 1 else []) + impls[len(CUDA_FAST_IMPLS):]
                bench(title, **shape, dtype="bfloat16", impls=case_impls, steps=steps, out=out, **common)
        print()
        table = print_table(out.payload["rows"], COLUMNS, title=f"fused_linear_kl fwd+bwd ({device}; ratios vs {baseline})")
        for note in out.payload["notes"]:
            print(note)
        out.update(table=table)


if __name__ == "__main__":
    main()
