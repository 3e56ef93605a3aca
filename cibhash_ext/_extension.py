"""Loads the compiled library. When it cannot be loaded (or ``CIBHASH_NO_EXTENSION=1`` asks not to),
the package still imports, warns once with the reason, and its ops run the pure-PyTorch reference."""

from __future__ import annotations

import os
import warnings

LOAD_ERROR: Exception | None = None
if os.environ.get("CIBHASH_NO_EXTENSION", "0") not in ("", "0"):
    LOAD_ERROR = ImportError("CIBHASH_NO_EXTENSION is set")
else:
    try:
        from . import _C  # noqa: F401  (loading the library registers the torch.ops.cibhash_ext ops)
    except ImportError as error:
        LOAD_ERROR = error

if LOAD_ERROR is not None:
    warnings.warn(
        f"cibhash_ext's compiled library is not loaded ({LOAD_ERROR}); its ops run the pure-PyTorch "
        "reference instead: the same results to the bit, but about 10x (binary layer) to 100x (Hamming "
        "search) slower and with memory O(queries x database). Build it with "
        "`pip install --no-build-isolation .` (see README.md).",
        RuntimeWarning,
        stacklevel=2,
    )
