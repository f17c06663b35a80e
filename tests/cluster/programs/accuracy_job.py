"""Under mpiexec: train several runs one after another in the same ranks, to skip a job's start-up per run.

    accuracy_job.py SPEC.json OUT

SPEC is {"timeout": seconds, "runs": [{"name", "solver", "net", "feed", "ranks", "settings"}, ...]}: each
run trains `solver` (pycaffe_dist.parallel.cluster.train) on the first `ranks` ranks of the job, with
ClusterSettings overrides `settings` ({"strategy": "easgd", "tau": 10, ...}) and its MemoryData layers fed
from the .npz `feed` as train_job.py --feed does (worker w takes train rows w::workers). The other ranks
sit the run out, sleeping.

The solver has no test of its own: the root's final weights go to every worker, worker w tests them on
test rows w::workers of the .npz with the TEST phase of `net` (batches of its MemoryData batch size), and
the counts are summed, so the workers share the test of all test_x that the root would run alone. The
root writes OUT/NAME.json: the run's iteration, test scores ({"accuracy", "loss"} over all test_x) and
wall seconds (the solver's set-up, training and the test).
"""
import json
import os
import sys
import time

import numpy

from pycaffe_dist.parallel import guardian

if guardian.wanted():            # before anything starts MPI: this process only watches the rank
    sys.exit(guardian.run_guarded([sys.executable] + sys.argv))

from pycaffe_dist.cli import setup_logging  # noqa: E402
from pycaffe_dist.net import TEST, Net  # noqa: E402
from pycaffe_dist.parallel import cluster, mpi  # noqa: E402
from pycaffe_dist.parallel.cluster_config import ClusterSettings  # noqa: E402


def feeder(data):
    """setup(solver, comm, settings) for cluster.train: the train MemoryData layer from the .npz `data`."""
    def setup(solver, comm, settings):
        workers = settings.workers(comm.size)
        solver.net.layers[0].set_input_arrays(data["train_x"][comm.rank::workers], data["train_y"][comm.rank::workers])
    return setup


def test(base, result, workers, net_path, data):
    """{"accuracy", "loss"} of the root's final weights on all test_x, each worker testing its share."""
    weights = base.bcast(result.weights if base.Get_rank() == 0 else None, 0)
    sums = numpy.zeros(3)                      # correct answers, summed loss, images
    if result.role == "worker":
        net = Net(net_path, phase=TEST)
        net.flat_data[...] = weights
        x, y = data["test_x"][result.rank::workers], data["test_y"][result.rank::workers]
        batch = net.layers[0].batch_size
        if len(x) % batch:
            fail("%s: %d test images for worker %d are not a whole number of batches of %d"
                 % (net_path, len(x), result.rank, batch))
        net.layers[0].set_input_arrays(x, y)
        for _ in range(len(x) // batch):
            sums[1] += net.forward() * batch
            sums[0] += float(net.blobs["accuracy"].data) * batch
        sums[2] = len(x)
    total = numpy.zeros(3)
    base.Allreduce(sums, total)
    return {"accuracy": total[0] / total[2], "loss": total[1] / total[2]}


def fail(message):
    """Say what is wrong and end every rank of the job (the others may be waiting for this one)."""
    print("accuracy_job.py: error: %s" % message, file=sys.stderr, flush=True)
    mpi._mpi().COMM_WORLD.Abort(1)


def wait_for_everyone(world):
    """A barrier that sleeps while it waits: a rank sitting a run out leaves the cores to those training."""
    request = world.Ibarrier()
    while not request.Test():
        time.sleep(0.01)


def main():
    spec_path, out = sys.argv[1:3]
    with open(spec_path) as f:
        spec = json.load(f)
    setup_logging()
    MPI = mpi._mpi()
    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    feeds = {}
    for run in spec["runs"]:
        ranks = int(run["ranks"])
        if not 1 <= ranks <= size:
            fail("%s: run %r needs %d ranks; the job has %d" % (spec_path, run["name"], ranks, size))
        base = world if ranks == size else world.Split(0 if rank < ranks else MPI.UNDEFINED, rank)
        if rank < ranks:
            if run["feed"] not in feeds:
                feeds[run["feed"]] = numpy.load(run["feed"])
            data = feeds[run["feed"]]
            started = time.perf_counter()
            comm = mpi.MPIComm(spec["timeout"], base)
            result = cluster.train(run["solver"], setup=feeder(data), comm=comm, **run["settings"])
            workers = ClusterSettings(**run["settings"]).workers(ranks)
            scores = test(base, result, workers, run["net"], data)
            if rank == 0:
                with open(os.path.join(out, run["name"] + ".json"), "w") as f:
                    json.dump({"iter": result.iter, "test_scores": [scores],
                               "seconds": time.perf_counter() - started}, f)
        wait_for_everyone(world)


if __name__ == "__main__":
    main()
