"""Build eagle_ext._C from csrc/ with torch's cpp_extension.

Install with ``pip install --no-build-isolation -e .`` so the build uses the torch already installed
(build isolation would download a separate, multi-GB CUDA torch).
"""

import glob
import os
import subprocess
import sys
import tempfile

from setuptools import setup

from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def _compiler_accepts(flag: str) -> bool:
    """True when the C++ compiler builds a trivial OpenMP program with ``flag``."""
    cxx = os.environ.get("CXX", "c++")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cpp")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
        cmd = [cxx, flag, src, "-o", os.path.join(tmp, "probe")]
        return subprocess.run(cmd, capture_output=True).returncode == 0


def _extension():
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "*.cu")))
    # The sources are plain C++17; the -std flag itself comes from torch (C++17 or C++20 by version).
    cxx_flags = ["-O3"]
    link_flags = []
    if sys.platform.startswith("linux") and _compiler_accepts("-fopenmp"):
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
        define_macros = [("EAGLE_EXT_OPENMP", "1")]
    else:
        define_macros = []

    import torch

    if cuda_sources and torch.version.cuda is not None and CUDA_HOME is not None:
        return CUDAExtension(
            "eagle_ext._C",
            sources + cuda_sources,
            define_macros=define_macros + [("EAGLE_EXT_CUDA", "1")],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
            extra_link_args=link_flags,
        )
    return CppExtension(
        "eagle_ext._C",
        sources,
        define_macros=define_macros,
        extra_compile_args=cxx_flags,
        extra_link_args=link_flags,
    )


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
