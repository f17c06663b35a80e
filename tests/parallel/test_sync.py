"""Synchronous data parallel training in worker processes: equivalence, exactness, snapshots."""
import functools
import os

import numpy
import pytest

from pycaffe_dist import backend, parallel
from pycaffe_dist.proto import io as proto_io
from pycaffe_dist.solvers import Solver

from . import helpers

B = 4          # each worker's batch


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sync_data")
    return helpers.write_dataset(str(folder / "train_lmdb"), 120)


def one_worker_weights(solver_path, iters=None, dtype=numpy.float32):
    """A plain single-process run (the reference a parallel run must match)."""
    backend.set_solver_rank(0)
    backend.set_solver_count(1)
    solver = Solver(proto_io.read_solver(solver_path), solver_path, dtype=dtype)
    solver.step(iters if iters is not None else solver.param.max_iter)
    return solver.net.flat_data.copy()


@pytest.mark.parametrize("workers", [2, 3])
def test_n_workers_equal_one_worker_with_n_times_the_batch(tmp_path, data, workers):
    parallel_solver = helpers.write_solver(str(tmp_path), "par", B, 50, data)
    big_solver = helpers.write_solver(str(tmp_path), "big", workers * B, 50, data)
    result = parallel.train(parallel_solver, workers=workers, return_weights=True)
    assert result.iter == 50
    assert len(set(result.digests)) == 1           # every worker holds the same weights
    reference = one_worker_weights(big_solver)
    assert numpy.abs(result.weights - reference).max() < 1e-5
    assert not numpy.array_equal(reference, one_worker_weights(big_solver, 0))   # it did train


def test_thread_workers_start_from_the_seeded_weights(tmp_path, data):
    # Threads share one random stream: built side by side, rank 0's fillers
    # drew interleaved with the others' and its weights were not the seed's.
    parallel_solver = helpers.write_solver(str(tmp_path), "par", B, 20, data)
    big_solver = helpers.write_solver(str(tmp_path), "big", 3 * B, 20, data)
    reference = one_worker_weights(big_solver, dtype=numpy.float64)
    for _ in range(3):        # unlocked, 2 runs in 3 went wrong
        result = parallel.train(parallel_solver, workers=3, mode="thread", dtype=numpy.float64, return_weights=True)
        assert numpy.abs(result.weights - reference).max() < 1e-10


@pytest.mark.parametrize("workers,dtype", [(2, numpy.float64), (3, numpy.float64), (2, numpy.float32)])
def test_deterministic_mode_is_exact(tmp_path, data, workers, dtype):
    parallel_solver = helpers.write_solver(str(tmp_path), "par", B, 30, data)
    big_solver = helpers.write_solver(str(tmp_path), "big", workers * B, 30, data)
    split = parallel.train(parallel_solver, workers=workers, deterministic=True, dtype=dtype,
                           return_weights=True)
    whole = parallel.train(big_solver, workers=1, deterministic=True, shards=workers, dtype=dtype,
                           return_weights=True)
    assert split.weights.dtype == dtype
    assert split.weights.tobytes() == whole.weights.tobytes()
    assert len(set(split.digests)) == 1


def test_layer_wise_whole_buffer_and_tree_reductions_agree_to_the_bit(tmp_path, data):
    path = helpers.write_solver(str(tmp_path), "par", B, 20, data)
    runs = [parallel.train(path, workers=2, layer_wise=lw, algorithm=algo)
            for lw, algo in [(True, "mpi"), (False, "mpi"), (True, "tree")]]
    assert len({d for r in runs for d in r.digests}) == 1


def test_only_the_root_snapshots_and_a_snapshot_resumes_with_another_worker_count(tmp_path, data):
    folder = str(tmp_path)
    extra = 'snapshot: 6 snapshot_prefix: "%s/run"' % folder
    two = helpers.write_solver(folder, "two", B, 12, data, extra)
    straight = parallel.train(two, workers=2, deterministic=True, dtype=numpy.float64, return_weights=True,
                              setup=functools.partial(helpers.count_snapshots, folder))
    with open(os.path.join(folder, "snapshots")) as f:
        assert f.read() == "0\n0\n"                 # iterations 6 and 12, by rank 0 alone
    state = os.path.join(folder, "run_iter_6.solverstate")
    # The same global batch on one worker, resumed halfway: the same weights to the bit.
    one = helpers.write_solver(folder, "one", 2 * B, 12, data, 'snapshot_prefix: "%s/one"' % folder)
    resumed = parallel.train(one, workers=1, deterministic=True, shards=2, dtype=numpy.float64,
                             resume=state, return_weights=True)
    assert resumed.iterations == 6
    assert resumed.weights.tobytes() == straight.weights.tobytes()
    # Three workers take over the same snapshot and carry on in step.
    three = parallel.train(two, workers=3, resume=state, dtype=numpy.float64)
    assert (three.iter, three.iterations, len(set(three.digests))) == (12, 6, 1)


def test_a_stop_request_stops_every_worker_at_the_same_iteration(tmp_path, data):
    folder = str(tmp_path)
    path = helpers.write_solver(folder, "long", B, 100000, data, 'snapshot_prefix: "%s/long"' % folder)
    snapshots = os.path.join(folder, "snapshots")
    polls = []

    # A snapshot request waits for the root's next iteration; a stop posted
    # before it is taken would replace it (on a busy machine the workers
    # could still be starting 1.5 s in), so the stop waits for the snapshot.
    def action_request():
        polls.append(1)
        if len(polls) == 1:
            return "snapshot"
        return "stop" if os.path.exists(snapshots) or len(polls) > 600 else None    # 60 s at most

    result = parallel.train(path, workers=2, action_request=action_request,
                            setup=functools.partial(helpers.count_snapshots, folder))
    assert result.stopped_early and 0 < result.iter < 100000
    assert len(set(result.digests)) == 1
    assert set(r["iter"] for r in result.reports) == {result.iter}
    with open(snapshots) as f:
        assert f.read() == "0\n"
