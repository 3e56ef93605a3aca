"""Without the compiled library (``CIBHASH_NO_EXTENSION=1``, as after a failed build) the package
imports, warns once with the reason, and the public API gives the compiled results to the bit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig

import pytest
import torch

import cibhash_ext as ch

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = r"""
import sys, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import cibhash_ext as ch
messages = [str(w.message) for w in caught if "compiled library is not loaded" in str(w.message)]
assert len(messages) == 1 and "CIBHASH_NO_EXTENSION is set" in messages[0] and "slower" in messages[0], messages
import torch
from cibhash_ext._extension import BUILT_WITH
# A library that fails to load says which torch built it and which one runs.
assert f"built with torch {BUILT_WITH}, running torch {torch.__version__}" in messages[0], messages
from cibhash_ext._extension import LOAD_ERROR
assert LOAD_ERROR is not None
inputs = torch.load(sys.argv[1])
torch.save(__import__("fallback_cases").run(ch, inputs), sys.argv[2])
"""


def test_the_public_api_without_the_compiled_library_matches_it(tmp_path):
    import fallback_cases

    g = torch.Generator().manual_seed(0)
    inputs = fallback_cases.make_inputs(g)
    torch.save(inputs, tmp_path / "inputs.pt")
    env = {**os.environ, "CIBHASH_NO_EXTENSION": "1", "PYTHONPATH": os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    fallback = torch.load(tmp_path / "out.pt")
    compiled = fallback_cases.run(ch, inputs)
    assert fallback.keys() == compiled.keys()
    for name in compiled:
        assert type(fallback[name]) is type(compiled[name]), name
        if isinstance(compiled[name], str):  # an error: same type, same expectation (dtypes print differently)
            assert fallback[name].split(", got")[0] == compiled[name].split(", got")[0], name
        else:
            assert all(torch.equal(a, b) for a, b in zip(fallback[name], compiled[name])), name


def test_the_extension_is_loaded_in_this_process():
    from cibhash_ext._extension import LOAD_ERROR

    if LOAD_ERROR is not None:
        pytest.fail(f"the compiled library did not load here: {LOAD_ERROR}")
    assert ch.hamming_topk is not None


def test_a_library_built_for_another_torch_is_named_in_the_warning(tmp_path):
    """A library that does not load under this torch (here an unloadable file beside a record of
    torch 1.0.0) makes the package warn with both versions, and its ops still run."""
    package = tmp_path / "cibhash_ext"
    shutil.copytree(os.path.dirname(ch.__file__), package,
                    ignore=shutil.ignore_patterns("*.so", "__pycache__", "_build_info.py"))
    (package / ("_C" + sysconfig.get_config_var("EXT_SUFFIX"))).write_bytes(b"not a shared library")
    (package / "_build_info.py").write_text("TORCH_VERSION = '1.0.0'\nCUDA_VERSION = None\nTORCH_TARGET = '1.0'\n")
    script = ("import warnings\n"
              "with warnings.catch_warnings(record=True) as caught:\n"
              "    warnings.simplefilter('always')\n"
              "    import cibhash_ext, torch\n"
              "print([str(w.message) for w in caught if 'compiled library' in str(w.message)])\n"
              "print(cibhash_ext.hamming_distance(torch.zeros(1, 2, dtype=torch.uint8), torch.ones(1, 2, dtype=torch.uint8)))")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    env.pop("CIBHASH_NO_EXTENSION", None)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"built with torch 1.0.0, running torch {torch.__version__}" in result.stdout
    assert "Rebuild it for this torch" in result.stdout and "tensor([[2]]" in result.stdout
