#!/usr/bin/env bash
# GPU check of eagle_ext, for a lent CUDA machine (no internet, no `datasets` package needed).
#
# Phases, each under its own time limit and all inside one budget (default 560 s, so the whole run fits
# in 10 minutes with room to spare):
#   1. build:   pip install --no-build-isolation --no-deps -e .   (the C++/CUDA extension for this Python)
#   2. tests:   pytest -m gpu over tests/ (collection errors, e.g. a missing optional package, do not stop
#               the run; per-test timeout when pytest-timeout is installed)
#   3. census:  a few training steps of each trainer (EAGLE-3 TTT, P-EAGLE flat with per-step COD lengths,
#               P-EAGLE partitioned) under torch.cuda.set_sync_debug_mode("warn") and TORCH_LOGS=recompiles:
#               syncs per step with their source lines, flex compiles against length buckets, recompiles
#   4. benchmarks, GPU mode (--device cuda): fused_linear_kl, eagle3_step, peagle_step, cod_block_mask
#               (bench_cod, bench_packing and bench_data are CPU-only; bench_offline needs `datasets`)
# Then benchmarks/results/gpu_check_cuda.json names the device (nvidia-smi), torch / triton versions, each
# phase's exit code, time and log tail, the pytest counts, the census and the benchmark result files.
# A phase that fails or times out is recorded and the next one still runs.
#
# Usage, from anywhere:  bash benchmarks/gpu_check.sh
# Environment: PYTHON (default python3), GPU_CHECK_BUDGET_S (default 560). When OUT is set (the device
# tool's output folder), the JSON, the full log and a tarball of the CUDA benchmark results are copied there.

set -u -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1

PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-560}
START=$SECONDS
RESULTS=benchmarks/results
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
LOG=$WORK/gpu_check.log
PHASES=$WORK/phases.tsv
STAMP=$WORK/start.stamp
touch "$STAMP"
: >"$PHASES"
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1
# One inductor cache for every phase: kernels compiled by the tests are reused by the census and benchmarks.
export TORCHINDUCTOR_CACHE_DIR=$WORK/inductor

# phase NAME WANTED_SECONDS COMMAND...: run COMMAND under min(WANTED, budget left) seconds; record
# "name<TAB>rc<TAB>seconds<TAB>limit" (rc 124/137: timed out; "skipped" when the budget is spent).
phase() {
    local name=$1 want=$2
    shift 2
    local left=$((BUDGET - (SECONDS - START)))
    local limit=$((want < left ? want : left))
    if ((limit < 15)); then
        printf '%s\tskipped\t0\t%s\n' "$name" "$limit" >>"$PHASES"
        echo "== $name: skipped, ${left}s of the budget left" | tee -a "$LOG"
        return 0
    fi
    echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
    local t0=$SECONDS rc
    timeout --kill-after=10 "$limit" "$@" >"$WORK/$name.out" 2>&1
    rc=$?
    cat "$WORK/$name.out" >>"$LOG"
    tail -n 25 "$WORK/$name.out"
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$limit" >>"$PHASES"
    echo "== $name: exit $rc after $((SECONDS - t0))s" | tee -a "$LOG"
    return 0
}

DEVICE=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1)
if [ -z "$DEVICE" ]; then
    DEVICE=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))' 2>/dev/null || echo "no CUDA device")
fi
echo "device: $DEVICE" | tee -a "$LOG"

# 1. build ------------------------------------------------------------------------------------------
build() {
    "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . &&
        "$PY" -c 'from eagle_ext._ext import load_extension; load_extension(); print("extension loads")'
}
phase build 200 build

# 2. GPU tests --------------------------------------------------------------------------------------
PYTEST_ARGS=(-m gpu -o addopts= -ra -q -p no:cacheprovider --continue-on-collection-errors
    --junitxml="$WORK/pytest.xml" tests)
if "$PY" -c 'import pytest_timeout' 2>/dev/null; then
    PYTEST_ARGS+=(--timeout=150)
fi
phase tests 240 "$PY" -m pytest "${PYTEST_ARGS[@]}"

# 3. recompile / sync census ------------------------------------------------------------------------
cat >"$WORK/census.py" <<'PYEOF'
"""A few training steps of each trainer under sync debug mode "warn": syncs per step and their sources,
flex compiles against length buckets. Writes JSON to argv[1]."""

import collections
import json
import sys
import time
import warnings

import torch
from torch._dynamo.utils import counters
from transformers import LlamaConfig

from eagle_ext.eagle3 import Eagle3TrainerModule
from eagle_ext.models import Eagle3DraftModel
from eagle_ext.models.attention import flex_bucket_length
from eagle_ext.peagle import PEagleTrainerModule, run_partitioned_step

DEV = "cuda"
V, VD, H, T, B = 4096, 1024, 256, 512, 2


def config(layers):
    return LlamaConfig(hidden_size=H, intermediate_size=3 * H, num_attention_heads=4, num_key_value_heads=2,
                       num_hidden_layers=layers, vocab_size=V, max_position_embeddings=4 * T)


def vocab():
    ids = torch.arange(VD, device=DEV)
    return ids, torch.arange(V, device=DEV) < VD


def batch(seed):
    g = torch.Generator().manual_seed(seed)
    loss = (torch.rand(B, T, generator=g) < 0.5 + 0.4 * torch.rand((), generator=g)).long()
    return {
        "input_ids": torch.randint(0, V - 1, (B, T), generator=g).to(DEV),
        "attention_mask": torch.ones(B, T, dtype=torch.long, device=DEV),
        "loss_mask": loss.to(DEV),
        "aux_hidden_states": torch.randn(B, T, 3 * H, generator=g).to(DEV, torch.bfloat16),
        "target_logits": torch.randn(B, T, V, generator=g).to(DEV, torch.bfloat16),
    }


def census(step_fn, steps):
    """Warm-up once, then ``steps`` calls of ``step_fn(i)`` under sync debug mode "warn"."""
    step_fn(-1)
    torch.cuda.synchronize()
    per_step, sources = [], collections.Counter()
    for i in range(steps):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                step_fn(i)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        syncs = [w for w in caught if "synchroniz" in str(w.message)]
        per_step.append(len(syncs))
        sources.update(f"{w.filename.split('site-packages/')[-1]}:{w.lineno}" for w in syncs)
    torch.cuda.synchronize()
    return {"syncs_per_step": per_step, "sources": dict(sources.most_common(12))}


def eagle3(seq_lens_device):
    torch.manual_seed(0)
    draft = Eagle3DraftModel.from_target_config(config(4), VD).to(DEV, torch.bfloat16)
    ids, mask = vocab()
    trainer = Eagle3TrainerModule(draft, selected_token_ids=ids, selected_token_mask=mask, ttt_steps=4)
    data = batch(0)
    seq_lens = torch.tensor([[200, 312], [T, 0]], device=seq_lens_device)
    positions = torch.cat([torch.arange(200), torch.arange(312)])[None].expand(B, T).contiguous()
    positions[1] = torch.arange(T)

    def step(_):
        trainer(**data, position_ids=positions.to(DEV), seq_lens=seq_lens).loss.backward()

    return census(step, 3)


def peagle(partitions):
    torch.manual_seed(0)
    draft = Eagle3DraftModel.from_target_config(config(4), VD, num_hidden_layers=2, parallel_drafting=True,
                                                mask_token_id=V - 1).to(DEV, torch.bfloat16)
    ids, mask = vocab()
    trainer = PEagleTrainerModule(draft, selected_token_ids=ids, selected_token_mask=mask, num_depths=4,
                                  mask_token_id=V - 1, sequence_partitions=partitions)
    lengths = []

    def step(i):
        data = batch(100 + i)  # new loss masks every step: new COD lengths
        if partitions == 1:
            metrics = trainer(**data)
            metrics.loss.backward()
        else:
            plan = trainer.build_peagle_plan(data["loss_mask"], data["attention_mask"])
            lengths.extend(unit.anchor.numel() for unit in plan.units)
            run_partitioned_step(trainer, plan, data)

    result = census(step, 5)
    result["segment_lengths"] = lengths
    return result


def main():
    out = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0)}
    t0 = time.perf_counter()
    out["eagle3_seq_lens_on_host"] = eagle3("cpu")
    out["eagle3_seq_lens_on_cuda"] = eagle3(DEV)
    torch._dynamo.reset()
    counters.clear()
    out["peagle_flat"] = peagle(1)
    out["peagle_partitioned_s2"] = peagle(2)
    out["flex_compiles"] = counters["stats"]["unique_graphs"]
    out["flex_buckets_seen"] = sorted({flex_bucket_length(n) for n in out["peagle_partitioned_s2"]["segment_lengths"]})
    out["seconds"] = time.perf_counter() - t0
    with open(sys.argv[1], "w") as f:
        json.dump(out, f, indent=2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
PYEOF
phase census 120 env TORCH_LOGS=recompiles PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PY" "$WORK/census.py" "$WORK/census.json"

# 4. GPU benchmarks ---------------------------------------------------------------------------------
phase bench_fused_linear_kl 110 "$PY" -m benchmarks.bench_fused_linear_kl --device cuda --compile-timeout 60
phase bench_eagle3_step 70 "$PY" -m benchmarks.bench_eagle3_step --device cuda
phase bench_peagle_step 70 "$PY" -m benchmarks.bench_peagle_step --device cuda
phase bench_cod_block_mask 90 "$PY" -m benchmarks.bench_cod_block_mask --device cuda --compile-limit-s 15

# Summary JSON ---------------------------------------------------------------------------------------
GPU_CHECK_DEVICE="$DEVICE" GPU_CHECK_WORK="$WORK" GPU_CHECK_SECONDS=$((SECONDS - START)) "$PY" - <<'PYEOF'
import glob
import json
import os
import xml.etree.ElementTree as ET

import torch

from eagle_ext._io import write_json

work = os.environ["GPU_CHECK_WORK"]
start = os.path.getmtime(os.path.join(work, "start.stamp"))
phases = []
with open(os.path.join(work, "phases.tsv")) as f:
    for line in f:
        name, rc, seconds, limit = line.rstrip("\n").split("\t")
        out = os.path.join(work, f"{name}.out")
        tail = open(out, errors="replace").read()[-3000:] if os.path.exists(out) else ""
        phases.append({"phase": name, "rc": rc, "seconds": int(seconds), "limit_s": int(limit),
                       "timed_out": rc in ("124", "137"), "tail": tail})
record = {
    "device": os.environ["GPU_CHECK_DEVICE"],
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "seconds": int(os.environ["GPU_CHECK_SECONDS"]),
    "phases": phases,
}
try:
    import triton

    record["triton"] = triton.__version__
except ImportError:
    record["triton"] = None
junit = os.path.join(work, "pytest.xml")
if os.path.exists(junit):
    suites = ET.parse(junit).getroot()
    suites = [suites] if suites.tag == "testsuite" else list(suites)
    record["pytest"] = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    record["pytest"]["failed"] = sorted(
        f"{case.get('classname')}::{case.get('name')}"
        for s in suites for case in s.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    )
census = os.path.join(work, "census.json")
if os.path.exists(census):
    record["census"] = json.load(open(census))
    log = open(os.path.join(work, "census.out"), errors="replace").read()
    record["census"]["recompile_log_lines"] = sum("Recompiling function" in line for line in log.splitlines())
record["benchmark_results"] = sorted(
    path for path in glob.glob("benchmarks/results/*_cuda.json") if os.path.getmtime(path) >= start
)
path = "benchmarks/results/gpu_check_cuda.json"
write_json(path, record, indent=2, sort_keys=True)
print(f"wrote {path}")
summary = {k: record.get(k) for k in ("device", "torch", "triton", "seconds", "pytest")}
summary["phases"] = {p["phase"]: (p["rc"], p["seconds"]) for p in phases}
if "census" in record:
    summary["census"] = {k: v["syncs_per_step"] for k, v in record["census"].items() if isinstance(v, dict)}
    summary["census"]["flex_compiles"] = record["census"].get("flex_compiles")
    summary["census"]["flex_buckets_seen"] = record["census"].get("flex_buckets_seen")
print(json.dumps(summary, indent=1))
PYEOF

if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
    cp "$RESULTS/gpu_check_cuda.json" "$LOG" "$OUT/" 2>/dev/null
    find "$RESULTS" -name '*_cuda.json' -newer "$STAMP" -print0 | tar -czf "$OUT/gpu_results.tar.gz" --null -T -
fi
echo "gpu_check done in $((SECONDS - START))s; log: $LOG"
