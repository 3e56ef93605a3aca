"""The run directory: its file names, checked checkpoints and weights, the stored config, the log.

A run directory holds ``config.json`` (the resolved configuration), ``checkpoint.pt`` (after every
epoch: model, optimiser, scheduler and RNG states), ``model.pt`` (the weights-only export: state dict,
config and input shape, loadable with ``torch.load(weights_only=True)``), ``train.log``,
``metrics.json`` and ``report.md`` with its plots. Every file is written atomically
(:func:`cibhash_ext.files.atomic_write`), never through a symbolic link; checkpoints and weights carry
a SHA-256 digest of their contents that is checked on load, so a damaged file is refused, not used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings

import torch
from torch import Tensor

from cibhash_ext.config import TrainConfig, stored_config
from cibhash_ext.files import read_json, remove_stale_temporaries, torch_save, write_json

__all__ = [
    "CONFIG_FILE",
    "CHECKPOINT_FILE",
    "MODEL_FILE",
    "METRICS_FILE",
    "REPORT_FILE",
    "GRID_FILE",
    "LOG_FILE",
    "prepare",
    "is_run",
    "save_checkpoint",
    "load_checkpoint",
    "save_weights",
    "load_weights",
    "load_run_config",
    "write_config",
    "log_to_file",
]

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"
MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
GRID_FILE = "retrieval.png"
LOG_FILE = "train.log"
WEIGHTS_FORMAT = "cibhash_ext.model/1"
LOG = logging.getLogger("cibhash_ext")


def is_run(run_dir: str) -> bool:
    """Whether ``run_dir`` holds a run of ours (its ``config.json`` is a configuration)."""
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.isfile(path) or os.path.islink(path):
        return False
    try:
        values = read_json(path, "the run's configuration")
    except (OSError, ValueError):
        return False
    return isinstance(values, dict) and "code_lengths" in values and "dataset" in values


def prepare(run_dir: str, resume: bool, force: bool = False) -> None:
    """Checks that a run may start (or resume) in ``run_dir`` (the caller creates the folder).

    Raises:
        FileExistsError: a new run in a folder that holds a run, or a non-empty folder that is not a
            run (unless ``force``).
        FileNotFoundError: ``resume`` of a folder that is not a run.
    """
    if resume:
        if not is_run(run_dir):
            raise FileNotFoundError(f"{run_dir} is not a run directory: {os.path.join(run_dir, CONFIG_FILE)} is missing "
                                    "or is not a run's configuration")
        return
    if os.path.exists(os.path.join(run_dir, CHECKPOINT_FILE)):
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --run-dir")
    if os.path.isdir(run_dir) and os.listdir(run_dir) and not is_run(run_dir) and not force:
        raise FileExistsError(f"{run_dir} is a non-empty folder that is not a run of cibhash_ext: choose another "
                              "--run-dir, or pass --force to write the run into it")


def write_config(run_dir: str, cfg: TrainConfig, resolved: dict) -> None:
    """``config.json``: the configuration, and the settings presets and defaults resolved to."""
    write_json(os.path.join(run_dir, CONFIG_FILE), {**cfg.to_dict(), "resolved": resolved})


def load_run_config(run_dir: str) -> TrainConfig:
    """The configuration stored in ``run_dir/config.json``.

    Raises:
        FileNotFoundError: ``run_dir`` is not a run directory.
        ValueError: ``config.json`` is not valid JSON or holds invalid settings.
    """
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{run_dir} is not a run directory: {path} is missing")
    values = read_json(path, "the run's configuration")
    try:
        return stored_config(values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None


def digest(obj) -> str:
    """SHA-256 over a nested structure of dicts, lists, tensors and plain values, in a fixed order."""
    h = hashlib.sha256()

    def feed(value) -> None:
        if isinstance(value, Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(value, dict):
            h.update(f"D{len(value)}".encode())
            for key in sorted(value, key=repr):
                h.update(repr(key).encode())
                feed(value[key])
        elif isinstance(value, (list, tuple)):
            h.update(f"L{len(value)}".encode())
            for item in value:
                feed(item)
        else:
            h.update(f"V{value!r}".encode())

    feed(obj)
    return h.hexdigest()


def _save_checked(payload: dict, path: str) -> None:
    torch_save({**payload, "sha256": digest(payload)}, path)


def _load_checked(path: str, what: str) -> dict:
    """Loads a file written by :func:`_save_checked` weights-only and checks its digest."""
    remove_stale_temporaries(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to parse a file a user handed us means it is unreadable
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path} is not a readable {what} (truncated, empty or not a torch file): {reason}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a {what} of cibhash_ext (it holds a {type(state).__name__})")
    if "sha256" not in state:
        # Written before digests existed (cibhash_ext 0.1 runs): usable, but nothing can be verified.
        warnings.warn(f"{path} has no content digest (an older run); it cannot be checked for damage", stacklevel=3)
        return state
    stored = state.pop("sha256")
    if digest(state) != stored:
        raise ValueError(f"{path} is damaged: its contents do not match their SHA-256 digest; it is not used")
    return state


def save_checkpoint(run_dir: str, state: dict) -> None:
    """Writes ``checkpoint.pt`` atomically with its digest."""
    _save_checked(state, os.path.join(run_dir, CHECKPOINT_FILE))


def load_checkpoint(run_dir: str) -> dict:
    """Loads ``run_dir/checkpoint.pt`` weights-only (no code runs on load) and checks its digest.

    Raises:
        FileNotFoundError: no checkpoint.
        ValueError: the file is damaged, truncated or not a checkpoint.
    """
    path = os.path.join(run_dir, CHECKPOINT_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint in {run_dir}: expected {path} (train a model there first)")
    return _load_checked(path, "checkpoint")


def save_weights(run_dir: str, model: torch.nn.Module, cfg: TrainConfig, input_shape) -> str:
    """Writes the weights-only export ``model.pt``: {format, config, input_shape, state_dict, sha256}."""
    path = os.path.join(run_dir, MODEL_FILE)
    _save_checked({"format": WEIGHTS_FORMAT, "config": cfg.to_dict(), "input_shape": [int(v) for v in input_shape],
                   "state_dict": model.state_dict()}, path)
    return path


def load_weights(path: str) -> dict:
    """Loads and checks a weights file written by :func:`save_weights` (a run's ``model.pt``)."""
    state = _load_checked(path, "model weights file")
    if state.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{path} is not a cibhash_ext weights file (format {state.get('format')!r})")
    return state


class _NoFollowFileHandler(logging.StreamHandler):
    """Appends log lines to a file opened without following a symbolic link at its path."""

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        super().__init__(os.fdopen(fd, "a", encoding="utf-8"))

    def close(self) -> None:
        try:
            self.stream.close()
        finally:
            super().close()


def log_to_file(run_dir: str) -> logging.Handler:
    """Adds a handler that appends the library's log to ``run_dir/train.log``; remove it when done.

    Raises:
        OSError: the path is a symbolic link (never followed) or cannot be written.
    """
    path = os.path.join(run_dir, LOG_FILE)
    try:
        handler = _NoFollowFileHandler(path)
    except OSError as exc:
        raise OSError(f"cannot write the log {path}: {exc.strerror} (a symbolic link is never followed)") from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    LOG.setLevel(logging.INFO)
    LOG.addHandler(handler)
    return handler
