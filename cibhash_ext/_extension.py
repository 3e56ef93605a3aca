"""Loads the compiled libraries: ``_C`` (every schema and the CPU kernels) and, beside a torch built
with CUDA, ``_C_cuda`` (the CUDA kernels). Both use only the LibTorch stable ABI, so one build loads
in every torch from its target version on (``_build_info.TORCH_TARGET``, written by setup.py).

When ``_C`` cannot be loaded (or ``CIBHASH_NO_EXTENSION=1`` asks not to), the package still imports,
warns once with the reason and the torch versions, and its ops run the pure-PyTorch reference. When
only ``_C_cuda`` cannot be loaded, CUDA tensors run the reference (ops.py registers it) and the
warning says so.
"""

from __future__ import annotations

import importlib.util
import os
import warnings

import torch

try:
    from ._build_info import CUDA_VERSION as BUILT_WITH_CUDA
    from ._build_info import TORCH_VERSION as BUILT_WITH
except ImportError:  # a source tree that was never built
    BUILT_WITH, BUILT_WITH_CUDA = None, None

LOAD_ERROR: Exception | None = None
CUDA_LOAD_ERROR: Exception | None = None
CUDA_LOAD_WARNED = False  # the import already warned about CUDA_LOAD_ERROR


def _versions() -> str:
    return f"built with torch {BUILT_WITH or '(unknown: no _build_info.py)'}, running torch {torch.__version__}"


if os.environ.get("CIBHASH_NO_EXTENSION", "0") not in ("", "0"):
    LOAD_ERROR = ImportError("CIBHASH_NO_EXTENSION is set")
else:
    try:
        from . import _C  # noqa: F401  (loading the library registers the torch.ops.cibhash_ext ops)
    except ImportError as error:
        LOAD_ERROR = error

if LOAD_ERROR is None and torch.version.cuda is not None:
    if importlib.util.find_spec(f"{__package__}._C_cuda") is None:
        CUDA_LOAD_ERROR = ImportError("the build made no CUDA library (CIBHASH_CPU_ONLY=1 or no CUDA toolkit)")
    else:
        try:
            from . import _C_cuda  # noqa: F401  (registers the CUDA kernels)
        except ImportError as error:
            CUDA_LOAD_ERROR, CUDA_LOAD_WARNED = error, True
            warnings.warn(
                f"cibhash_ext's CUDA library is not loaded ({error}; {_versions()}, CUDA {BUILT_WITH_CUDA} at "
                f"build time, {torch.version.cuda} now); CUDA tensors run the pure-PyTorch reference instead: the "
                "same results, much slower. Rebuild it for this torch with `pip install .` (see README.md).",
                RuntimeWarning,
                stacklevel=2,
            )

if LOAD_ERROR is not None:
    warnings.warn(
        f"cibhash_ext's compiled library is not loaded ({LOAD_ERROR}; {_versions()}); its ops run the "
        "pure-PyTorch reference instead: the same results to the bit, but about 10x (binary layer) to 100x "
        "(Hamming search) slower and with memory O(queries x database). Rebuild it for this torch with "
        "`pip install .` (see README.md).",
        RuntimeWarning,
        stacklevel=2,
    )
