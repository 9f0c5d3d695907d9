"""Where the development-time peer-library venv (speculators, specforge) lives, for tests/test_export_compat.py.

``$EAGLE_EXT_PEER_VENV`` (older name ``$EAGLE_PEER_VENV``), default ``~/.cache/eagle-peer-libs/venv``; the
repository's ``tools/peer-libs.sh`` builds it there.
"""

from __future__ import annotations

import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD_SCRIPT = os.path.join("tools", "peer-libs.sh")  # relative to the repository root
PINNED = ("speculators-0.9.0", "specforge-0.2.0")


def peer_venv(environ: dict | None = None) -> str:
    env = os.environ if environ is None else environ
    return env.get("EAGLE_EXT_PEER_VENV") or env.get("EAGLE_PEER_VENV") or os.path.expanduser(
        "~/.cache/eagle-peer-libs/venv")


def peer_venv_ready(venv: str) -> bool:
    """The venv's python runs and its site-packages hold the pinned speculators and specforge."""
    if not os.access(os.path.join(venv, "bin", "python"), os.X_OK):
        return False
    site = glob.glob(os.path.join(venv, "lib", "python*", "site-packages"))
    return bool(site) and all(os.path.isdir(os.path.join(site[0], f"{name}.dist-info")) for name in PINNED)


def skip_reason(venv: str) -> str:
    return (f"no peer-libs venv with speculators 0.9.0 and specforge 0.2.0 at {venv}: build it with "
            f"`bash {BUILD_SCRIPT}` (from the repository root), or set EAGLE_EXT_PEER_VENV to one")
