"""Tests of the command line: --help of every command, error paths, and encode on a tiny run."""

import csv
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from cibhash_ext import ops
from cibhash_ext.cli import main
from cibhash_ext.data import FASHION_MNIST_FILES, FASHION_MNIST_ROOT

HAVE_FASHION = all(os.path.isfile(os.path.join(FASHION_MNIST_ROOT, f)) for f in FASHION_MNIST_FILES)


@pytest.mark.parametrize("command,expected", [
    ([], "train"), (["train"], "--resume"), (["evaluate"], "run_dir"), (["encode"], "--split"),
])
def test_help(command, expected, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    assert expected in capsys.readouterr().out


def test_python_dash_m_works():
    out = subprocess.run([sys.executable, "-m", "cibhash_ext", "train", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "--code-lengths" in out.stdout


@pytest.mark.parametrize("argv,message", [
    (["train", "--data-root", "/nonexistent/fashion"], "apt-get install dataset-fashion-mnist"),
    (["train", "--dataset", "cifar10"], "needs --data-root"),
    (["train", "--backbone", "vgg16", "--backbone-weights", "/nonexistent/vgg16.pth", "--data-root", "/nonexistent"],
     "not found"),
    (["train", "--resume"], "--resume needs --run-dir"),
    (["train", "--resume", "--run-dir", "/nonexistent/run"], "not a run directory"),
    (["evaluate", "/nonexistent/run"], "not a run directory"),
    (["encode", "/nonexistent/run", "--split", "query", "--out", "x.npz"], "not a run directory"),
    (["encode", "/nonexistent/run", "--out", "x.npz"], "either image files"),
    (["encode", "/nonexistent/run", "--split", "query", "--out", "x.txt"], ".npz"),
])
def test_error_paths_exit_2_with_a_message(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cibhash {argv[0]}: error:") and message in err
    assert not os.path.exists(tmp_path / "runs")  # a failed start leaves no run directory behind


@pytest.mark.parametrize("argv,message", [
    (["train", "--code-lengths", "16,x"], "comma-separated integers"),
    (["train", "--aug", "rotate=3"], "KEY=VALUE"),
    (["train", "--baselines", "pca"], "subset of lsh,itq"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(not HAVE_FASHION, reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_train_evaluate_encode_round_trip(tmp_path, capsys):
    run = str(tmp_path / "run")
    args = ["train", "--run-dir", run, "--train-size", "256", "--query-size", "50", "--database-size", "300",
            "--epochs", "1", "--batch-size", "128", "--code-lengths", "16,32", "--no-curves", "--baselines", "none",
            "--no-progress", "--threads", "1", "--aug", "erase_p=0.25"]
    assert main(args) == 0
    assert main(args) == 2 and "--resume" in capsys.readouterr().err  # the run directory is taken
    metrics = json.loads(open(os.path.join(run, "metrics.json")).read())
    # --resume of a finished run reuses the stored configuration and reproduces the evaluation.
    assert main(["train", "--resume", "--run-dir", run, "--no-progress"]) == 0
    again = json.loads(open(os.path.join(run, "metrics.json")).read())
    assert again["cibhash"]["32"]["map"] == metrics["cibhash"]["32"]["map"]
    assert main(["evaluate", run, "--no-progress"]) == 0
    out = str(tmp_path / "codes" / "query.npz")
    assert main(["encode", run, "--split", "query", "--out", out, "--no-progress"]) == 0
    split_codes = np.load(out)
    assert split_codes["codes_16"].shape == (50, 2) and split_codes["codes_32"].shape == (50, 4)
    # Encoding the same images from PNG files gives the same codes as encoding the split.
    from cibhash_ext.data import load_fashion_mnist

    query = load_fashion_mnist(query_size=3).query
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(query.images[i, 0].numpy()).save(folder / f"{i}.png")
    out_files = str(tmp_path / "files.npz")
    assert main(["encode", run, str(folder), "--out", out_files, "--no-progress"]) == 0
    file_codes = np.load(out_files)
    assert list(file_codes["names"]) == [str(folder / f"{i}.png") for i in range(3)]
    assert np.array_equal(file_codes["codes_32"], split_codes["codes_32"][:3])
    # The codes file is in the search ops' layout.
    dist, _ = ops.hamming_topk(torch.from_numpy(file_codes["codes_32"]), torch.from_numpy(split_codes["codes_32"]), 1)
    assert dist[:, 0].tolist() == [0, 0, 0]
    assert main(["encode", run, str(tmp_path / "missing.png"), "--out", out_files]) == 2

    # index build from the run: an image folder (names kept beside the index) and a split of its dataset.
    index_path = str(tmp_path / "images.idx")
    assert main(["index", "build", "--run", run, str(folder), "-o", index_path, "--nbits", "32", "--no-progress"]) == 0
    assert main(["search", index_path, out_files, "--key", "codes_32", "-k", "1", "--names", "--format", "json"]) == 0
    found = json.loads(capsys.readouterr().out.splitlines()[-1])["results"]
    assert [(r["names"], r["distances"]) for r in found] == [([str(folder / f"{i}.png")], [0]) for i in range(3)]
    db_index = str(tmp_path / "database.idx")
    assert main(["index", "build", "--run", run, "--split", "database", "-o", db_index, "--no-progress"]) == 0
    from cibhash_ext.index import HammingIndex

    built = HammingIndex.load(db_index)
    assert (built.nbits, len(built)) == (32, 300)  # the run's longest code length by default
    assert main(["encode", run, "--split", "database", "--out", str(tmp_path / "db.npz"), "--no-progress"]) == 0
    assert np.array_equal(built.codes.numpy(), np.load(tmp_path / "db.npz")["codes_32"])
    capsys.readouterr()
    assert main(["index", "build", "--run", run, "--split", "database", "-o", db_index, "--nbits", "24"]) == 2
    assert "not a code length of the run" in capsys.readouterr().err
    # A split's images are named by their position in it.
    assert main(["search", db_index, out_files, "--key", "codes_32", "-k", "2", "--names"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 6 and all(row["name"] == row["id"] for row in rows)
    assert main(["search", str(tmp_path / "a_copy.idx"), out_files, "--key", "codes_32", "-k", "1"]) == 2
    shutil.copy(db_index, tmp_path / "a_copy.idx")
    assert main(["search", str(tmp_path / "a_copy.idx"), out_files, "--key", "codes_32", "-k", "1", "--names"]) == 2
    assert "a_copy.idx.names.json' does not exist" in capsys.readouterr().err


def test_presets_and_overrides():
    from cibhash_ext.cli import build_parser
    from cibhash_ext.cli.train import config_from_args as _config_from_args

    parse = build_parser().parse_args
    default = _config_from_args(parse(["train"]))
    assert default == _config_from_args(parse(["train", "--preset", "fashion_mnist"]))
    paper = _config_from_args(parse(["train", "--preset", "paper", "--epochs", "3", "--aug", "erase_p=0.1", "--no-bf16"]))
    assert (paper.backbone, paper.batch_size, paper.schedule, paper.temperature, paper.epochs) == ("vgg16", 64, "constant", (0.3,), 3)
    assert paper.augment == {"erase_p": 0.1} and paper.bf16 is False
    custom = _config_from_args(parse(["train", "--code-lengths", "8,24", "--temperature", "0.5", "--deterministic-binary"]))
    assert custom.code_lengths == (8, 24) and custom.temperature == (0.5,) and custom.stochastic is False
    assert _config_from_args(parse(["train", "--temperature", "0.2,0.1", "--code-lengths", "16,64"])).temperature_for(64) == 0.1
    assert custom.backbone == default.backbone
