"""Under mpiexec: train a solver as one rank (pycaffe_dist.parallel.cluster) and write what this rank ended with.

    train_job.py SOLVER OUT [--fail RANK:ITER:HOW] [--resume STATE] [--feed NPZ] [--set key=value ...] [--gpu IDS]

Writes OUT/rank<r>.npy (final flat weights) and OUT/rank<r>.json (iteration,
the root's test scores). --fail makes rank RANK, at iteration ITER, stop
itself (HOW = stop: SIGSTOP, a stalled process), die (kill: SIGKILL) or
raise. --feed fills MemoryData layers from an .npz of train_x/train_y
(each rank takes rows rank::workers) and test_x/test_y. --set overrides
ClusterSettings fields (strategy=ssp staleness=2 ...).
"""
import argparse
import json
import os
import signal
import sys

import numpy

from pycaffe_dist.parallel import guardian

if guardian.wanted():            # before anything starts MPI: this process only watches the rank
    sys.exit(guardian.run_guarded([sys.executable] + sys.argv))

from pycaffe_dist.cli import setup_logging  # noqa: E402
from pycaffe_dist.parallel import cluster  # noqa: E402
from pycaffe_dist.parallel.cluster_config import ClusterSettings  # noqa: E402
from pycaffe_dist.solvers.base import Callback  # noqa: E402


class Fail(Callback):
    def __init__(self, iteration, how):
        self.iteration, self.how = iteration, how

    def on_start(self, solver):
        if solver.iter == self.iteration:
            sys.stdout.flush()
            if self.how == "raise":
                raise ValueError("test failure at iteration %d" % solver.iter)
            os.kill(os.getpid(), signal.SIGSTOP if self.how == "stop" else signal.SIGKILL)


def parse_value(key, text):
    kind = type(getattr(ClusterSettings, key))
    return text.lower() in ("1", "true", "yes") if kind is bool else kind(text)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("solver")
    p.add_argument("out")
    p.add_argument("--fail")
    p.add_argument("--resume")
    p.add_argument("--feed")
    p.add_argument("--set", nargs="*", default=[])
    p.add_argument("--gpu", default="", help="device ids, as train's -gpu: each rank takes one")
    args = p.parse_args()
    setup_logging()
    overrides = {}
    for item in args.set:
        key, value = item.split("=", 1)
        overrides[key] = parse_value(key, value)

    def setup(solver, comm, settings):
        if args.fail:
            rank, iteration, how = args.fail.split(":")
            if comm.rank == int(rank):
                solver.add_callback(Fail(int(iteration), how))
        if args.feed:
            data = numpy.load(args.feed)
            workers = settings.workers(comm.size)
            x, y = data["train_x"][comm.rank::workers], data["train_y"][comm.rank::workers]
            solver.net.layers[0].set_input_arrays(x, y)
            for net in solver.test_nets:
                net.layers[0].set_input_arrays(data["test_x"], data["test_y"])

    gpus = [int(g) for g in args.gpu.split(",")] if args.gpu else ()
    result = cluster.train(args.solver, resume=args.resume, setup=setup, gpus=gpus, **overrides)
    name = os.path.join(args.out, "%s%d" % (result.role, result.rank))
    if result.weights is not None:
        numpy.save(name + ".npy", result.weights)
    with open(name + ".json", "w") as f:
        json.dump({"iter": result.iter, "test_scores": result.test_scores}, f)


if __name__ == "__main__":
    main()
