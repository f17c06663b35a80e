"""A rank that stalls, dies or raises ends the whole job within seconds, named; the last snapshot is intact."""
import os
import re
import time

import numpy
import pytest

from pycaffe_dist import backend
from pycaffe_dist.solvers import get_solver

from . import problems
from .mpirun import needs_mpi, run

pytestmark = needs_mpi


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return problems.write_separable(str(tmp_path_factory.mktemp("failure") / "data.npz"))


def failing_job(folder, data, fail, *settings, ranks=3, timeout=40):
    """Run train_job.py with --fail; returns (output, seconds). The job must fail, not hang."""
    out = os.path.join(folder, "out")
    os.makedirs(out, exist_ok=True)
    solver = problems.write_mlp_solver(folder, "mlp", 40, extra='snapshot: 5 snapshot_prefix: "%s/snap"' % folder)
    started = time.monotonic()
    result = run(ranks, ["train_job.py", solver, out, "--feed", data, "--fail", fail, "--set", "timeout=2"]
                 + list(settings), timeout=timeout, check=False, runner=False)
    assert result.returncode != 0, result.stdout
    return result.stdout, time.monotonic() - started, solver


@pytest.mark.parametrize("settings,collective", [([], "MPI allreduce of 68 values for layer ip2"),
                                                 (["algorithm=ring", "layer_wise=false"], "ring allreduce")],
                         ids=["mpi-layerwise", "ring"])
def test_a_stalled_rank_is_named_with_the_call_and_iteration(tmp_path, data, settings, collective):
    output, seconds, solver = failing_job(str(tmp_path), data, "1:12:stop", *settings)
    assert seconds < 25, output
    message = [line for line in output.splitlines() if "pycaffe-dist train: error" in line]
    assert message, output
    assert "rank 1 did not answer (dead or stopped)" in message[0]
    assert collective in message[0] and "at iteration 12" in message[0]
    # The last snapshot (iteration 10) loads and training continues from it.
    backend.set_solver_rank(0)
    backend.set_solver_count(1)
    resumed = get_solver(solver)
    data_arrays = numpy.load(data)
    resumed.net.layers[0].set_input_arrays(data_arrays["train_x"], data_arrays["train_y"])
    resumed.restore(str(tmp_path / "snap_iter_10.solverstate"))
    assert resumed.iter == 10
    resumed.step(2)
    assert numpy.isfinite(resumed.net.flat_data).all()


def test_a_killed_rank_is_named_by_its_guardian(tmp_path, data):
    output, seconds, _ = failing_job(str(tmp_path), data, "2:12:kill")
    assert seconds < 20, output
    pids = dict(re.findall(r"rank (\d+): pid (\d+) on", output))
    assert "rank 2 (pid %s) was killed by SIGKILL at iteration 12" % pids["2"] in output, output


def test_a_rank_that_raises_is_named(tmp_path, data):
    output, seconds, _ = failing_job(str(tmp_path), data, "1:7:raise", ranks=2)
    assert seconds < 20, output
    assert "rank 1 failed in iteration 7: ValueError: test failure at iteration 7" in output
