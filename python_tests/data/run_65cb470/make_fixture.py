"""How python_tests/data/run_65cb470 was written: by cibhash_ext at commit 65cb470 (before issue 22's
reshaping), with `PYTHONPATH=<a checkout of 65cb470> python make_fixture.py OUT`. Kept to show what the
fixture is, not to be run again: the fixture pins what that code wrote.

complete/: a tiny Fashion-MNIST run (default recipe, neighbour refresh every epoch, small CNN), its
config.json, checkpoint.pt, model.pt and metrics.json; killed/: the same run stopped after its second
epoch (config.json, checkpoint.pt with the refreshed neighbour table); query_codes.npz: the codes of
the 64 queries by the complete run's model.
"""
import json, os, shutil, sys
import numpy as np
import torch

torch.set_num_threads(1)
import cibhash_ext as ch
from cibhash_ext.data import load_fashion_mnist

out = sys.argv[1]
settings = dict(dataset="fashion_mnist", train_size=512, query_size=64, database_size=512, epochs=3, batch_size=64,
                convnet_widths=(4, 8, 8), convnet_fc=16, hidden=16, code_lengths=(8, 16), neighbour_refresh=1, lr=3e-3,
                progress=False, threads=1, eval_curves=False)


class Killed(Exception):
    pass


def stop_after(last):
    def on_epoch_end(epoch, record):
        if epoch == last:
            raise Killed
    return on_epoch_end


shutil.rmtree(out, ignore_errors=True)
os.makedirs(out)
complete, killed = os.path.join(out, "complete"), os.path.join(out, "killed")
_, metrics = ch.train(run_dir=complete, **settings)
try:
    ch.train(run_dir=killed, on_epoch_end=stop_after(1), **settings)
except Killed:
    pass
for run in (complete, killed):
    for name in os.listdir(run):
        if name not in ("config.json", "checkpoint.pt", "model.pt", "metrics.json"):
            os.remove(os.path.join(run, name))
data = load_fashion_mnist(train_size=512, query_size=64, database_size=512)
codes = ch.encode(ch.load_model(complete), data.query.images)
np.savez(os.path.join(out, "query_codes.npz"), **{f"codes_{k}": v.numpy() for k, v in codes.items()})
print({k: v["map"] for k, v in metrics["cibhash"].items()}, {k: v["map"] for k, v in metrics["itq"].items()})
