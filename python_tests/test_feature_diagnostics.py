"""benchmarks/feature_diagnostics.py on a tiny Fashion-MNIST run: its code mAP is the run's report."""

import json
import os

import pytest

from cibhash_ext.data import FASHION_MNIST_FILES, FASHION_MNIST_ROOT
from cibhash_ext.training import train
from conftest import load_benchmark


@pytest.mark.skipif(not all(os.path.isfile(os.path.join(FASHION_MNIST_ROOT, f)) for f in FASHION_MNIST_FILES),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_diagnostics_of_a_run_reproduce_its_code_map(tmp_path, monkeypatch, capsys):
    diagnostics = load_benchmark("feature_diagnostics")
    run = str(tmp_path / "run")
    metrics = train(dataset="fashion_mnist", train_size=300, query_size=60, database_size=400, epochs=1,
                    batch_size=64, backbone="mlp", mlp_widths=(64,), hidden=32, code_lengths=(16, 32), baselines=(),
                    eval_curves=False, progress=False, threads=1, run_dir=run).metrics
    monkeypatch.setattr("sys.argv", ["feature_diagnostics.py", run, "--json", str(tmp_path / "d.json")])
    diagnostics.main()
    (result,) = json.loads((tmp_path / "d.json").read_text())
    for length in ("16", "32"):
        assert result["codes"][length] == pytest.approx(metrics["cibhash"][length]["map"], abs=1e-12)
        assert 0 < result["logits"][length] <= 1 and 0 < result["itq_on_features"][length] <= 1
    assert 0 < result["features"] <= 1
    assert 0.1 < result["purity"]["pixels"] <= 1 and 0.1 < result["purity"]["features"] <= 1
    assert f"{run}: mAP@1000 at 16/32 bits: codes" in capsys.readouterr().out

    # A path that is not a run: one line, exit status 2, no traceback.
    monkeypatch.setattr("sys.argv", ["feature_diagnostics.py", str(tmp_path / "nothing")])
    with pytest.raises(SystemExit) as exit_info:
        diagnostics.main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"feature_diagnostics.py: error: {tmp_path / 'nothing'} is not a run directory: " \
                                      f"{tmp_path / 'nothing' / 'config.json'} is missing\n"
