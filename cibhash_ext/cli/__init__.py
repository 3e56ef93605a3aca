"""The ``cibhash`` command line (also ``python -m cibhash_ext``): one parser, one error policy.

Subcommands: ``train`` and ``evaluate`` (:mod:`.train`), ``encode`` (:mod:`.encode`), ``index build``
and ``search`` (:mod:`.index`). Each calls the Python API and holds no logic of its own. A user's
mistake (a bad option, a missing or damaged file) is one line on stderr and exit status 2; a bug is
a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from typing import Sequence

from cibhash_ext.cli import encode, index, train

__all__ = ["main", "build_parser", "USER_ERRORS"]

# What a user's input can cause: missing, unreadable or damaged files and invalid values. A
# FloatingPointError is a diverged loss ("lower --lr").
USER_ERRORS = (OSError, ValueError, TypeError, ImportError, FloatingPointError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cibhash",
        description="CIBHash: unsupervised binary hash codes (Qiu et al., IJCAI 2021) - train, evaluate, encode, "
        "index and search.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    train.add_commands(sub)
    encode.add_commands(sub)
    index.add_commands(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(str(text).split()) or type(exc).__name__


def _log_to_console() -> logging.Handler:
    """The library's progress lines on stdout while a command runs (a library call installs none)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("cibhash_ext")
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cibhash`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    handler = _log_to_console()
    try:
        with warnings.catch_warnings():
            # A warning (skipped unreadable files, say) is one line naming the command, not a source line.
            warnings.showwarning = lambda message, *_: print(
                f"cibhash {args.command_name}: warning: {message}", file=sys.stderr)
            return args.handler(args)
    except USER_ERRORS as exc:
        print(f"cibhash {args.command_name}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cibhash {args.command_name}: interrupted (a training run continues with --resume)", file=sys.stderr)
        return 130
    finally:
        logging.getLogger("cibhash_ext").removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
