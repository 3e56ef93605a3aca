"""benchmarks/seed_spread.py: the mean and standard deviation of runs that differ only in their seed."""

import json
import statistics

import pytest
from conftest import load_benchmark

seed_spread = load_benchmark("seed_spread")


def fake_run(root, name, seed, maps, **settings):
    run = root / name
    run.mkdir()
    config = {"seed": seed, "epochs": 40, "lr": 0.001, "run_dir": str(run), "threads": 1, **settings}
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.json").write_text(json.dumps({"cibhash": {bits: {"map": m} for bits, m in maps.items()}}))
    return run


def test_the_table_gives_each_seed_the_mean_and_the_sample_deviation(tmp_path):
    maps = [{"16": 0.77, "64": 0.79}, {"16": 0.76, "64": 0.80}, {"16": 0.78, "64": 0.785}]
    runs = [fake_run(tmp_path, f"s{i}", i, m) for i, m in enumerate(maps)]
    rows = {line.split(" | ")[0].strip("| "): line.strip("| ").split(" | ")[1:]
            for line in seed_spread.table(runs).splitlines()[2:]}
    assert rows["0"] == ["0.7700", "0.7900"] and rows["2"] == ["0.7800", "0.7850"]
    assert rows["mean"] == [f"{statistics.mean([0.77, 0.76, 0.78]):.4f}", f"{statistics.mean([0.79, 0.80, 0.785]):.4f}"]
    assert rows["std (n - 1)"] == ["0.0100", f"{statistics.stdev([0.79, 0.80, 0.785]):.4f}"]
    assert rows["max - min"] == ["0.0200", "0.0150"]


def test_runs_that_differ_in_a_setting_are_refused(tmp_path):
    a = fake_run(tmp_path, "a", 0, {"16": 0.7})
    b = fake_run(tmp_path, "b", 1, {"16": 0.7}, lr=0.002)
    with pytest.raises(seed_spread.SpreadError, match="differ in more than their seed: lr"):
        seed_spread.table([a, b])


def test_a_setting_a_run_predates_counts_as_its_default(tmp_path):
    old = fake_run(tmp_path, "old", 0, {"16": 0.7})  # written before convnet_head existed
    new = fake_run(tmp_path, "new", 1, {"16": 0.7}, convnet_head="flatten")
    assert "| 1 | 0.7000 |" in seed_spread.table([old, new])
    pooled = fake_run(tmp_path, "pooled", 2, {"16": 0.7}, convnet_head="pool")
    with pytest.raises(seed_spread.SpreadError, match="convnet_head"):
        seed_spread.table([old, pooled])


def test_an_unfinished_run_is_one_line_and_exit_2(tmp_path, capsys):
    done = fake_run(tmp_path, "done", 0, {"16": 0.7})
    running = tmp_path / "running"
    running.mkdir()
    (running / "config.json").write_text("{}")
    with pytest.raises(SystemExit) as exit_:
        seed_spread.main([str(done), str(running)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert "expected a finished run directory with metrics.json" in err and "running" in err
