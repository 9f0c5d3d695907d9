"""Loader for the compiled extension ``eagle_ext._C``.

There is deliberately no pure-Python fallback: the plain references live in tests/ and benchmarks/, and
a silent fallback would hide a broken build behind a 50x slowdown.
"""

from __future__ import annotations

BUILD_HINT = (
    "eagle_ext._C (the compiled C++ extension) is not built. Build it from the repository root with\n"
    "    pip install --no-build-isolation -e .\n"
    "(or `make install`), which compiles csrc/*.cpp against the installed torch."
)


def load_extension():
    """Import and return ``eagle_ext._C``; raise ImportError naming the build command if it is missing."""
    import torch  # noqa: F401  (the extension links against libtorch; load it first)

    try:
        from eagle_ext import _C
    except ImportError as exc:  # pragma: no cover - exercised only on a broken install
        raise ImportError(f"{BUILD_HINT}\n(original error: {exc})") from exc
    return _C
