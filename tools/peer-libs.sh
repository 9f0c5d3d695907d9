#!/usr/bin/env bash
# A venv with the real peer libraries (speculators 0.9.0, specforge 0.2.0) to check exported drafts against
# their own loaders (CPU only, offline at run time). Not for CI: a development-time compatibility check.
# Idempotent: does nothing when the venv already imports both libraries at the pinned versions.
#   bash tools/peer-libs.sh               # then run checks with $VENV/bin/python
# The venv goes to $EAGLE_EXT_PEER_VENV (older name: $EAGLE_PEER_VENV), default ~/.cache/eagle-peer-libs/venv;
# tests/test_export_compat.py looks in the same place.
# speculators / specforge (and hs-connectors, triton) go in with --no-deps: their full trees pull a CUDA
# torch, vllm/sglang, wandb, ...; only what their draft classes import is added. peer-libs-constraints.txt is the
# `pip freeze` of a working venv, so every version is pinned.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${EAGLE_EXT_PEER_VENV:-${EAGLE_PEER_VENV:-$HOME/.cache/eagle-peer-libs/venv}}"
PY="$VENV/bin/python"

works() {
  [ -x "$PY" ] && "$PY" - <<'EOF' >/dev/null 2>&1
import importlib.metadata as md, warnings
warnings.simplefilter("ignore")
want = {"torch": "2.13.0", "speculators": "0.9.0", "specforge": "0.2.0", "transformers": "5.8.1"}
for name, version in want.items():
    assert md.version(name).split("+")[0] == version, (name, md.version(name))
from speculators.models.eagle3 import Eagle3DraftModel  # noqa: F401
from speculators.models.peagle import PEagleDraftModel  # noqa: F401
from specforge.modeling.draft.llama3_eagle import LlamaForCausalLMEagle3  # noqa: F401
from specforge.modeling.draft.peagle import PEagleDraftModel as SfPEagle  # noqa: F401
import specforge.algorithms.peagle.model  # noqa: F401  (imports triton)
EOF
}

if works; then
  echo "peer-libs venv OK: $VENV"
  exit 0
fi

mkdir -p "$(dirname "$VENV")"
[ -x "$PY" ] || python3 -m venv "$VENV"
PIP=("$VENV/bin/pip" install --disable-pip-version-check -c "$HERE/peer-libs-constraints.txt")
"${PIP[@]}" torch==2.13.0                        # the local CPU wheel; any other version downloads gigabytes
"${PIP[@]}" --no-deps speculators==0.9.0 specforge==0.2.0 hs-connectors==0.9.0 triton==3.8.0
"${PIP[@]}" transformers==5.8.1 safetensors "pydantic>=2" "pydantic-settings>=2" huggingface_hub accelerate \
  "numpy>=2,<=2.5.4" "loguru>=0.7.2,<=0.7.3" pyyaml psutil "openai>=2" "datasets>=4,<=5.1.0"
# speculators.models.eagle3 imports speculators.train.data -> openai, datasets, hs_connectors;
# specforge.algorithms.peagle.model imports specforge.core.loss -> triton (import only, never run here).

if works; then
  echo "peer-libs venv ready: $VENV"
  "$VENV/bin/pip" list --disable-pip-version-check 2>/dev/null | grep -iE '^(torch|transformers|speculators|specforge|triton) '
else
  echo "peer-libs venv is broken: $VENV" >&2
  exit 1
fi
