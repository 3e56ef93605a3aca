"""Multi-process training on gloo: 2 processes x batch 32 give the loss, gradients and batch-norm
statistics of 1 process x batch 64; the refreshed neighbour table on rank 1 is rank 0's; torchrun
trains end to end with only rank 0 writing the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import fork_ranks

from cibhash_ext.data import FASHION_MNIST_ROOT

WORLD = 2
BATCH = 64  # the global batch; each worker takes BATCH // WORLD images
SHAPE = (1, 8, 8)


def _config(global_batch: bool = True):
    from cibhash_ext.config import load_config

    # Deterministic codes: the two runs must binarize identically. bf16 off: float32 tolerances. Over
    # the Fashion-MNIST recipe (its feature loss on), as train() and the CLI resolve it.
    return load_config(None, backbone="mlp", mlp_widths=(48,), code_lengths=(8, 16), hidden=32, stochastic=False,
                       bf16=False, global_batch=global_batch, temperature=(0.3,))


def _step(model, net, cfg, view1, view2) -> dict[str, np.ndarray]:
    """One training step through train_step; returns the loss, the gradients and the BN statistics."""
    from cibhash_ext import distributed
    from cibhash_ext.training import build_objective, train_step

    objective = build_objective(cfg, {v: cfg.temperature_for(v) for v in cfg.code_lengths}, model)
    model.train()
    losses = train_step(net, objective, view1, view2, torch.Generator().manual_seed(0), bf16=cfg.bf16)
    out = {"loss": distributed.all_reduce_mean(losses["loss"]).numpy()}
    out.update({f"grad:{n}": p.grad.numpy().copy() for n, p in model.named_parameters()})
    out.update({f"buffer:{n}": b.numpy().copy() for n, b in model.named_buffers() if b.is_floating_point()})
    return out


def _worker(rank: int, world: int, workdir: str) -> None:
    from cibhash_ext.distributed import init_process_group
    from cibhash_ext.models import build_model
    from cibhash_ext.training import wrap_for_processes

    init_process_group("gloo", timeout_s=30, rank=rank, world_size=world)
    views = torch.load(os.path.join(workdir, "views.pt"))
    rows = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    for global_batch in (True, False):
        cfg = _config(global_batch)
        model = build_model(cfg, SHAPE)
        model.load_state_dict(torch.load(os.path.join(workdir, "model.pt")))
        net = wrap_for_processes(model, cfg.device)
        out = _step(model, net, cfg, views["view1"][rows], views["view2"][rows])
        np.savez(os.path.join(workdir, f"rank{rank}_global{int(global_batch)}.npz"), **out)


@pytest.fixture(scope="module")
def two_process_steps(tmp_path_factory):
    from cibhash_ext.models import build_model

    workdir = tmp_path_factory.mktemp("ddp")
    torch.manual_seed(3)
    model = build_model(_config(), SHAPE)
    torch.save(model.state_dict(), workdir / "model.pt")
    gen = torch.Generator().manual_seed(4)
    views = {"view1": torch.randn(BATCH, *SHAPE, generator=gen), "view2": torch.randn(BATCH, *SHAPE, generator=gen)}
    torch.save(views, workdir / "views.pt")
    fork_ranks(_worker, WORLD, str(workdir), timeout_s=90)
    single = _step(model, model, _config(), views["view1"], views["view2"])
    runs = {g: [dict(np.load(workdir / f"rank{r}_global{int(g)}.npz")) for r in range(WORLD)] for g in (True, False)}
    return single, runs


def test_two_processes_of_32_equal_one_process_of_64(two_process_steps):
    single, runs = two_process_steps
    for rank_out in runs[True]:
        assert set(rank_out) == set(single)
        np.testing.assert_allclose(rank_out["loss"], single["loss"], rtol=1e-6)
        for name, want in single.items():
            # Heads, backbone and batch-norm parameters: DDP's averaged gradient is the global batch's.
            np.testing.assert_allclose(rank_out[name], want, rtol=1e-4, atol=1e-6, err_msg=name)
    assert any(name.startswith("grad:heads.") for name in single)
    assert any("running_var" in name for name in single)


def test_local_negatives_differ_from_the_global_batch(two_process_steps):
    # The control: without the gather each process contrasts within its own 32 images only.
    single, runs = two_process_steps
    local_loss = float(np.mean([r["loss"] for r in runs[False]]))
    assert abs(local_loss - float(single["loss"])) > 1e-3
    grad = "grad:heads.16.net.2.weight"
    assert not np.allclose(runs[False][0][grad], single[grad], rtol=1e-4, atol=1e-6)


def test_global_batch_norm_is_batch_norm_in_one_process():
    from cibhash_ext.distributed import convert_batchnorm

    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.BatchNorm1d(6), torch.nn.Conv2d(1, 1, 1))
    converted = convert_batchnorm(torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.BatchNorm1d(6)))
    converted.load_state_dict({k: v for k, v in plain.state_dict().items() if not k.startswith("2.")})
    x = torch.randn(10, 5)
    torch.testing.assert_close(converted(x), plain[:2](x), rtol=0, atol=0)
    assert type(converted[1]).__name__ == "GlobalBatchNorm"
    assert set(converted.state_dict()) == set(plain[:2].state_dict())


NEIGHBOURS = 5


def _refresh_worker(rank: int, world: int, workdir: str) -> None:
    """Neighbour positives on one rank: the pixel table, then the refresh before epoch 2 (every 2 epochs)."""
    from cibhash_ext.data import ImageSet
    from cibhash_ext.distributed import init_process_group
    from cibhash_ext.models import build_model
    from cibhash_ext.pairing import NeighbourPairs
    from cibhash_ext.transforms import EvalTransform

    init_process_group("gloo", timeout_s=30, rank=rank, world_size=world)
    model = build_model(_config(), SHAPE)
    # Rank 1 holds other weights than rank 0: the table it ends with must still be rank 0's.
    model.load_state_dict(torch.load(os.path.join(workdir, f"model{min(rank, 1)}.pt")))
    pairs = NeighbourPairs(ImageSet(None, images=torch.load(os.path.join(workdir, "images.pt"))), NEIGHBOURS, 2,
                           EvalTransform(SHAPE, (0.5,), (0.25,)), "cpu", bf16=False, channels_last=False)
    tables = {"pixels": pairs.table.clone()}
    pairs.before_epoch(1, model)  # not a multiple of the refresh: the table stays
    tables["epoch1"] = pairs.table.clone()
    pairs.before_epoch(2, model)
    tables["epoch2"] = pairs.table.clone()
    torch.save(tables, os.path.join(workdir, f"tables{rank}.pt"))


def _feature_table(model, images: torch.Tensor) -> np.ndarray:
    """The neighbour table written out in NumPy: each image's most cosine-similar other images by the
    backbone features of the eval-mode model (equal similarities by the lower index)."""
    model.eval()
    with torch.no_grad():
        features = model.backbone((images.float() / 255 - 0.5) / 0.25).double().numpy()
    x = features / np.linalg.norm(features, axis=1, keepdims=True)
    similarity = x @ x.T
    np.fill_diagonal(similarity, -np.inf)
    return np.argsort(-similarity, axis=1, kind="stable")[:, :NEIGHBOURS]


def test_refreshed_neighbours_on_the_second_rank_are_rank_0s_feature_table(tmp_path):
    from cibhash_ext.models import build_model

    torch.manual_seed(5)
    models = [build_model(_config(), SHAPE) for _ in range(WORLD)]
    for rank, model in enumerate(models):
        torch.save(model.state_dict(), tmp_path / f"model{rank}.pt")
    images = torch.randint(0, 256, (96, *SHAPE), dtype=torch.uint8, generator=torch.Generator().manual_seed(6))
    torch.save(images, tmp_path / "images.pt")
    fork_ranks(_refresh_worker, WORLD, str(tmp_path), timeout_s=60)
    tables = [torch.load(tmp_path / f"tables{rank}.pt") for rank in range(WORLD)]

    expected = _feature_table(models[0], images)
    for rank in range(WORLD):
        assert torch.equal(tables[rank]["epoch1"], tables[rank]["pixels"])
        # On every rank, rank 0's features' table, equal to the one computed here in one process.
        np.testing.assert_array_equal(tables[rank]["epoch2"].numpy(), expected, err_msg=f"rank {rank}")
    # The case exercises what it claims: the refresh changed the table, and rank 1's own weights
    # would have given another one.
    assert not np.array_equal(tables[1]["pixels"].numpy(), expected)
    assert not np.array_equal(_feature_table(models[1], images), expected)


@pytest.fixture(scope="module")
def torchrun_run(tmp_path_factory):
    if not os.path.isdir(FASHION_MNIST_ROOT):
        pytest.skip(f"Fashion-MNIST is not installed at {FASHION_MNIST_ROOT} (scripts/setup.sh installs it)")
    run_dir = tmp_path_factory.mktemp("torchrun") / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD),
           "-m", "cibhash_ext", "train", "--run-dir", str(run_dir), "--train-size", "512", "--query-size", "50",
           "--database-size", "300", "--epochs", "2", "--batch-size", "32", "--code-lengths", "16",
           "--backbone", "mlp", "--mlp-widths", "64", "--hidden", "64", "--neighbour-refresh", "1",
           "--baselines", "none", "--no-curves", "--no-progress", "--threads", "1", "--dist-timeout", "120"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    return run_dir, result


def test_torchrun_trains_and_only_rank_0_writes(torchrun_run):
    run_dir, result = torchrun_run
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("run directory:") == 1  # rank 0 alone reports
    assert sorted(os.listdir(run_dir)) == ["checkpoint.pt", "config.json", "metrics.json", "model.pt", "report.md",
                                           "retrieval.png", "train.log"]
    log = (run_dir / "train.log").read_text()
    assert log.count(" loss ") == 2, log  # one line per epoch: no second writer
    # The neighbours found again from the features before epoch 2 (rank 0 computes, all receive them:
    # the tables' values are checked by test_refreshed_neighbours_on_the_second_rank_are_rank_0s_feature_table).
    assert log.count("space of the backbone's features after epoch 1") == 1, log
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train"]["processes"] == WORLD
    assert 0 < metrics["cibhash"]["16"]["map"] <= 1
    config = json.loads((run_dir / "config.json").read_text())
    assert config["resolved"]["processes"] == WORLD and config["global_batch"] is True
    # 512 images in global batches of 2 x 32: 8 steps per epoch.
    assert "2 epochs of 8 batches of 2 x 32 images" in log


def test_checkpoint_of_a_distributed_run_serves_one_process(torchrun_run, tmp_path, capsys):
    from cibhash_ext.cli import main

    run_dir, result = torchrun_run
    assert result.returncode == 0, result.stderr
    assert main(["encode", str(run_dir), "--split", "query", "--out", str(tmp_path / "q.npz"), "--no-progress"]) == 0
    assert np.load(tmp_path / "q.npz")["codes_16"].shape == (50, 2)
    # Resuming with another number of processes would change the global batch: refused.
    capsys.readouterr()
    assert main(["train", "--resume", "--run-dir", str(run_dir), "--no-progress"]) == 2
    assert "was trained by 2 processes; resume it with as many (got 1)" in capsys.readouterr().err
