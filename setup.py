"""Build of the cibhash_ext C++/CUDA extension.

CUDA kernels are built when torch has CUDA and a toolkit is found (CUDA_HOME, else /usr/local/cuda);
otherwise the build is CPU-only. CIBHASH_CPU_ONLY=1 forces a CPU-only build.
"""

import glob
import os

# torch.utils.cpp_extension reads CUDA_HOME when it is imported, so the guess comes first: without
# it, nvcc is found through a wrapper on PATH and linking fails on -lcudart.
if "CUDA_HOME" not in os.environ and os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch  # noqa: E402
from setuptools import find_packages, setup  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0+PTX"


def _want_cuda() -> bool:
    if os.environ.get("CIBHASH_CPU_ONLY", "0") not in ("", "0"):
        return False
    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def _extension():
    sources = [os.path.join("csrc", "cibhash_ext.cpp")]
    sources += sorted(glob.glob(os.path.join("csrc", "ops", "cpu", "*.cpp")))
    # No -std flag: torch 2.14 needs C++20 and cpp_extension picks it. -ffp-contract=off keeps the
    # host sigmoid bit-identical to the CUDA one and to the PyTorch reference (no fused a*b+c).
    cxx = ["-O3", "-fopenmp", "-ffp-contract=off", "-fvisibility=hidden"]
    extra = {"cxx": cxx}
    kwargs = {"extra_link_args": ["-fopenmp"], "include_dirs": [os.path.join(HERE, "csrc")]}
    if _want_cuda():
        # With no GPU visible, cpp_extension cannot infer the architectures and dies with an
        # IndexError; default to Ampere + Hopper, plus Hopper's PTX, which newer GPUs (Blackwell)
        # compile at load time instead of failing with "no kernel image is available".
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCH_LIST
        sources += sorted(glob.glob(os.path.join("csrc", "ops", "cuda", "*.cpp")))
        sources += sorted(glob.glob(os.path.join("csrc", "ops", "cuda", "*.cu")))
        extra["cxx"] = cxx + ["-DCIBHASH_WITH_CUDA"]
        extra["nvcc"] = ["-O3", "-lineinfo", "-DCIBHASH_WITH_CUDA"]
        return cpp_extension.CUDAExtension("cibhash_ext._C", sources, extra_compile_args=extra, **kwargs)
    return cpp_extension.CppExtension("cibhash_ext._C", sources, extra_compile_args=extra, **kwargs)


BUILT_WITH = "_C.built-with"


class BuildExtension(cpp_extension.BuildExtension):
    """torch's build, plus ``cibhash_ext/_C.built-with``: the torch the library was compiled against,
    which the package names when the library does not load under another torch (_extension.py)."""

    def run(self) -> None:
        super().run()
        in_source = self.inplace or getattr(self, "editable_mode", False)  # pip install -e: beside the sources
        package = os.path.join(HERE if in_source else self.build_lib, "cibhash_ext")
        os.makedirs(package, exist_ok=True)
        with open(os.path.join(package, BUILT_WITH), "w") as fh:
            fh.write(torch.__version__ + "\n")


setup(
    packages=find_packages(include=["cibhash_ext", "cibhash_ext.*"]),
    package_data={"cibhash_ext": ["recipes/*.json"]},
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
