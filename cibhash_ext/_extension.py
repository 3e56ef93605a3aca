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


def built_with() -> str | None:
    """The torch version the compiled library was built against (setup.py writes it beside the
    library), or None where no build left it."""
    try:
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "_C.built-with")) as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def _reason() -> str:
    import torch

    built = built_with()
    if built is not None and built != torch.__version__:
        return (f"it was built for torch {built} and this is torch {torch.__version__}: {LOAD_ERROR}; rebuild it "
                f"under this torch")
    return str(LOAD_ERROR)


if LOAD_ERROR is not None:
    warnings.warn(
        f"cibhash_ext's compiled library is not loaded ({_reason()}); its ops run the pure-PyTorch "
        "reference instead: the same results to the bit, but about 10x (binary layer) to 100x (Hamming "
        "search) slower and with memory O(queries x database). Build it with "
        "`pip install --no-build-isolation .` (see README.md).",
        RuntimeWarning,
        stacklevel=2,
    )
