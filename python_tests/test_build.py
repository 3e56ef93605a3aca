"""The build (setup.py): its CUDA defaults, what a wheel built on a machine without a GPU can run on,
and the stable-ABI contract that lets one build load under every torch from its target on."""

import ast
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from cibhash_ext._extension import LOAD_ERROR

SETUP = Path(__file__).resolve().parent.parent / "setup.py"


def _constant(name: str) -> str:
    for node in ast.parse(SETUP.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not found in setup.py")


def test_default_arch_list_embeds_ptx_for_newer_gpus():
    """Without +PTX on the newest architecture, a GPU newer than it (Blackwell for sm_90) finds no
    kernel image; with it, the driver compiles the PTX at load time (issue 11, fix 4)."""
    archs = _constant("DEFAULT_CUDA_ARCH_LIST").split(";")
    newest = max(archs, key=lambda a: float(a.removesuffix("+PTX")))
    assert newest.endswith("+PTX"), archs
    assert {"8.0", "9.0+PTX"} <= set(archs)


def test_torch_pins_follow_the_stable_abi_target():
    """setup.py's TORCH_TARGET (the stable-ABI version the headers hold the code to) is the floor of
    both torch pins: building with an older torch, or running under one, is refused."""
    target = ".".join(map(str, _constant("TORCH_TARGET")))
    pyproject = tomllib.loads((SETUP.parent / "pyproject.toml").read_text())
    assert f"torch>={target}" in pyproject["build-system"]["requires"]
    assert f"torch>={target}" in pyproject["project"]["dependencies"]


def _elf(tool: str, *args: str) -> str:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} (binutils) is not installed")
    return subprocess.run([tool, *args], capture_output=True, text=True, check=True).stdout


def test_the_libraries_use_only_the_stable_abi():
    """The built libraries are abi3 modules whose only torch symbols are the stable C shim's, and the
    CPU library needs no CUDA runtime: what lets one build load under every torch >= the target."""
    if LOAD_ERROR is not None:
        pytest.skip(f"the compiled library is not loaded: {LOAD_ERROR}")
    import cibhash_ext._C as cpu

    libraries = [cpu.__file__]
    try:
        import cibhash_ext._C_cuda as cuda

        libraries.append(cuda.__file__)
    except ImportError:
        pass
    for path in libraries:
        assert path.endswith(".abi3.so"), path
        undefined = _elf("nm", "-D", "--undefined-only", path)
        # Itanium-mangled names in c10::, at:: or torch:: would tie the library to one torch build.
        assert not re.findall(r"_ZN\w*?(?:3c10|2at|5torch)\w*", undefined), path
    needed = _elf("readelf", "-d", cpu.__file__)
    assert not re.search(r"cudart|c10_cuda|torch_cuda|torch_python", needed), needed
