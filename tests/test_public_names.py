"""Every name a package exports is the documented function or class, whatever was imported before it.

A lazily exported name that shares its name with a submodule is rebound to the module as soon as the
submodule is imported (``import pkg.name`` sets ``pkg.name``), so ``from pkg import name`` then gives a
module. The check runs in a fresh interpreter that first imports every submodule of eagle_ext, so the
import order is the worst case, not whatever the test session happened to import.
"""

import json
import os
import subprocess
import sys

_PROBE = r"""
import importlib, inspect, json, pkgutil, sys
import torch  # eagle_ext._C links against torch's libraries; eagle_ext._ext imports torch first the same way
import eagle_ext

skipped, bad, packages = [], [], []
for info in pkgutil.walk_packages(eagle_ext.__path__, "eagle_ext."):
    if info.name.endswith(".__main__"):  # importing it runs the CLI
        continue
    try:
        importlib.import_module(info.name)
    except ModuleNotFoundError as exc:  # an optional dependency that is not installed (e.g. gguf)
        if (exc.name or "").split(".")[0] == "eagle_ext":
            raise
        skipped.append(f"{info.name} ({exc.name})")
for name, module in sorted(sys.modules.items()):
    if not name.startswith("eagle_ext") or not hasattr(module, "__all__"):
        continue
    packages.append(name)
    for attr in module.__all__:
        obj = getattr(module, attr)
        if inspect.ismodule(obj) or not (inspect.isfunction(obj) or inspect.isclass(obj) or callable(obj)
                                         or isinstance(obj, (tuple, str, int, float, dict, frozenset))):
            bad.append(f"{name}.{attr} -> {type(obj).__name__} {obj!r:.80}")
from eagle_ext.ops import fused_linear_kl
print(json.dumps({"skipped": skipped, "bad": bad, "packages": packages,
                  "fused_linear_kl": [inspect.isfunction(fused_linear_kl), getattr(fused_linear_kl, "__module__", None)]}))
"""


def _probe() -> dict:
    env = dict(os.environ)
    env.setdefault("TRITON_INTERPRET", "1")
    proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_exported_name_is_a_function_or_class_after_importing_all_submodules():
    result = _probe()
    assert {"eagle_ext.ops", "eagle_ext.eagle3", "eagle_ext.data", "eagle_ext.models", "eagle_ext.peagle"} <= set(
        result["packages"]
    ), result["packages"]
    assert result["bad"] == [], "exported names that are not functions or classes: " + "; ".join(result["bad"])
    is_function, module = result["fused_linear_kl"]
    assert is_function, f"from eagle_ext.ops import fused_linear_kl gave a non-function (module {module})"
    assert module == "eagle_ext.ops.linear_kl"
