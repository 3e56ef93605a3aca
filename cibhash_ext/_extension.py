"""Loads the compiled library; the package still imports when it is missing and says why on use."""

from __future__ import annotations

try:
    from . import _C  # noqa: F401  (loading the library registers the torch.ops.cibhash_ext ops)

    LOAD_ERROR: Exception | None = None
except ImportError as error:  # pragma: no cover - exercised only on a broken install
    LOAD_ERROR = error


def require_extension() -> None:
    """Raises a RuntimeError that says why the compiled ops are unavailable, if they are."""
    if LOAD_ERROR is not None:
        raise RuntimeError(
            "cibhash_ext's compiled library failed to load, so its ops are unavailable: "
            f"{LOAD_ERROR}. Build it with `pip install --no-build-isolation .` in the repository "
            "(see README.md)."
        )
