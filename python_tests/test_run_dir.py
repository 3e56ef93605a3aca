"""Runs written before a change still load, encode, evaluate and resume to the same results.

The fixture ``data/run_65cb470`` is a tiny Fashion-MNIST run written by the code at commit 65cb470
(``data/run_65cb470/make_fixture.py`` says how): these tests fail if the format of ``config.json``,
``checkpoint.pt`` or ``model.pt``, or what a run computes from them, changes.
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cibhash_ext import encode, load_model
from cibhash_ext.baselines import ITQ
from cibhash_ext.config import TrainConfig
from cibhash_ext.data import FASHION_MNIST_FILES, FASHION_MNIST_ROOT, load_fashion_mnist
from cibhash_ext.evaluation import evaluate_codes
from cibhash_ext.run_dir import load_run_config
from cibhash_ext.run_eval import evaluate, pixel_features
from cibhash_ext.training import train

FIXTURE = Path(__file__).parent / "data" / "run_65cb470"
pytestmark = pytest.mark.skipif(
    not all(os.path.isfile(os.path.join(FASHION_MNIST_ROOT, f)) for f in FASHION_MNIST_FILES),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)


@pytest.fixture(scope="module")
def data():
    return load_fashion_mnist(train_size=512, query_size=64, database_size=512)


def _copy(tmp_path, name: str) -> str:
    return str(shutil.copytree(FIXTURE / name, tmp_path / name))


def _stored_codes() -> dict:
    with np.load(FIXTURE / "query_codes.npz") as stored:
        return {int(k.split("_")[1]): stored[k] for k in stored}


def test_an_old_run_loads_and_encodes_to_the_codes_it_gave(tmp_path, data):
    model = load_model(_copy(tmp_path, "complete"))
    assert model.code_lengths == (8, 16) and model.input_shape == (1, 28, 28)
    codes = encode(model, data.query.images)
    stored = _stored_codes()
    assert set(codes) == set(stored)
    for length, expected in stored.items():
        assert codes[length].numpy().tobytes() == expected.tobytes(), length
    assert len({bytes(row) for row in stored[16]}) > 8  # the codes differ between images: a real check


def test_an_old_run_evaluates_to_the_metrics_it_wrote(tmp_path):
    run = _copy(tmp_path, "complete")
    with open(FIXTURE / "complete" / "metrics.json") as fh:
        written = json.load(fh)
    metrics = evaluate(run, threads=1, progress_bars=False)
    for key in ("cibhash", "itq", "lsh", "topk", "queries", "database", "dataset"):
        assert metrics[key] == written[key], key
    assert metrics["train"]["history"] == written["train"]["history"]


def test_the_itq_of_a_run_is_itq_fitted_directly_on_the_training_pixels(data):
    with open(FIXTURE / "complete" / "metrics.json") as fh:
        written = json.load(fh)
    train_x = pixel_features(data.train).float()
    query_x, database_x = pixel_features(data.query).float(), pixel_features(data.database).float()
    for length in (8, 16):
        itq = ITQ(length, seed=0).fit(train_x)
        direct = evaluate_codes(itq.encode(query_x), itq.encode(database_x), data.query.labels, data.database.labels,
                                length, written["topk"], False)
        assert direct["map"] == written["itq"][str(length)]["map"]
        assert direct["precision_radius2"] == written["itq"][str(length)]["precision_radius2"]


def test_an_old_killed_run_resumes_to_the_weights_of_the_complete_run(tmp_path, data):
    run = _copy(tmp_path, "killed")
    cfg = load_run_config(run)
    assert (cfg.neighbours, cfg.neighbour_refresh, cfg.feature_loss) == (10, 1, 1.0)
    train(cfg, run_dir=run, resume=True)
    resumed = torch.load(os.path.join(run, "model.pt"), weights_only=True)
    complete = torch.load(FIXTURE / "complete" / "model.pt", weights_only=True)
    # The same configuration, plus the settings added since the fixture was written, at their defaults
    # (the recipe among them: a run written before recipes records none).
    added = {k: v for k, v in TrainConfig().to_dict().items() if k not in complete["config"]}
    assert added["backbone_frozen"] is None and added["recipe"] is None
    assert resumed["config"] == {**complete["config"], **added} and resumed["input_shape"] == complete["input_shape"]
    assert set(resumed["state_dict"]) == set(complete["state_dict"])
    for name, weights in complete["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], weights), name
    codes = encode(load_model(run), data.query.images)
    assert all(codes[v].numpy().tobytes() == c.tobytes() for v, c in _stored_codes().items())
