"""Keeps benchmarks/test_regression.py out of every pytest run that does not name it (or this
folder) on the command line, so `pytest .` or a CI job never times anything by accident."""

from __future__ import annotations

from pathlib import Path


def pytest_ignore_collect(collection_path: Path, config):
    if collection_path.name != "test_regression.py":
        return None
    base = Path(config.invocation_params.dir)
    named = {(base / arg.split("::")[0]).resolve() for arg in config.invocation_params.args if not arg.startswith("-")}
    here = collection_path.resolve()
    return None if (here in named or here.parent in named) else True
