"""The build's CUDA defaults (setup.py): what a wheel built on a machine without a GPU can run on."""

import ast
from pathlib import Path

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
