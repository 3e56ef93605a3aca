"""``cibhash encode``: images (files, folders or a split of the run's dataset) -> a packed codes file."""

from __future__ import annotations

import argparse
import io
import os

import numpy as np

from cibhash_ext.cli.common import set_threads

__all__ = ["add_commands"]


def add_commands(sub) -> None:
    c = sub.add_parser("encode", help="encode images into a packed codes file (.npz)",
                       description="Encode images with a trained run's model into packed binary codes "
                       "(LSB-first bytes, the FAISS IndexBinary layout), saved as .npz with one array per code length.")
    c.add_argument("run_dir", help="a run directory written by cibhash train")
    c.add_argument("inputs", nargs="*", help="image files or folders (searched recursively)")
    c.add_argument("--split", choices=("query", "database", "train"),
                   help="encode a split of the run's dataset instead of files")
    c.add_argument("--out", required=True, help="output file (.npz): arrays codes_<L> [N, ceil(L/8)] uint8, names")
    c.add_argument("--batch-size", type=int, default=512)
    c.add_argument("--threads", type=int)
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(handler=_cmd_encode, command_name="encode")


def _cmd_encode(args: argparse.Namespace) -> int:
    from cibhash_ext.encode import encode_run
    from cibhash_ext.files import atomic_write

    if not args.out.endswith(".npz"):
        raise ValueError(f"--out must name a .npz file, got {args.out!r}")
    set_threads(args.threads)
    folder = os.path.dirname(os.path.abspath(args.out))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise OSError(f"--out {args.out}: cannot create its folder {folder}: {exc.strerror}") from None
    names, codes = encode_run(args.run_dir, args.inputs, args.split, args.batch_size, show_progress=not args.no_progress)
    buffer = io.BytesIO()
    np.savez(buffer, names=np.array(names), **{f"codes_{v}": c.numpy() for v, c in codes.items()})
    with atomic_write(args.out) as fh:
        fh.write(buffer.getbuffer())
    print(f"{len(names)} images encoded at {', '.join(map(str, codes))} bits -> {args.out}")
    return 0
