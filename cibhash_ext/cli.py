"""Command line: ``cibhash train``, ``cibhash evaluate``, ``cibhash encode`` (also ``python -m cibhash_ext``)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Sequence

from cibhash_ext.data import DATASETS
from cibhash_ext.index_cli import COMMANDS as INDEX_COMMANDS
from cibhash_ext.index_cli import add_index_commands
from cibhash_ext.index_cli import run as run_index_command
from cibhash_ext.models import BACKBONES
from cibhash_ext.training import AUGMENT_PRESETS, TrainConfig
from cibhash_ext.transforms import AugmentConfig

PRESETS = ("fashion_mnist", "paper")


def _positive_list(text: str, kind: type, noun: str, example: str) -> tuple:
    try:
        values = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {noun} such as {example}, got {text!r}")
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive {noun}, got {text!r}")
    return values


def _int_list(text: str) -> tuple[int, ...]:
    return _positive_list(text, int, "integers", "16,32,64")


def _float_list(text: str) -> tuple[float, ...]:
    return _positive_list(text, float, "numbers", "0.3 or 0.15,0.1")


def _augment_setting(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    fields = {f.name for f in dataclasses.fields(AugmentConfig)}
    if not sep or key not in fields:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with KEY one of {', '.join(sorted(fields))}, got {text!r}")
    parts = [p for p in value.split(",") if p]
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{key}: expected a number or comma-separated numbers, got {value!r}")
    if key in ("size", "blur_kernel"):
        return key, int(numbers[0])
    return key, tuple(numbers) if len(numbers) > 1 else numbers[0]


def _baselines(text: str) -> tuple[str, ...]:
    if text in ("", "none"):
        return ()
    names = tuple(v.strip() for v in text.split(","))
    if any(n not in ("lsh", "itq") for n in names):
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of lsh,itq or 'none', got {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cibhash",
        description="CIBHash: unsupervised binary hash codes (Qiu et al., IJCAI 2021) - train, evaluate, encode.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    t = sub.add_parser("train", help="train a model, evaluate it against LSH/ITQ, write a run directory and report",
                       description="Train CIBHash without labels, then evaluate retrieval (mAP@K, precision within "
                       "radius 2, precision@N, PR curves) against LSH and ITQ on pixels, and write a report.")
    t.add_argument("--run-dir", help="run directory (default: runs/<dataset>-<time>)")
    t.add_argument("--preset", choices=PRESETS, default="fashion_mnist",
                   help="starting settings that the options below override: 'fashion_mnist' (default; the measured "
                   "CPU recipe of benchmarks/QUALITY.md) or 'paper' (frozen VGG-16, 224x224, batch 64, 60 epochs, "
                   "Adam 1e-3 constant, tau 0.3)")
    t.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint "
                   "(its stored configuration is used; only --threads and --no-progress apply)")
    g = t.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default=None)
    g.add_argument("--data-root", help="dataset folder (fashion_mnist defaults to /usr/share/datasets/fashion-mnist)")
    g.add_argument("--train-size", type=int, help="train on a random subset of this many images")
    g.add_argument("--query-size", type=int, help="keep only the first N queries (quick runs; fashion_mnist)")
    g.add_argument("--database-size", type=int, help="keep only the first N database images (quick runs; fashion_mnist)")
    g.add_argument("--query-per-class", type=int, help="queries per class (cifar10, image_folder)")
    g.add_argument("--train-per-class", type=int, help="training images per class (cifar10, image_folder)")
    g = t.add_argument_group("model")
    g.add_argument("--backbone", choices=BACKBONES, default=None)
    g.add_argument("--backbone-weights", help="local weights file (required for vgg16: a torchvision vgg16 state dict)")
    g.add_argument("--code-lengths", type=_int_list, default=None, metavar="L,L,...",
                   help="code lengths trained jointly on one backbone (default: 16,32,64)")
    g.add_argument("--convnet-widths", type=_int_list, default=None, metavar="C,C,C",
                   help="channels of the convnet's three conv blocks")
    g.add_argument("--convnet-fc", type=int, default=None, help="the convnet's feature width")
    g.add_argument("--mlp-widths", type=_int_list, default=None, metavar="W,W,...",
                   help="hidden widths of the mlp backbone")
    g.add_argument("--hidden", type=int, default=None, help="hash-head hidden width")
    g.add_argument("--deterministic-binary", action="store_true",
                   help="public-code variant: b = 1[z > 0] in training too (same straight-through gradient)")
    g = t.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=None)
    g.add_argument("--batch-size", type=int, default=None,
                   help="images per batch and process (under torchrun the global batch is N processes x this)")
    g.add_argument("--lr", type=float, default=None)
    g.add_argument("--weight-decay", type=float, default=None)
    g.add_argument("--schedule", choices=("onecycle", "constant"), default=None)
    g.add_argument("--temperature", type=_float_list, default=None, metavar="T[,T,...]",
                   help="NT-Xent temperature: one value, or one per code length (default: 0.15 up to 16 bits, 0.1 above; paper 0.3)")
    g.add_argument("--beta", type=float, default=None)
    g.add_argument("--local-negatives", action="store_true",
                   help="under torchrun, contrast only against this process's batch instead of the global batch")
    g.add_argument("--kl-eps", type=float, help="public-code KL form log(p + eps); default: exact KL from logits")
    g.add_argument("--augment-preset", choices=AUGMENT_PRESETS, default=None)
    g.add_argument("--aug", type=_augment_setting, action="append", metavar="KEY=VALUE",
                   help="override one augmentation setting, e.g. --aug erase_p=0.5 --aug crop_scale=0.3,1 (repeatable)")
    g.add_argument("--pipeline", choices=("auto", "batch", "pil"), default=None)
    g.add_argument("--no-bf16", action="store_true", help="train in float32 instead of bfloat16 autocast")
    g.add_argument("--no-channels-last", action="store_true")
    g.add_argument("--seed", type=int, default=None)
    g = t.add_argument_group("evaluation and machine")
    g.add_argument("--topk", type=int, help="K of mAP@K (default: the dataset's protocol)")
    g.add_argument("--baselines", type=_baselines, default=None, metavar="lsh,itq|none")
    g.add_argument("--no-curves", action="store_true", help="skip precision@N and precision-recall curves")
    g.add_argument("--device", default=None, help="cpu or cuda")
    g.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    g.add_argument("--workers", type=int, default=None, help="DataLoader workers (PIL pipeline)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--dist-timeout", type=float, default=1800.0, metavar="SECONDS",
                   help="under torchrun: how long a process waits for the others in a collective before failing")

    e = sub.add_parser("evaluate", help="re-evaluate a run directory's checkpoint and rewrite its metrics and report",
                       description="Re-evaluate the model of a run directory and rewrite metrics.json and report.md.")
    e.add_argument("run_dir", help="a run directory written by cibhash train")
    e.add_argument("--threads", type=int)
    e.add_argument("--no-progress", action="store_true")

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
    add_index_commands(sub)
    return parser


# Command-line option -> TrainConfig field, for the options that map one to one.
_FIELDS = (
    "dataset", "data_root", "train_size", "query_size", "database_size", "query_per_class", "train_per_class",
    "backbone", "backbone_weights", "convnet_widths", "convnet_fc", "mlp_widths", "code_lengths", "hidden", "epochs",
    "batch_size", "lr", "weight_decay", "schedule", "temperature", "beta", "kl_eps", "augment_preset", "pipeline",
    "device", "threads", "workers", "seed", "topk", "baselines",
)


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    base = TrainConfig.paper() if args.preset == "paper" else TrainConfig()
    changes = {name: getattr(args, name) for name in _FIELDS if getattr(args, name) is not None}
    if args.aug:
        changes["augment"] = {**base.augment, **dict(args.aug)}
    flags = {"stochastic": not args.deterministic_binary, "bf16": not args.no_bf16,
             "channels_last": not args.no_channels_last, "eval_curves": not args.no_curves,
             "progress": not args.no_progress, "global_batch": not args.local_negatives}
    changes.update({k: v for k, v in flags.items() if v is False})
    return dataclasses.replace(base, **changes)


def _cmd_train(args: argparse.Namespace) -> int:
    """Trains in this process, or as one of the processes ``torchrun`` started (WORLD_SIZE > 1)."""
    from cibhash_ext import distributed
    from cibhash_ext.training import load_run_config, train

    if args.resume:
        if not args.run_dir:
            raise ValueError("--resume needs --run-dir, the run directory to continue")
        cfg = load_run_config(args.run_dir)
        cfg.threads, cfg.progress = args.threads or cfg.threads, not args.no_progress
    else:
        cfg = _config_from_args(args)
    if not args.run_dir and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("under torchrun give --run-dir: the processes must agree on one run directory")
    run_dir = args.run_dir or os.path.join("runs", f"{cfg.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
    joined = distributed.init_from_env(cfg.device, args.dist_timeout)
    is_main = distributed.rank() == 0
    try:
        train(cfg, run_dir, resume=args.resume)
    finally:
        if joined:
            import torch.distributed as dist

            dist.destroy_process_group()
    if is_main:
        print(f"run directory: {run_dir}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from cibhash_ext.training import evaluate

    evaluate(args.run_dir, threads=args.threads, progress_bars=not args.no_progress)
    print(f"metrics and report rewritten in {args.run_dir}")
    return 0


def _cmd_encode(args: argparse.Namespace) -> int:
    import numpy as np

    from cibhash_ext.training import encode_run

    if not args.out.endswith(".npz"):
        raise ValueError(f"--out must name a .npz file, got {args.out!r}")
    names, codes = encode_run(args.run_dir, args.inputs, args.split, args.batch_size, args.threads,
                              not args.no_progress)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez(args.out, names=np.array(names), **{f"codes_{v}": c.numpy() for v, c in codes.items()})
    print(f"{len(names)} images encoded at {', '.join(map(str, codes))} bits -> {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cibhash`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in INDEX_COMMANDS:
        return run_index_command(args)
    handler = {"train": _cmd_train, "evaluate": _cmd_evaluate, "encode": _cmd_encode}[args.command]
    try:
        return handler(args)
    except (FileNotFoundError, FileExistsError, ValueError, ImportError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"cibhash {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cibhash {args.command}: interrupted (a training run continues with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
