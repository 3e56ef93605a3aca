"""benchmarks/feature_diagnostics.py: its metrics against a hand-built case with known answers, and on a
tiny Fashion-MNIST run against a NumPy transcription of what each figure claims to be."""

import json
import os

import numpy as np
import pytest
import torch

from cibhash_ext.baselines import ITQ
from cibhash_ext.data import FASHION_MNIST_FILES, FASHION_MNIST_ROOT, load_dataset
from cibhash_ext.encode import load_model
from cibhash_ext.neighbours import PCA_DIMS
from cibhash_ext.training import train
from conftest import NumpyOracle, load_benchmark


def test_cosine_map_and_purity_of_a_hand_built_case():
    diagnostics = load_benchmark("feature_diagnostics")
    # Database norms differ so that a dot product ranks otherwise: query 0 would put row 1 (label 1) first.
    database = torch.tensor([[3.0, 0.0], [0.0, 40.0], [1.0, 1.0], [-5.0, 0.0]])
    database_labels = torch.tensor([0, 1, 0, 1])
    queries, query_labels = torch.tensor([[1.0, 0.1], [0.1, 1.0]]), torch.tensor([0, 0])
    # By cosine, query 0 ranks rows 0, 2, 1, 3 (relevant: yes, yes, no, no): AP 1 at any k.
    # Query 1 ranks rows 1, 2, 0, 3 (no, yes, yes, no): AP@4 = (1/2 + 2/3) / 2 = 7/12, AP@2 = (1/2) / 1.
    assert diagnostics._cosine_map(queries, database, query_labels, database_labels, 4) == pytest.approx(19 / 24, abs=1e-12)
    assert diagnostics._cosine_map(queries, database, query_labels, database_labels, 2) == pytest.approx(3 / 4, abs=1e-12)
    # Same-class share of the table's entries: 1/2, 1/2, 1, 1/2, 1 per row.
    table = torch.tensor([[1, 2], [0, 3], [3, 4], [4, 0], [2, 3]])
    assert diagnostics._purity(table, torch.tensor([0, 0, 1, 1, 1])) == pytest.approx(0.7, abs=1e-12)


def _map_numpy(query, database, query_labels, database_labels, k, hamming=False):
    """mAP@k: cosine similarity (highest first) of real rows, or Hamming distance (lowest first, equal
    distances by the lower index) of packed codes; AP = mean over the relevant items of the top k of the
    precision at their rank, 0 without one."""
    if hamming:
        score = NumpyOracle.distances(query, database)
    else:
        q = query / np.linalg.norm(query, axis=1, keepdims=True)
        d = database / np.linalg.norm(database, axis=1, keepdims=True)
        score = -(q @ d.T)
    order = np.argsort(score, axis=1, kind="stable")[:, :k]
    rel = (database_labels[order] == query_labels[:, None]).astype(np.float64)
    precision = np.cumsum(rel, axis=1) / np.arange(1, k + 1)
    return float(np.mean((precision * rel).sum(axis=1) / np.maximum(rel.sum(axis=1), 1)))


def _purity_numpy(rows, labels, k, pca_dims=None):
    """Share of same-class rows among each row's k most cosine-similar other rows, after centring and
    projecting on the pca_dims leading principal axes when given."""
    x = rows.reshape(len(rows), -1).astype(np.float64)
    if pca_dims is not None:
        x = x - x.mean(axis=0)
        axes = np.linalg.eigh(x.T @ x)[1][:, -pca_dims:]
        x = x @ axes
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    similarity = x @ x.T
    np.fill_diagonal(similarity, -np.inf)
    table = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return float((labels[table] == labels[:, None]).mean())


@pytest.mark.skipif(not all(os.path.isfile(os.path.join(FASHION_MNIST_ROOT, f)) for f in FASHION_MNIST_FILES),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_diagnostics_of_a_run_match_a_numpy_transcription(tmp_path, monkeypatch, capsys):
    diagnostics = load_benchmark("feature_diagnostics")
    run = str(tmp_path / "run")
    # bf16 off: the features below are computed in float32 without autocast, as the diagnostic then does.
    metrics = train(dataset="fashion_mnist", train_size=300, query_size=60, database_size=400, epochs=1,
                    batch_size=64, backbone="mlp", mlp_widths=(64,), hidden=32, code_lengths=(16, 32), baselines=(),
                    eval_curves=False, progress=False, threads=1, bf16=False, run_dir=run).metrics
    monkeypatch.setattr("sys.argv", ["feature_diagnostics.py", run, "--json", str(tmp_path / "d.json")])
    diagnostics.main()
    (result,) = json.loads((tmp_path / "d.json").read_text())
    assert f"{run}: mAP@1000 at 16/32 bits: codes" in capsys.readouterr().out

    # What each figure claims to be, computed here from the run's model and data.
    model = load_model(run, device="cpu")
    data = load_dataset("fashion_mnist", None, **model.config.dataset_options())
    mean, std = model.transform.mean[0], model.transform.std[0]
    with torch.no_grad():
        features = {split: model.module.backbone((getattr(data, split).images.float() / 255 - mean) / std)
                    for split in ("train", "query", "database")}
        logits = {split: model.module(features=f) for split, f in features.items()}
    f = {split: v.double().numpy() for split, v in features.items()}
    ql, dl, tl = (getattr(data, split).labels.numpy() for split in ("query", "database", "train"))
    k = 400  # mAP@1000 over a database of 400
    assert result["topk"] == 1000
    assert result["features"] == pytest.approx(_map_numpy(f["query"], f["database"], ql, dl, k), abs=1e-9)
    for length in (16, 32):
        # The codes' figure is the run's own report, and the NumPy Hamming ranking of the logits' signs.
        assert result["codes"][str(length)] == pytest.approx(metrics["cibhash"][str(length)]["map"], abs=1e-12)
        signs = {s: NumpyOracle.pack(logits[s][length].numpy() > 0) for s in ("query", "database")}
        assert result["codes"][str(length)] == pytest.approx(
            _map_numpy(signs["query"], signs["database"], ql, dl, k, hamming=True), abs=1e-12)
        z = {s: logits[s][length].double().numpy() for s in ("query", "database")}
        assert result["logits"][str(length)] == pytest.approx(_map_numpy(z["query"], z["database"], ql, dl, k), abs=1e-9)
        # ITQ fitted on the training images' features (not the queries' or the database's).
        itq = ITQ(length).fit(features["train"])
        codes = {s: itq.encode(features[s]).numpy() for s in ("query", "database")}
        assert result["itq_on_features"][str(length)] == pytest.approx(
            _map_numpy(codes["query"], codes["database"], ql, dl, k, hamming=True), abs=1e-12)
    # Purity of the 10 nearest training images: pixels projected on their leading axes, features as they are.
    assert result["purity"]["pixels"] == pytest.approx(
        _purity_numpy(data.train.images.numpy(), tl, 10, PCA_DIMS), abs=1e-12)
    assert result["purity"]["features"] == pytest.approx(_purity_numpy(f["train"], tl, 10), abs=1e-12)


def test_a_path_that_is_not_a_run_is_one_line_and_status_2(tmp_path, monkeypatch, capsys):
    diagnostics = load_benchmark("feature_diagnostics")
    monkeypatch.setattr("sys.argv", ["feature_diagnostics.py", str(tmp_path / "nothing")])
    with pytest.raises(SystemExit) as exit_info:
        diagnostics.main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"feature_diagnostics.py: error: {tmp_path / 'nothing'} is not a run directory: " \
                                      f"{tmp_path / 'nothing' / 'config.json'} is missing\n"
