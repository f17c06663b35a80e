"""`mpiexec -n N pycaffe-dist train` with no strategy flags: N ranks equal 1 rank with N times the batch."""
import os

import numpy
import pytest

from pycaffe_dist import backend
from pycaffe_dist.solvers import get_solver
from tests.parallel import helpers

from .mpirun import needs_mpi, run

pytestmark = needs_mpi
B = 4      # each rank's batch


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return helpers.write_dataset(str(tmp_path_factory.mktemp("cluster_sync") / "train_lmdb"), 120)


def train_cli(ranks, solver, *flags, timeout=60):
    return run(ranks, ["-m", "pycaffe_dist", "train", "--solver", solver] + list(flags), timeout=timeout)


def weights_of(solver_path, caffemodel):
    solver = get_solver(solver_path)
    solver.net.copy_from(caffemodel)
    return solver.net.flat_data.copy()


def reference(solver_path, iters, resume=None):
    """A plain one-process run: the weights an N-rank run must end with."""
    backend.set_solver_rank(0)
    backend.set_solver_count(1)
    solver = get_solver(solver_path)
    if resume:
        solver.restore(resume)
    solver.step(iters)
    return solver.net.flat_data.copy()


@pytest.mark.parametrize("ranks,flags", [(2, []), (3, ["--algorithm", "halving_doubling"]),
                                         (4, ["--algorithm", "ring"]), (4, ["--algorithm", "binomial"])],
                         ids=["2-mpi-layerwise", "3-halving_doubling", "4-ring", "4-binomial"])
def test_n_ranks_equal_one_rank_with_n_times_the_batch(tmp_path, data, ranks, flags):
    folder = str(tmp_path)
    extra = 'snapshot_prefix: "%s/par"' % folder
    par = helpers.write_solver(folder, "par", B, 30, data, extra, snapshot_after_train="true")
    big = helpers.write_solver(folder, "big", ranks * B, 30, data)
    result = train_cli(ranks, par, *flags)
    assert "MPI job of %d ranks: strategy sync" % ranks in result.stdout
    trained = weights_of(big, os.path.join(folder, "par_iter_30.caffemodel"))
    expected = reference(big, 30)
    assert numpy.abs(trained - expected).max() < 1e-5
    assert numpy.abs(expected - reference(big, 0)).max() > 0.01       # it did train


def test_a_snapshot_of_two_ranks_resumes_with_three(tmp_path, data):
    folder = str(tmp_path)
    two = helpers.write_solver(folder, "run", B, 12, data, 'snapshot: 6 snapshot_prefix: "%s/run"' % folder)
    train_cli(2, two)
    state = os.path.join(folder, "run_iter_6.solverstate")
    assert os.path.exists(state)
    os.rename(os.path.join(folder, "run_iter_12.caffemodel"), os.path.join(folder, "two_ranks_12.caffemodel"))
    train_cli(3, two, "--snapshot", state)
    resumed = weights_of(two, os.path.join(folder, "run_iter_12.caffemodel"))
    # Three ranks carry on from the global batch boundary: one rank with 3x the batch does the same.
    big = helpers.write_solver(folder, "big", 3 * B, 12, data)
    assert numpy.abs(resumed - reference(big, 6, resume=state)).max() < 1e-5
    assert numpy.abs(resumed - weights_of(two, os.path.join(folder, "two_ranks_12.caffemodel"))).max() > 1e-4
