"""Build of the cibhash_ext C++/CUDA extension: two libraries on the LibTorch stable ABI.

``cibhash_ext._C`` holds every schema and the CPU kernels; ``cibhash_ext._C_cuda`` the CUDA kernels,
built when torch has CUDA and a toolkit is found (CUDA_HOME, else /usr/local/cuda), and loaded only
beside a torch with CUDA, so that the CPU library needs no CUDA runtime. CIBHASH_CPU_ONLY=1 skips
the CUDA library. Both use only torch's stable C shim (TORCH_TARGET_VERSION below) and Python's
limited API, so one wheel (tagged cp310-abi3) runs on every CPython >= 3.10 and every torch >=
TORCH_TARGET, whichever torch built it.
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
# The oldest torch whose stable ABI has everything the wrappers call (parallel_for, empty,
# new_zeros, contiguous, the dispatcher call): the headers refuse anything newer. pyproject.toml's
# torch>= pins follow it.
TORCH_TARGET = (2, 10)
TARGET_FLAG = "-DTORCH_TARGET_VERSION=0x{:02x}{:02x}000000000000".format(*TORCH_TARGET)


def _want_cuda() -> bool:
    if os.environ.get("CIBHASH_CPU_ONLY", "0") not in ("", "0"):
        return False
    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def _sources(*patterns: str) -> list[str]:
    return [path for pattern in patterns for path in sorted(glob.glob(os.path.join("csrc", *pattern.split("/"))))]


# No -std flag: torch 2.14 needs C++20 and cpp_extension picks it. -ffp-contract=off keeps the host
# sigmoid bit-identical to the CUDA one and to the PyTorch reference (no fused a*b+c).
CXX_FLAGS = ["-O3", "-ffp-contract=off", "-fvisibility=hidden", TARGET_FLAG]


def _common() -> dict:
    # A fresh include list per extension: cpp_extension appends torch's paths to the one it gets.
    return {"include_dirs": [os.path.join(HERE, "csrc")], "py_limited_api": True}


def _extensions():
    extensions = [
        cpp_extension.CppExtension(
            "cibhash_ext._C", _sources("cibhash_ext.cpp", "ops/cpu/*.cpp"), extra_compile_args={"cxx": CXX_FLAGS},
            **_common(),
        )
    ]
    if _want_cuda():
        # With no GPU visible, cpp_extension cannot infer the architectures and dies with an
        # IndexError; default to Ampere + Hopper, plus Hopper's PTX, which newer GPUs (Blackwell)
        # compile at load time instead of failing with "no kernel image is available".
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCH_LIST
        # USE_CUDA declares the stable shim's CUDA calls (the current stream).
        extensions.append(
            cpp_extension.CUDAExtension(
                "cibhash_ext._C_cuda", _sources("ops/cuda/*.cpp", "ops/cuda/*.cu"),
                extra_compile_args={"cxx": CXX_FLAGS + ["-DUSE_CUDA"], "nvcc": ["-O3", "-lineinfo"]},
                **_common(),
            )
        )
    return extensions


class BuildExtension(cpp_extension.BuildExtension):
    """Also writes cibhash_ext/_build_info.py: the torch this build used, so that a library that
    fails to load can say which torch it was built with."""

    def run(self):
        super().run()
        in_source = self.inplace or getattr(self, "editable_mode", False)  # pip install -e: beside the sources
        package = os.path.join(HERE if in_source else self.build_lib, "cibhash_ext")
        os.makedirs(package, exist_ok=True)
        with open(os.path.join(package, "_build_info.py"), "w") as f:
            f.write(
                '"""Written by setup.py at build time."""\n\n'
                f"TORCH_VERSION = {torch.__version__!r}\n"
                f"CUDA_VERSION = {torch.version.cuda if _want_cuda() else None!r}\n"
                f"TORCH_TARGET = {'.'.join(map(str, TORCH_TARGET))!r}\n"
            )


setup(
    packages=find_packages(include=["cibhash_ext", "cibhash_ext.*"]),
    package_data={"cibhash_ext": ["recipes/*.json"]},
    ext_modules=_extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
