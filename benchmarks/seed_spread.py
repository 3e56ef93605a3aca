"""The seed spread of a recipe (issue 25): mAP@1000 per code length of runs that differ only in their
seed, with the mean and the sample standard deviation, as a markdown table.

    python -m cibhash_ext train --validation --seed S --threads 1 --no-progress --run-dir RUN_S   # S = 0, 1, 2
    python benchmarks/seed_spread.py RUN_0 RUN_1 RUN_2

Each run directory's metrics.json holds its mAP; config.json its seed. The runs must share every
other setting (checked: the resolved configs may differ in the seed, the run directory and the
thread count only), or the spread would measure the settings too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

from cibhash_ext.config import TrainConfig

# Settings that may differ between the runs of one spread: none changes what is trained.
IGNORED = {"seed", "run_dir", "threads", "progress", "workers"}


class SpreadError(ValueError):
    """Runs that cannot make a seed spread: one line for the user."""


def load(run: Path) -> tuple[dict, dict[str, float]]:
    for name in ("config.json", "metrics.json"):
        if not (run / name).is_file():
            raise SpreadError(f"expected a finished run directory with {name}, got {str(run)!r}")
    config = json.loads((run / "config.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    return config, {bits: entry["map"] for bits, entry in metrics["cibhash"].items()}


def same_recipe(configs: list[dict]) -> list[str]:
    """The settings that differ between the configs, apart from IGNORED. A setting a run does not
    record (it predates the setting) has its default, as when the run is loaded."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    keys = set().union(*configs) - IGNORED
    return sorted(key for key in keys
                  if len({json.dumps(c.get(key, defaults.get(key)), sort_keys=True) for c in configs}) > 1)


def table(runs: list[Path]) -> str:
    loaded = [load(run) for run in runs]
    differ = same_recipe([config for config, _ in loaded])
    if differ:
        raise SpreadError(f"the runs differ in more than their seed: {', '.join(differ)}")
    lengths = sorted(loaded[0][1], key=int)
    lines = ["| seed | " + " | ".join(f"{bits} bits" for bits in lengths) + " |",
             "|---|" + "---:|" * len(lengths)]
    for config, maps in loaded:
        lines.append(f"| {config['seed']} | " + " | ".join(f"{maps[b]:.4f}" for b in lengths) + " |")
    columns = [[maps[b] for _, maps in loaded] for b in lengths]
    lines.append("| mean | " + " | ".join(f"{statistics.mean(c):.4f}" for c in columns) + " |")
    if len(loaded) > 1:
        lines.append("| std (n - 1) | " + " | ".join(f"{statistics.stdev(c):.4f}" for c in columns) + " |")
        lines.append("| max - min | " + " | ".join(f"{max(c) - min(c):.4f}" for c in columns) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories of the same recipe, one per seed")
    try:
        print(table(parser.parse_args(argv).runs))
    except SpreadError as error:
        print(f"seed_spread.py: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
