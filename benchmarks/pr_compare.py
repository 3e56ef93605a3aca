"""A run's radius-sweep precision-recall curves against a baseline's, at fixed recall levels
(issue 25): how many levels CIBHash is above, by how much at least, and where it falls below.

    python benchmarks/pr_compare.py RUN [--baseline itq] [--levels 80] [--max-recall 0.8] [--json OUT]

The curves are the ones a run stores in its ``metrics.json`` (``pr_curve``: precision and recall of
"everything within Hamming radius r" for r = 0 .. nbits, see
:func:`cibhash_ext.evaluation.precision_recall_curve`; a run trained with ``--baselines itq`` holds
ITQ's too). A curve is known only at its nbits + 1 radii, so precision at a recall level is read off
it by linear interpolation between the two radii whose recalls enclose the level; below the first
radius that retrieves anything it is that radius's precision, and past the curve's last recall it
is undefined (the level is left out). Levels are ``max_recall * i / levels`` for i = 1 .. levels
(the README's "80 recall levels 0.01-0.80").
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from cibhash_ext.files import read_json, write_json


def precision_at_recall(curve: dict, levels: np.ndarray) -> np.ndarray:
    """Precision of a radius-sweep curve at each recall level (NaN past the curve's largest recall).

    Args:
        curve (dict): ``precision`` and ``recall`` lists, one entry per radius 0 .. nbits.
        levels (np.ndarray[L], float): recall levels.

    Returns:
        np.ndarray[L], float64.
    """
    recall = np.asarray(curve["recall"], dtype=np.float64)
    precision = np.asarray(curve["precision"], dtype=np.float64)
    # Radii that retrieve nothing relevant carry no point; a radius that adds no recall repeats the
    # smaller radius's recall with a lower precision: keep the first of each recall.
    keep = recall > 0
    recall, precision = recall[keep], precision[keep]
    recall, first = np.unique(recall, return_index=True)
    precision = precision[first]
    out = np.interp(levels, recall, precision)
    out[levels > recall[-1]] = np.nan
    return out


def compare(metrics: dict, baseline: str, levels: np.ndarray) -> dict[str, dict]:
    """Per code length: CIBHash's and the baseline's precision at each level and their comparison."""
    if baseline not in metrics:
        raise ValueError(f"the run has no {baseline!r} results (train it with --baselines {baseline}); "
                         f"it has {sorted(k for k in metrics if isinstance(metrics[k], dict))}")
    out = {}
    for length in sorted(metrics["cibhash"], key=int):
        ours = metrics["cibhash"][length].get("pr_curve")
        theirs = metrics[baseline].get(length, {}).get("pr_curve")
        if ours is None or theirs is None:
            continue
        p_ours, p_theirs = precision_at_recall(ours, levels), precision_at_recall(theirs, levels)
        known = ~(np.isnan(p_ours) | np.isnan(p_theirs))
        diff = p_ours - p_theirs
        above = known & (diff > 0)
        below = known & (diff <= 0)
        out[length] = {
            "levels": int(known.sum()),
            "above": int(above.sum()),
            "min_margin_above": float(diff[above].min()) if above.any() else None,
            "first_recall_not_above": float(levels[below][0]) if below.any() else None,
            "max_deficit": float(-diff[below].min()) if below.any() else None,
            "recall": levels.tolist(),
            "cibhash": p_ours.tolist(),
            baseline: p_theirs.tolist(),
        }
    if not out:
        raise ValueError("the run's metrics.json holds no pr_curve for both methods at any code length")
    return out


def _table(result: dict, baseline: str, max_recall: float) -> str:
    rows = [f"| code length | levels above {baseline.upper()} | least margin above | first recall not above | "
            "largest deficit |", "|---|---|---|---|---|"]
    for length, r in result.items():
        fmt = lambda v, d=3: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
        rows.append(f"| {length} bits | {r['above']} / {r['levels']} | {fmt(r['min_margin_above'])} | "
                    f"{fmt(r['first_recall_not_above'], 2)} | {fmt(r['max_deficit'])} |")
    return "\n".join(rows) + f"\n\n(recall levels up to {max_recall})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run directory (its metrics.json)")
    parser.add_argument("--baseline", default="itq", help="the method to compare with (default itq)")
    parser.add_argument("--levels", type=int, default=80, help="number of recall levels (default 80)")
    parser.add_argument("--max-recall", type=float, default=0.8, help="the largest recall level (default 0.8)")
    parser.add_argument("--json", help="also write the comparison, with every level, to this JSON file")
    args = parser.parse_args(argv)
    try:
        if args.levels < 1 or not 0 < args.max_recall <= 1:
            raise ValueError(f"expected --levels >= 1 and 0 < --max-recall <= 1, got {args.levels} and {args.max_recall}")
        metrics = read_json(os.path.join(args.run, "metrics.json"), "metrics file")
        levels = args.max_recall * np.arange(1, args.levels + 1) / args.levels
        result = compare(metrics, args.baseline, levels)
    except (FileNotFoundError, ValueError) as exc:
        print(f"pr_compare: error: {exc}", file=sys.stderr)
        return 2
    print(_table(result, args.baseline, args.max_recall))
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
