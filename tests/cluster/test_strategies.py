"""Every cluster strategy trains the separable problem under real mpiexec; BSP and synchronous PS equal sync SGD."""
import json
import os

import numpy
import pytest

from . import problems
from .mpirun import needs_mpi, run

pytestmark = needs_mpi


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return problems.write_separable(str(tmp_path_factory.mktemp("separable") / "data.npz"))


def train(folder, ranks, data, settings, max_iter=40, timeout=60):
    """Run train_job.py; returns (root's test accuracy, every worker's final weights by rank)."""
    out = os.path.join(folder, "out")
    os.makedirs(out, exist_ok=True)
    solver = problems.write_mlp_solver(folder, "mlp", max_iter)
    run(ranks, ["train_job.py", solver, out, "--feed", data, "--set", "timeout=30"] + settings, timeout=timeout,
        runner=False)
    with open(os.path.join(out, "worker0.json")) as f:
        root = json.load(f)
    assert root["iter"] == max_iter
    weights = {}
    for name in os.listdir(out):
        if name.endswith(".npy"):
            weights[int(name[len("worker"):-4])] = numpy.load(os.path.join(out, name))
    return root["test_scores"][0]["accuracy"], weights


@pytest.mark.parametrize("ranks,settings", [
    (3, ["strategy=easgd", "tau=4"]),
    (2, ["strategy=eamsgd", "tau=4"]),
    (3, ["strategy=ssp", "staleness=2"]),
    (4, ["strategy=downpour", "servers=2", "n_fetch=2", "n_push=3"]),
    (3, ["compression=onebit"]),
    (2, ["compression=fp16", "algorithm=halving_doubling"]),
    (3, ["compression=topk", "topk_ratio=0.1"]),
], ids=["easgd", "eamsgd", "ssp2", "downpour", "onebit", "fp16", "topk"])
def test_strategy_learns_the_separable_problem(tmp_path, data, ranks, settings):
    accuracy, weights = train(str(tmp_path), ranks, data, settings)
    assert accuracy > 0.95, accuracy
    first = weights[0]
    for w in weights.values():           # every worker ends with the model (to float rounding)
        assert numpy.allclose(w, first, atol=1e-5)


@pytest.mark.parametrize("settings", [["strategy=ssp", "staleness=0"], ["strategy=ps", "servers=2"]],
                         ids=["bsp", "sync_ps"])
def test_bsp_and_synchronous_parameter_server_equal_synchronous_sgd(tmp_path, data, settings):
    """SSP with s=0 and the synchronous PS (n_fetch = n_push = 1) are synchronous SGD in disguise."""
    workers = 2
    _, sync = train(str(tmp_path / "sync"), workers, data, [], max_iter=20)
    ranks = workers + (2 if "strategy=ps" in settings else 0)
    _, other = train(str(tmp_path / "other"), ranks, data, settings, max_iter=20)
    assert numpy.abs(other[0] - sync[0]).max() < 1e-5
