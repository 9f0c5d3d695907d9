#!/usr/bin/env bash
# GPU check of eagle_ext for a lent CUDA machine: ONE command of at most 8 minutes, phases in order of value
# (build, Triton kernel parity tests, fused-loss benchmark, EAGLE-3 / P-EAGLE step benchmarks, host-sync and
# recompile census, the other gpu tests), each under a budget that adds up to the total, stopped with SIGINT
# (then SIGKILL) so pytest still writes its junit XML and the benchmarks their partial JSON, and every result
# written into ONE directory the moment its phase ends ($OUT/gpu_check when OUT is set).
# The plan, budgets and mechanics live in benchmarks/gpu_check.py (standard library only).
#
# Usage:  bash benchmarks/gpu_check.sh [--dry-run] [--results-dir DIR]
#   --dry-run  print the phase plan with its budgets and check it; runs nothing, needs no GPU.
# Environment: PYTHON (default python3).
set -u -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
PY=${PYTHON:-python3}
exec "$PY" benchmarks/gpu_check.py --python "$PY" "$@"
