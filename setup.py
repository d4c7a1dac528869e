"""Build `tt` and its native extension `tt._C`.

The C++ sources in csrc/ (csrc/*.cpp, csrc/cpu/) are always compiled; the CUDA sources
(csrc/cuda/) when the torch build has CUDA and nvcc is found, for TORCH_CUDA_ARCH_LIST
(default 8.0;9.0: A100 and H100). Triton kernels in kernels/ ship as `tt.kernels`.
Install with `pip install -e . --no-build-isolation` so the extension is built against the
torch that will run it. Without a compiler the install still succeeds and tt runs its
PyTorch reference ops (`tt.ops.backends()` says which); TT_REQUIRE_EXTENSION=1 makes a failed
build an error, TT_REQUIRE_CUDA=1 also requires the CUDA sources, TT_NO_CUDA=1 skips them.
"""

import glob
import os
import shutil
import sys

from setuptools import setup


def find_cuda_home() -> str | None:
    """CUDA_HOME, else the toolkit of the nvcc on PATH (following links), else /usr/local/cuda."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    for root in ([os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []) + ["/usr/local/cuda"]:
        if os.path.exists(os.path.join(root, "bin", "nvcc")) and glob.glob(os.path.join(root, "lib*", "libcudart.so")):
            return root
    return None


def extension_modules():
    """The tt._C extension and its build command, or nothing when torch is not importable."""
    cpp = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cu = sorted(glob.glob("csrc/cuda/*.cu"))
    cuda_cpp = sorted(glob.glob("csrc/cuda/*.cpp"))  # registrations of the CUDA kernels
    if find_cuda_home():  # before cpp_extension reads it: nvcc on PATH may be a link outside the toolkit
        os.environ["CUDA_HOME"] = find_cuda_home()
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        print("tt: torch is not importable at build time; building without tt._C", file=sys.stderr)
        return [], {}

    # the C++ standard comes from torch (C++20 for torch >= 2.10); -fno-trapping-math lets loops with
    # selects vectorize (tt never reads floating-point exception flags; results are unchanged)
    cxx = ["-O3", "-fopenmp", "-fno-trapping-math"]
    with_cuda = (torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
                 and os.environ.get("TT_NO_CUDA") != "1")
    if os.environ.get("TT_REQUIRE_CUDA") == "1" and not with_cuda:
        raise RuntimeError("TT_REQUIRE_CUDA=1 but torch has no CUDA or nvcc is not found (CUDA_HOME)")
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        # cuBLAS/cuSPARSE headers that ATen's CUDA headers include live in the nvidia wheels
        nvidia = os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "cu13", "include")
        ext = cpp_extension.CUDAExtension(
            "tt._C", cpp + cuda_cpp + cu, include_dirs=[os.path.abspath(nvidia)] if os.path.isdir(nvidia) else [],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]}, extra_link_args=["-fopenmp"])
    else:
        print("tt: building the C++ ops only (no CUDA torch build, nvcc not found, or TT_NO_CUDA=1)",
              file=sys.stderr)
        ext = cpp_extension.CppExtension("tt._C", cpp, extra_compile_args={"cxx": cxx},
                                         extra_link_args=["-fopenmp"])

    class BuildExt(cpp_extension.BuildExtension.with_options(use_ninja=True)):
        """A failed build leaves tt on its reference ops unless the extension is required."""

        def build_extension(self, extension):
            try:
                super().build_extension(extension)
            except Exception as e:  # compiler missing or broken: say so, install anyway
                if os.environ.get("TT_REQUIRE_EXTENSION") == "1" or os.environ.get("TT_REQUIRE_CUDA") == "1":
                    raise
                print(f"tt: building {extension.name} failed ({e}); tt will run its PyTorch reference ops",
                      file=sys.stderr)

    return [ext], {"build_ext": BuildExt}


ext_modules, cmdclass = extension_modules()

setup(
    packages=["tt", "tt.eval", "tt.kernels", "tt.ops", "tt.predict", "tt.search", "tt.tasks"],
    package_dir={"tt": "tt", "tt.kernels": "kernels"},
    package_data={"tt.tasks": ["policies/*.safetensors", "policies/*.json"]},  # the shipped behaviour policies
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
