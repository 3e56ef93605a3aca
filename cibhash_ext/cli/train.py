"""``cibhash train`` and ``cibhash evaluate``. The training options are generated from the fields of
:class:`~cibhash_ext.config.TrainConfig` (name, type, help), so a setting is declared once."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import typing

from cibhash_ext.backbones import is_hub_backbone
from cibhash_ext.cli.common import positive_list, set_threads
from cibhash_ext.config import TrainConfig, choices, load_config
from cibhash_ext.data import DATASETS
from cibhash_ext.models import CUSTOM_BACKBONE
from cibhash_ext.transforms import AugmentConfig

__all__ = ["add_commands", "config_from_args"]

# --preset, the older spelling of --recipe: "paper" is --recipe paper, "fashion_mnist" the default.
_PRESETS = ("fashion_mnist", "paper")
# Older spellings of the boolean switches, kept working.
_ALIASES = {"stochastic": "--deterministic-binary", "eval_curves": "--no-curves", "global_batch": "--local-negatives"}
_GROUPS = {
    "data": ("dataset", "data_root", "train_size", "query_size", "database_size", "query_per_class", "train_per_class",
             "validation"),
    "model": ("backbone", "backbone_weights", "backbone_frozen", "convnet_widths", "convnet_fc", "convnet_head",
              "mlp_widths", "code_lengths", "hidden", "stochastic"),
    "recipe": ("recipe",),
    "evaluation and machine": ("topk", "baselines", "eval_curves", "evaluate", "device", "threads", "workers",
                               "progress"),
}


def _field_help() -> dict[str, str]:
    """Each field's help text, from the Attributes section of TrainConfig's docstring."""
    helps: dict[str, str] = {}
    names: list[str] = []
    for line in TrainConfig.__doc__.split("Attributes:")[1].splitlines():
        match = re.match(r"\s{8}([\w, ]+) \(([^)]*)\): (.*)", line)
        if match:
            names = [n.strip() for n in match.group(1).split(",")]
            for n in names:
                helps[n] = match.group(3)
        elif line.strip() and names:
            for n in names:
                helps[n] += " " + line.strip()
    plain = {k: re.sub(r":\w+:`~?([^`]*)`", r"\1", v).replace("``", "") for k, v in helps.items()}
    return {k: v.replace("%", "%%") for k, v in plain.items()}


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
    if not numbers:
        raise argparse.ArgumentTypeError(f"{key}: expected a value after '=', got {text!r}")
    if key in ("size", "blur_kernel"):
        return key, int(numbers[0])
    return key, tuple(numbers) if len(numbers) > 1 else numbers[0]


def _names(valid: tuple[str, ...]):
    """The argparse type of a comma-separated list of names among ``valid`` (or 'none': no name)."""
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(v.strip() for v in text.split(",") if v.strip()) if text != "none" else ()
        if any(n not in valid for n in names):
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(valid)} or 'none', "
                                             f"got {text!r}")
        return names
    return parse


def _baselines(text: str) -> tuple[str, ...]:
    if text in ("", "none"):
        return ()
    names = tuple(v.strip() for v in text.split(","))
    if any(n not in choices("baselines") for n in names):
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of lsh,itq or 'none', got {text!r}")
    return names


class _BackboneChoices(tuple):
    """The closed backbone names, and any "torchvision:NAME" or "timm:NAME" (TrainConfig.validate checks NAME)."""

    def __contains__(self, value) -> bool:
        return is_hub_backbone(value) or super().__contains__(value)


def _argument(field: dataclasses.Field, hint) -> tuple[list[str], dict]:
    """The add_argument flags and keywords of one TrainConfig field."""
    flag = "--" + field.name.replace("_", "-")
    # "X | None" is an option of type X (leaving it out keeps None).
    optional = [a for a in typing.get_args(hint) if a is not type(None)] if type(None) in typing.get_args(hint) else []
    base = optional[0] if optional else hint
    if base is bool:
        return [flag], {"action": argparse.BooleanOptionalAction}
    if field.name == "augment":
        return ["--aug"], {"type": _augment_setting, "action": "append", "metavar": "KEY=VALUE"}
    if field.name == "baselines":
        return [flag], {"type": _baselines, "metavar": "lsh,itq|none"}
    if field.name == "recipe":
        return [flag], {"type": _names(choices("recipe")), "metavar": "NAME[,NAME]|none"}
    if typing.get_origin(base) is tuple:
        kind = typing.get_args(base)[0]
        noun, example = ("integers", "16,32,64") if kind is int else ("numbers", "0.3 or 0.15,0.1")
        return [flag], {"type": positive_list(kind, noun, example), "metavar": "V[,V,...]"}
    if field.name == "dataset":  # Python data ("tensor", "dataset") cannot be named on a command line
        return [flag], {"type": str, "choices": DATASETS}
    closed = [c for c in choices(field.name) if c != CUSTOM_BACKBONE]  # a custom backbone is a Python module
    if field.name == "backbone":
        return [flag], {"type": str, "choices": _BackboneChoices(closed),
                        "metavar": "{" + ",".join(closed) + ",torchvision:NAME,timm:NAME}"}
    return [flag], {"type": str, "choices": closed} if closed else {"type": base}


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    helps, hints = _field_help(), typing.get_type_hints(TrainConfig)
    grouped = {name: group for group, names in _GROUPS.items() for name in names}
    groups = {g: parser.add_argument_group(g) for g in (*_GROUPS, "optimisation")}
    for field in dataclasses.fields(TrainConfig):
        flags, keywords = _argument(field, hints[field.name])
        group = groups[grouped.get(field.name, "optimisation")]
        default = field.default if field.default is not dataclasses.MISSING else None
        shown = f" (default: {default})" if default not in (None, "") and field.name != "augment" else ""
        group.add_argument(*flags, dest=field.name, default=argparse.SUPPRESS, help=helps.get(field.name, "") + shown,
                           **keywords)
        if field.name in _ALIASES:
            group.add_argument(_ALIASES[field.name], dest=field.name, action="store_false", default=argparse.SUPPRESS,
                               help=f"the same as --no-{field.name.replace('_', '-')}")


def add_commands(sub) -> None:
    t = sub.add_parser("train", help="train a model, evaluate it, write a run directory and report",
                       description="Train CIBHash without labels, then evaluate retrieval: with labels mAP@K, precision "
                       "within radius 2, precision@N and PR curves; without labels augmented-copy retrieval and code "
                       "statistics; against LSH and ITQ on pixels. Options override --config FILE, which overrides "
                       "the recipes (--recipe; default: the dataset's).")
    t.add_argument("--run-dir", help="run directory (default: runs/<dataset>-<time>)")
    base = t.add_mutually_exclusive_group()
    base.add_argument("--config", metavar="FILE", help="a JSON configuration (a run's config.json is one); the "
                      "options below override it")
    base.add_argument("--preset", choices=_PRESETS, default="fashion_mnist",
                      help="the older spelling of --recipe: 'paper' is --recipe paper, 'fashion_mnist' the default "
                      "(the dataset's recipe)")
    t.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint "
                   "(with its stored configuration; only --threads, --workers, --progress, --eval-curves and "
                   "--evaluate may change)")
    t.add_argument("--force", action="store_true", help="write a new run into a non-empty folder that is not a run")
    t.add_argument("--dist-timeout", type=float, default=1800.0, metavar="SECONDS",
                   help="under torchrun: how long a process waits for the others in a collective before failing")
    _add_config_options(t)
    t.set_defaults(handler=_cmd_train, command_name="train")

    e = sub.add_parser("evaluate", help="re-evaluate a run directory's model and rewrite its metrics and report",
                       description="Re-evaluate the model of a run directory and rewrite metrics.json and report.md.")
    e.add_argument("run_dir", help="a run directory written by cibhash train")
    e.add_argument("--threads", type=int)
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(handler=_cmd_evaluate, command_name="evaluate")


_RUN_OPTIONS = ("run_dir", "config", "preset", "resume", "force", "dist_timeout", "handler", "command_name", "command")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The configuration a ``train`` command line describes: the options over --config FILE over the recipes."""
    overrides = {k: v for k, v in vars(args).items() if k not in _RUN_OPTIONS}
    if getattr(args, "preset", None) == "paper":
        overrides.setdefault("recipe", ("paper",))
    if "augment" in overrides:
        overrides["augment"] = dict(overrides["augment"])
    if args.resume:
        from cibhash_ext.run_dir import load_run_config

        base = load_run_config(args.run_dir).to_dict()
    else:
        base = getattr(args, "config", None)
    if base is not None and "augment" in overrides:
        stored = load_config(base).augment
        overrides["augment"] = {**stored, **overrides["augment"]}
    return load_config(base, **overrides)


def _cmd_train(args: argparse.Namespace) -> int:
    """Trains in this process, or as one of the processes ``torchrun`` started (WORLD_SIZE > 1)."""
    from cibhash_ext import distributed
    from cibhash_ext.training import train

    if args.resume and not args.run_dir:
        raise ValueError("--resume needs --run-dir, the run directory to continue")
    if not args.run_dir and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("under torchrun give --run-dir: the processes must agree on one run directory")
    cfg = config_from_args(args)
    joined = distributed.init_from_env(cfg.device, args.dist_timeout)
    is_main = distributed.rank() == 0
    try:
        result = train(cfg, run_dir=args.run_dir, resume=args.resume, force=args.force)
    finally:
        if joined:
            import gc

            import torch.distributed as dist

            # Objects of the run caught in reference cycles (autograd state that holds gloo work) must
            # go while the interpreter is alive: freed at its finalization, they aborted the process
            # at exit now and then (2 torchrun runs in 18 with the feature loss on; 0 in 30 after this).
            gc.collect()
            dist.destroy_process_group()
    if is_main:
        print(f"run directory: {result.run_dir}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from cibhash_ext.run_eval import evaluate

    set_threads(args.threads)
    evaluate(args.run_dir, progress_bars=not args.no_progress)
    print(f"metrics and report rewritten in {args.run_dir}")
    return 0
