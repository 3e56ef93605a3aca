"""Argument types and checks shared by the subcommands."""

from __future__ import annotations

import argparse

import torch

__all__ = ["positive_list", "set_threads"]


def positive_list(kind: type, noun: str, example: str):
    """An argparse type: comma-separated positive values of ``kind``."""

    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {noun} such as {example}, got {text!r}")
        if not values or any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError(f"expected positive {noun}, got {text!r}")
        return values

    return parse


def set_threads(threads: int | None) -> None:
    """Sets torch's intra-op threads (``--threads``); None keeps torch's choice."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
