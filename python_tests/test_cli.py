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
    (["train", "--aug", "twirl=3"], "KEY=VALUE"),
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


# --- one parser, one config, one error policy; hostile run directories (a tiny run on a folder of PNGs) ---

TINY_FLAGS = ["--backbone", "convnet", "--epochs", "1", "--batch-size", "16", "--code-lengths", "16,32", "--hidden", "32", "--convnet-widths",
              "8,8,8", "--convnet-fc", "32", "--aug", "size=16", "--no-progress", "--threads", "1", "--baselines", "none"]


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(1)
    (root / "photos").mkdir()
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / "photos" / f"{i:02d}.png")
    run = root / "run"
    assert main(["train", "--dataset", "folder", "--data-root", str(root / "photos"), "--run-dir", str(run),
                 *TINY_FLAGS]) == 0
    return root, run


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith(f"cibhash {command}: error: "), err
    return err


def test_config_file_with_flags_on_top(folder_run, tmp_path, capsys):
    root, run = folder_run
    stored = json.loads((run / "config.json").read_text())
    assert (stored["dataset"], stored["epochs"], stored["code_lengths"]) == ("folder", 1, [16, 32])
    again = tmp_path / "again"
    assert main(["train", "--config", str(run / "config.json"), "--run-dir", str(again), "--code-lengths", "8",
                 "--no-progress"]) == 0
    second = json.loads((again / "config.json").read_text())
    assert second["code_lengths"] == [8] and {k: v for k, v in second.items() if k not in ("code_lengths", "resolved")} \
        == {k: v for k, v in stored.items() if k not in ("code_lengths", "resolved")}


def test_train_options_come_from_the_config_fields():
    import dataclasses

    from cibhash_ext.config import TrainConfig

    help_text = build_parser_help("train")
    for field in dataclasses.fields(TrainConfig):
        flag = "--aug" if field.name == "augment" else "--" + field.name.replace("_", "-")
        assert flag in help_text, flag


def test_closed_choices_are_declared_once_and_read_by_the_checks_and_the_cli():
    """Each Literal setting: the command line offers exactly its values (a custom backbone is a Python
    module, so not offered), and the config refuses any other value, naming the setting."""
    from cibhash_ext.cli import build_parser
    from cibhash_ext.config import TrainConfig, choices

    train_parser = build_parser()._subparsers._group_actions[0].choices["train"]
    offered = {action.dest: tuple(action.choices) for action in train_parser._actions if action.choices}
    for name in ("backbone", "schedule", "augment_preset", "pipeline"):
        assert offered[name] == tuple(c for c in choices(name) if c != "custom"), name
        with pytest.raises(ValueError, match=f"{name} must be one of"):
            TrainConfig(**{name: "nonsense"})
    assert choices("baselines") == ("lsh", "itq") and choices("epochs") == ()
    assert offered["dataset"] == tuple(c for c in choices("dataset") if c not in ("tensor", "dataset"))


def build_parser_help(command: str) -> str:
    from cibhash_ext.cli import build_parser

    parser = build_parser()
    return parser._subparsers._group_actions[0].choices[command].format_help()


@pytest.mark.parametrize("argv,message", [
    (["train", "--dataset", "coco", "--data-root", "/nonexistent", "--train-size", "1000"], "does not use train_size"),
    (["train", "--threads", "-1"], "threads must be >= 1"),
    (["train", "--epochs", "0"], "epochs must be >= 1"),
    (["train", "--config", "/nonexistent/cfg.json"], "config file /nonexistent/cfg.json does not exist"),
])
def test_user_mistakes_in_train_are_one_line_errors(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in _one_line_error(capsys, "train")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_a_gpu_is_a_one_line_error(capsys, tmp_path, folder_run):
    root, _ = folder_run
    assert main(["train", "--dataset", "folder", "--data-root", str(root / "photos"), "--run-dir", str(tmp_path / "r"),
                 "--device", "cuda", *TINY_FLAGS]) == 2
    assert "no CUDA GPU is visible" in _one_line_error(capsys, "train")


def test_bad_config_files_are_one_line_errors(tmp_path, capsys):
    for text, message in (("[1, 2]", "JSON object"), ('{"epochs": "ten"}', "'epochs' must be an integer"),
                          ("{not json", "not valid JSON")):
        path = tmp_path / "cfg.json"
        path.write_text(text)
        assert main(["train", "--config", str(path), "--run-dir", str(tmp_path / "r")]) == 2
        assert message in _one_line_error(capsys, "train")


def test_damaged_run_files_are_one_line_errors(folder_run, tmp_path, capsys):
    root, run = folder_run
    image = str(root / "photos" / "00.png")
    for name, damage, message in (
        ("config.json", lambda p: p.write_text("[1]"), "JSON object"),
        ("config.json", lambda p: p.write_text('{"dataset": "folder", "code_lengths": [16], "epochs": "x"}'),
         "must be an integer"),
        ("checkpoint.pt", lambda p: p.write_bytes(b""), "not a readable checkpoint"),
        ("checkpoint.pt", lambda p: p.write_text("hello"), "not a readable checkpoint"),
        ("checkpoint.pt", lambda p: p.write_bytes(p.read_bytes()[:1000]), "not a readable checkpoint"),
        ("model.pt", lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "not a readable model"),
    ):
        copy = tmp_path / f"copy{len(os.listdir(tmp_path))}"
        shutil.copytree(run, copy)
        if name == "checkpoint.pt":
            (copy / "model.pt").unlink()  # encode falls back to the checkpoint
        damage(copy / name)
        if name == "config.json":  # read by --resume (encode and evaluate read the model's own copy)
            assert main(["train", "--resume", "--run-dir", str(copy), "--no-progress"]) == 2
            assert message in _one_line_error(capsys, "train"), (name, message)
        else:
            assert main(["encode", str(copy), image, "--out", str(tmp_path / "c.npz"), "--no-progress"]) == 2
            assert message in _one_line_error(capsys, "encode"), (name, message)


def test_a_checkpoint_with_flipped_weight_bits_is_refused(folder_run, tmp_path, capsys):
    _, run = folder_run
    copy = tmp_path / "flipped"
    shutil.copytree(run, copy)
    for name, key in (("model.pt", "state_dict"), ("checkpoint.pt", "model")):
        state = torch.load(copy / name, weights_only=True)
        weight = state[key]["heads.16.net.0.weight"]
        weight.view(torch.int32)[0, 0] ^= 0b11  # two flipped bits in one float
        torch.save(state, copy / name)
    assert main(["evaluate", str(copy), "--no-progress"]) == 2
    assert "damaged" in _one_line_error(capsys, "evaluate")
    (copy / "model.pt").unlink()
    assert main(["train", "--resume", "--run-dir", str(copy), "--no-progress"]) == 2
    assert "damaged" in _one_line_error(capsys, "train")


@pytest.mark.parametrize("argv,message", [
    (["encode", "{run}", "{root}/photos/00.png", "--out", "/etc/passwd/codes.npz"], "cannot create its folder"),
    (["encode", "{run}", "{root}/zero.png", "--out", "{tmp}/c.npz", "--no-progress"], "not a readable image"),
    (["encode", "{run}", "{root}/photos", "--out", "{tmp}/c.npz", "--threads", "-1"], "--threads must be >= 1"),
    (["evaluate", "{run}", "--threads", "0"], "--threads must be >= 1"),
    (["index", "build", "{tmp}/codes.npy", "-o", "{tmp}/a.idx", "--nbits", "0"], "--nbits must be >= 1"),
    (["search", "{tmp}/a.idx", "{tmp}/codes.npy", "-k", "1", "--names"], "equally long lists"),
    (["search", "{tmp}/a.idx", "{tmp}/codes.npy", "-k", "1", "--threads", "-1"], "--threads must be >= 1"),
])
def test_user_mistakes_are_one_line_errors(argv, message, folder_run, tmp_path, capsys):
    root, run = folder_run
    (root / "zero.png").write_bytes(b"")
    np.save(tmp_path / "codes.npy", np.zeros((4, 2), np.uint8))
    assert main(["index", "build", str(tmp_path / "codes.npy"), "-o", str(tmp_path / "a.idx")]) == 0
    (tmp_path / "a.idx.names.json").write_text('{"ids": [0, 1]}')
    capsys.readouterr()
    argv = [a.format(run=run, root=root, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    assert message in _one_line_error(capsys, " ".join(argv[:2]) if argv[0] == "index" else argv[0])


def test_writes_never_follow_links_out_of_a_run_directory(folder_run, tmp_path, capsys):
    root, run = folder_run
    copy = tmp_path / "received"
    shutil.copytree(run, copy)
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("report.md", "metrics.json", "retrieval.png", "nn_distance.png"):
        (outside / name).write_text("precious")
        (copy / name).unlink()
        (copy / name).symlink_to(outside / name)
    assert main(["evaluate", str(copy), "--no-progress"]) == 0
    for name in ("report.md", "metrics.json", "retrieval.png", "nn_distance.png"):
        assert (outside / name).read_text() == "precious", name
        assert not (copy / name).is_symlink() and (copy / name).stat().st_size > 0
    (outside / "train.log").write_text("precious")
    (copy / "train.log").unlink()
    (copy / "train.log").symlink_to(outside / "train.log")
    assert main(["evaluate", str(copy), "--no-progress"]) == 2
    assert "symbolic link" in _one_line_error(capsys, "evaluate")
    assert (outside / "train.log").read_text() == "precious"


def test_a_non_empty_folder_that_is_not_a_run_is_not_overwritten(folder_run, tmp_path, capsys):
    root, _ = folder_run
    target = tmp_path / "mine"
    target.mkdir()
    (target / "config.json").write_text('{"my": "settings"}')
    argv = ["train", "--dataset", "folder", "--data-root", str(root / "photos"), "--run-dir", str(target), *TINY_FLAGS]
    assert main(argv) == 2
    assert "not a run of cibhash_ext" in _one_line_error(capsys, "train")
    assert (target / "config.json").read_text() == '{"my": "settings"}'
    assert main([*argv, "--force"]) == 0
    assert (target / "checkpoint.pt").is_file()


def test_a_run_killed_before_its_first_checkpoint_resumes_from_the_start(folder_run, tmp_path):
    root, run = folder_run
    killed = tmp_path / "killed"
    killed.mkdir()
    shutil.copy(run / "config.json", killed / "config.json")  # what a run writes before its first epoch
    (killed / ".checkpoint.pt.999999999.abc.tmp").write_bytes(b"half a checkpoint")  # a dead writer's leftover
    assert main(["train", "--resume", "--run-dir", str(killed), "--no-progress"]) == 0
    assert (killed / "checkpoint.pt").is_file() and (killed / "metrics.json").is_file()
    assert not [n for n in os.listdir(killed) if n.endswith(".tmp")]
    fresh, resumed = (torch.load(d / "model.pt", weights_only=True)["state_dict"] for d in (run, killed))
    assert all(torch.equal(fresh[k], resumed[k]) for k in fresh)  # the same run as the uninterrupted one


def test_encode_reads_every_image_a_user_has_and_names_what_it_leaves_out(folder_run, tmp_path, capsys):
    """GIF and TIFF queries get rows, a sideways photo with its EXIF orientation encodes as the upright
    one, and the files that are not images are named in one warning line."""
    _, run = folder_run
    rng = np.random.default_rng(3)
    gray = Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8))  # GIF keeps 256 grey levels exactly
    folder = tmp_path / "queries"
    (folder / "nested").mkdir(parents=True)
    gray.save(folder / "a.png")
    gray.save(folder / "b.gif")
    gray.save(folder / "nested" / "c.tif")
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    gray.transpose(Image.Transpose.ROTATE_90).save(folder / "d_sideways.png", exif=exif)
    (folder / "notes.txt").write_text("not an image")
    capsys.readouterr()
    out = tmp_path / "codes.npz"
    assert main(["encode", str(run), str(folder), "--out", str(out), "--no-progress"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warned) == 1 and "left out 1 file(s) that are not images" in warned[0] and "notes.txt" in warned[0]
    codes = np.load(out)
    assert [os.path.relpath(n, folder) for n in codes["names"]] == ["a.png", "b.gif", "d_sideways.png", "nested/c.tif"]
    for length in (16, 32):
        rows = codes[f"codes_{length}"]
        assert (rows == rows[0]).all(), f"the four copies of one image must share one {length}-bit code"
