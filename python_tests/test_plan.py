"""The plan of a run: resolved once from (config, data), and what config.json records as resolved."""

import json
import os
from pathlib import Path

import pytest

from cibhash_ext.config import TrainConfig
from cibhash_ext.data import FASHION_MNIST_FILES, FASHION_MNIST_ROOT, load_fashion_mnist
from cibhash_ext.plan import RunPlan
from cibhash_ext.run_dir import load_run_config

FIXTURE = Path(__file__).parent / "data" / "run_65cb470"


@pytest.mark.skipif(not all(os.path.isfile(os.path.join(FASHION_MNIST_ROOT, f)) for f in FASHION_MNIST_FILES),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_the_plan_of_a_run_is_what_its_config_json_recorded():
    """The run written at 65cb470 (before the plan existed): the plan of its configuration on its data
    resolves to the same "resolved" entry, key for key and value for value, plus the keys added
    since (the batch per process)."""
    cfg = load_run_config(str(FIXTURE / "complete"))
    data = load_fashion_mnist(train_size=512, query_size=64, database_size=512)
    plan = RunPlan.resolve(cfg, data)
    with open(FIXTURE / "complete" / "config.json") as fh:
        recorded = json.load(fh)["resolved"]
    assert json.loads(json.dumps(plan.resolved())) == {**recorded, "batch_size": 64}
    assert (plan.input_shape, plan.channels_last, plan.steps_per_epoch, plan.temperatures) == (
        (1, 28, 28), True, 8, {8: 0.15, 16: 0.15})


def test_a_plan_is_resolved_from_the_data_and_fails_before_the_run_starts():
    import torch

    from cibhash_ext.data import as_retrieval_data

    images = torch.zeros(40, 3, 20, 20, dtype=torch.uint8)
    data = as_retrieval_data(images, query_size=8)
    plan = RunPlan.resolve(TrainConfig(dataset="tensor", batch_size=8, backbone="mlp", temperature=(0.3,)), data)
    assert (plan.input_shape, plan.channels_last, plan.steps_per_epoch, plan.processes) == ((3, 20, 20), False, 4, 1)
    assert plan.temperatures == {16: 0.3, 32: 0.3, 64: 0.3} and plan.augment.size == 0
    assert plan.batch_size == 8 and plan.resolved()["batch_size"] == 8
    capped = RunPlan.resolve(TrainConfig(dataset="tensor", batch_size=64), data)
    assert (capped.batch_size, capped.steps_per_epoch, capped.resolved()["batch_size"]) == (32, 1, 32)
    with pytest.raises(ValueError, match=r"the training set \(1 images\) is too small: each of the 1 processes needs "
                       "at least 2 images"):
        RunPlan.resolve(TrainConfig(dataset="tensor"), as_retrieval_data(images[:2], query_size=1))


def test_under_several_processes_the_batch_is_capped_per_process(monkeypatch):
    from cibhash_ext import pipeline

    monkeypatch.setattr(pipeline.distributed, "world_size", lambda: 2)
    assert (pipeline.capped_batch(256, 45), pipeline.capped_batch(16, 45), pipeline.n_batches(22, 45)) == (22, 16, 1)
    with pytest.raises(ValueError, match="the training set \\(3 images\\) is too small: each of the 2 processes"):
        pipeline.capped_batch(256, 3)


def test_a_named_backbone_resolves_to_its_own_preprocessing():
    import torch

    from cibhash_ext.data import as_retrieval_data

    data = as_retrieval_data(torch.zeros(20, 1, 16, 16, dtype=torch.uint8), query_size=4)
    plan = RunPlan.resolve(TrainConfig(dataset="tensor", backbone="torchvision:efficientnet_b3"), data)
    assert plan.input_shape == (3, 300, 300) and plan.augment.interpolation == "bicubic"
    assert plan.resolved()["augment"]["interpolation"] == "bicubic" and plan.resolved()["batch_size"] == 16
    bilinear = RunPlan.resolve(TrainConfig(dataset="tensor", backbone="torchvision:resnet18"), data)
    assert bilinear.augment.interpolation == "bilinear" and "interpolation" not in bilinear.resolved()["augment"]
