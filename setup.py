"""Build `tt` and its native extension `tt._C`.

The C++ sources in csrc/ are always compiled; the CUDA sources (csrc/**/*.cu) only when the
torch build has CUDA and nvcc is found. Triton kernels in kernels/ ship as `tt.kernels`.
Install with `pip install -e . --no-build-isolation` so the extension is built against the
torch that will run it.
"""

import glob
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def extension_modules():
    """The tt._C extension, or nothing when csrc/ has no sources or no compiler is usable."""
    cpp = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    cu = sorted(glob.glob("csrc/**/*.cu", recursive=True))
    if not cpp and not cu:
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        print("tt: torch not importable at build time; building without tt._C", file=sys.stderr)
        return [], {}

    define_macros = []
    cxx_flags = ["-O3", "-fopenmp"]  # the C++ standard comes from torch (C++20 for torch >= 2.10)
    with_cuda = bool(cu) and torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if os.environ.get("TT_NO_CUDA") == "1":
        with_cuda = False
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        include_dirs = []
        nvidia = os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "cu13", "include")
        if os.path.isdir(nvidia):
            include_dirs.append(os.path.abspath(nvidia))
        ext = cpp_extension.CUDAExtension(
            "tt._C", cpp + cu, include_dirs=include_dirs, define_macros=define_macros + [("TT_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
            extra_link_args=["-fopenmp"],
        )
    else:
        if cu:
            print("tt: CUDA sources skipped (no CUDA torch build or no nvcc)", file=sys.stderr)
        if not cpp:
            return [], {}
        ext = cpp_extension.CppExtension(
            "tt._C", cpp, define_macros=define_macros, extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extension_modules()

setup(
    packages=["tt", "tt.kernels"],
    package_dir={"tt": "tt", "tt.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
