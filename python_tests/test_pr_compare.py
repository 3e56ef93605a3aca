"""benchmarks/pr_compare.py: precision at recall levels read off radius-sweep curves, on curves whose
interpolated values are worked out by hand."""

import json

import numpy as np
import pytest
from conftest import load_benchmark


@pytest.fixture(scope="module")
def pr_compare():
    return load_benchmark("pr_compare")


# Ours: radius 0 retrieves nothing relevant (left out), radius 2 adds no recall (its lower precision
# is left out). ITQ's curve ends at recall 0.9.
OURS = {"recall": [0.0, 0.2, 0.2, 0.6, 1.0], "precision": [0.0, 0.9, 0.85, 0.74, 0.1]}
ITQ = {"recall": [0.1, 0.5, 0.9], "precision": [0.8, 0.8, 0.2]}


def _metrics_file(tmp_path) -> str:
    metrics = {"cibhash": {"16": {"pr_curve": OURS, "map": 0.5}}, "itq": {"16": {"pr_curve": ITQ}}, "lsh": {"16": {}}}
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps(metrics))
    return str(run)


def test_precision_at_recall_by_hand(pr_compare):
    levels = np.arange(1, 9) / 10
    np.testing.assert_allclose(pr_compare.precision_at_recall(OURS, levels),
                               [0.9, 0.9, 0.86, 0.82, 0.78, 0.74, 0.58, 0.42])
    np.testing.assert_allclose(pr_compare.precision_at_recall(ITQ, levels), [0.8, 0.8, 0.8, 0.8, 0.8, 0.65, 0.5, 0.35])
    assert np.isnan(pr_compare.precision_at_recall(ITQ, np.array([0.95]))).all()


def test_comparison_counts_levels_above_and_names_the_first_one_below(pr_compare, tmp_path, capsys):
    run = _metrics_file(tmp_path)
    out = tmp_path / "pr.json"
    assert pr_compare.main([run, "--levels", "8", "--max-recall", "0.8", "--json", str(out)]) == 0
    result = json.loads(out.read_text())["16"]
    # Differences: .10 .10 .06 .02 -.02 .09 .08 .07
    assert (result["levels"], result["above"]) == (8, 7)
    assert result["min_margin_above"] == pytest.approx(0.02)
    assert result["first_recall_not_above"] == pytest.approx(0.5)
    assert result["max_deficit"] == pytest.approx(0.02)
    assert "| 16 bits | 7 / 8 | 0.020 | 0.50 | 0.020 |" in capsys.readouterr().out
    # Levels past ITQ's largest recall (0.9) are left out.
    assert pr_compare.main([run, "--levels", "10", "--max-recall", "1.0", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["16"]["levels"] == 9


def test_errors_are_one_line(pr_compare, tmp_path, capsys):
    run = _metrics_file(tmp_path)
    assert pr_compare.main([str(tmp_path / "nothing")]) == 2
    assert pr_compare.main([run, "--baseline", "pca"]) == 2
    assert pr_compare.main([run, "--levels", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("pr_compare: error: ") for line in err)
    assert "--baselines pca" in err[1]
