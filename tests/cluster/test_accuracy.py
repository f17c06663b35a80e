"""Issue 7's accuracy checks: every async strategy and compressed gradients train LeNet on Fashion-MNIST
to within 1 point of synchronous SGD for the same number of samples seen; 1-bit without error feedback
ends measurably lower than with it.

Each run trains Caffe's LeNet (prototxt/lenet_train_test.prototxt with MemoryData in place of the LMDB
layers) on a fixed draw of the Fashion-MNIST training set (each worker takes rows rank::workers, no image
is seen twice) and the root tests the final model on all 10,000 test images. Every run has 2 workers of
BATCH images. A strategy is compared with a synchronous run of its own budget: Downpour, SSP, fp16 and
1-bit with and without feedback at SHORT iterations (2 * 250 * 32 = 16,000 samples); the strategies that
delay part of the progress (EASGD and EAMSGD, whose center lags the workers, and 1-bit and top-k, whose
error feedback delays what they do not send) at LONG iterations (48,000 samples), past the steepest part
of the learning curve (BENCHMARKS.md, cluster section). All runs are one real `mpiexec` job
(programs/accuracy_job.py) that trains them one after another, so no run pays for a job's start-up, and
the workers share each run's test.

    python -m tests.cluster.test_accuracy [--seeds 1 2 3] [--only sync easgd ...] [--short 250] [--long 750]

prints every run's accuracy and wall time (BENCHMARKS.md, cluster section).
"""
import argparse
import json
import os
import sys
import tempfile
import threading
import time
import types

import numpy
import pytest
from google.protobuf import text_format

from pycaffe_dist.parallel.compression import OneBit
from pycaffe_dist.parallel.easgd import ElasticAveraging
from pycaffe_dist.parallel.loopback import LoopbackGroup
from pycaffe_dist.proto import io
from tests.parallel import helpers

from .mpirun import needs_mpi, run

LENET = os.path.join(os.path.dirname(__file__), "..", "..", "prototxt", "lenet_train_test.prototxt")
WORKERS = 2
BATCH = 32                 # each worker's batch
SHORT = 250                # each worker's iterations: 2 * 250 * 32 = 16,000 samples seen
LONG = 750                 # 48,000 samples (of the 60,000 training images)
LR = 0.03
POWER = 1                  # poly: the rate falls from LR to 0 as (1 - iter / iterations) ** POWER
MARGIN = 0.003             # 1-bit without error feedback ends at least this much lower (measured 0.0055 to 0.009)
BELOW_SYNC = 0.01          # the bar: within 1 point of synchronous SGD for the same samples

# Strategy settings (ClusterSettings overrides) and the ranks each needs beside the workers. The parameters
# are the usual ones (REFERENCES.md): EASGD and EAMSGD exchange every tau = 10 steps with alpha = beta / workers,
# beta = 0.9; Downpour pushes and fetches every step through one server rank (a third rank); SSP lets a rank
# run 1 clock ahead (with 2 clocks the result hung on the scheduling: seed 1 ended 0.3 to 1.9 points below
# sync, the 1.9 in a CI run).
STRATEGIES = {
    "sync": (0, {}),
    "downpour": (1, {"strategy": "downpour", "servers": 1, "n_fetch": 1, "n_push": 1}),
    "easgd": (0, {"strategy": "easgd", "tau": 10, "beta": 0.9}),
    "eamsgd": (0, {"strategy": "eamsgd", "tau": 10, "beta": 0.9}),
    "ssp": (0, {"strategy": "ssp", "staleness": 1}),
    "onebit": (0, {"compression": "onebit"}),
    "onebit_no_feedback": (0, {"compression": "onebit", "error_feedback": False}),
    "fp16": (0, {"compression": "fp16"}),
    "topk": (0, {"compression": "topk", "topk_ratio": 0.01}),
}
# The budget each strategy is held to 1 point at, and the runs (strategy, iterations) of the test. Points
# below sync measured over seeds 1-3 (BENCHMARKS.md, cluster section): at 16,000 samples Downpour -0.1 to 0.4,
# SSP 0.1 to 0.4 (both also with a CPU-bound process beside the job), fp16 -0.0 to 0.1; at 48,000 samples
# 1-bit 0.29 to 0.65, top-k 0.17 to 0.76, EAMSGD 0.65 to 0.96, EASGD 0.76 to 0.99. At 16,000 samples 1-bit
# trails by 0.7 to 1.1, top-k by 0.8 to 1.0 (error feedback delays what they do not send), EASGD and EAMSGD
# by 0.8 to 1.4. EASGD's center moves at p / (p + 1) of the workers' common drift (2/3 with 2 workers, whatever tau
# and alpha: see test_easgd_center_moves_at_p_over_p_plus_one_of_a_common_drift), which acts like 2/3 of
# the learning rate; more samples did not close that (seed 1: 1.1, 1.35, 0.8, 1.1 points at 16,000, 32,000,
# 48,000 and 60,000 samples), so EASGD and EAMSGD meet the bar at 48,000 with little room (0.01 to 0.35 points).
# Sync, EASGD, EAMSGD, fp16 and the compressed runs are deterministic (the same bits on every run); Downpour
# and SSP depend on the scheduling.
BUDGET = {"downpour": SHORT, "ssp": SHORT, "fp16": SHORT,
          "easgd": LONG, "eamsgd": LONG, "onebit": LONG, "topk": LONG}
RUNS = [("sync", SHORT), ("downpour", SHORT), ("ssp", SHORT), ("fp16", SHORT), ("onebit", SHORT),
        ("onebit_no_feedback", SHORT),
        ("sync", LONG), ("easgd", LONG), ("eamsgd", LONG), ("onebit", LONG), ("topk", LONG)]

needs_fashion = pytest.mark.skipif(not helpers.fashion_available(), reason="needs Fashion-MNIST")


def write_data(path, train, seed=0):
    """An .npz of `train` training images (a seeded draw of the 60,000) and all 10,000 test images, as uint8.

    Draws of different sizes start alike: the first 16,000 of a 48,000 draw are the 16,000 draw.
    """
    images, labels = helpers.fashion("train")
    if train > len(images):
        raise ValueError("%d samples need %d training images; Fashion-MNIST has %d"
                         % (train, train, len(images)))
    pick = numpy.random.default_rng(seed).permutation(len(images))[:train]
    test_images, test_labels = helpers.fashion("t10k")
    numpy.savez(path, train_x=images[pick], train_y=labels[pick], test_x=test_images, test_y=test_labels)
    return path


def write_solver(folder, iters, seed=1, lr=LR, batch=BATCH, power=POWER):
    """(solver, net) prototxt paths: LeNet with MemoryData layers (scale 1/256) and the LeNet solver's rates
    over `iters`. The solver does not test: accuracy_job.py tests the final weights with the net's TEST phase."""
    net, _ = io.read_net(LENET)
    for layer in net.layer:
        if layer.type == "Data":
            train = layer.include[0].phase == 0
            layer.type = "MemoryData"
            layer.ClearField("data_param")
            layer.memory_data_param.batch_size = batch if train else 100
            layer.memory_data_param.channels = 1
            layer.memory_data_param.height = layer.memory_data_param.width = 28
    net_path = os.path.join(folder, "lenet_net_b%d.prototxt" % batch)
    with open(net_path, "w") as f:
        f.write(text_format.MessageToString(net))
    path = os.path.join(folder, "lenet_solver_%d.prototxt" % iters)
    with open(path, "w") as f:
        f.write('net: "%s"\n'
                'base_lr: %g momentum: 0.9 weight_decay: 0.0005 lr_policy: "poly" power: %g\n'
                'max_iter: %d display: 0 snapshot_after_train: false random_seed: %d\n'
                % (net_path, lr, power, iters, seed))
    return path, net_path


def train_all(folder, runs, seed=1, lr=LR, batch=BATCH, power=POWER, timeout=900):
    """Train every (strategy, iterations) of `runs` in one mpiexec job (programs/accuracy_job.py).

    Returns {(strategy, iterations): (the root's accuracy on the 10,000 test images, wall seconds of the
    run: set-up, training and the test)} and the job's wall seconds.
    """
    data = {}
    for iters in sorted({iters for _, iters in runs}):
        data[iters] = write_data(os.path.join(folder, "fashion_%d.npz" % iters), WORKERS * iters * batch)
    spec = {"timeout": 60, "runs": []}
    for name, iters in runs:
        servers, settings = STRATEGIES[name]
        solver, net = write_solver(folder, iters, seed, lr, batch, power)
        spec["runs"].append({"name": "%s_%d" % (name, iters), "ranks": WORKERS + servers, "settings": settings,
                             "solver": solver, "net": net, "feed": data[iters]})
    spec_path = os.path.join(folder, "runs.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    started = time.perf_counter()
    ranks = max(r["ranks"] for r in spec["runs"])
    run(ranks, ["accuracy_job.py", spec_path, folder], timeout=timeout, runner=False)
    seconds = time.perf_counter() - started
    results = {}
    for (name, iters), entry in zip(runs, spec["runs"]):
        with open(os.path.join(folder, entry["name"] + ".json")) as f:
            root = json.load(f)
        assert root["iter"] == iters, (entry["name"], root["iter"])
        results[name, iters] = root["test_scores"][0]["accuracy"], root["seconds"]
    return results, seconds


@pytest.fixture(scope="module")
def accuracy(tmp_path_factory):
    """accuracy(strategy, iterations): the root's test accuracy after that run (all runs are one job, once)."""
    results, _ = train_all(str(tmp_path_factory.mktemp("accuracy")), RUNS)

    def of(name, iters):
        return results[name, iters][0]
    return of


@needs_mpi
@needs_fashion
@pytest.mark.parametrize("name", list(BUDGET))
def test_strategy_ends_within_one_point_of_synchronous_sgd_for_the_same_samples(accuracy, name):
    iters = BUDGET[name]
    synchronous = accuracy("sync", iters)
    assert synchronous >= 0.80, synchronous     # a meaningful accuracy, for the comparison to mean something
    assert accuracy(name, iters) >= synchronous - BELOW_SYNC, (name, iters, accuracy(name, iters), synchronous)


@needs_mpi
@needs_fashion
def test_one_bit_without_error_feedback_is_measurably_worse(accuracy):
    """Seide et al.'s claim: the error feedback is what makes 1 bit per value as good as 32."""
    with_feedback, without = accuracy("onebit", SHORT), accuracy("onebit_no_feedback", SHORT)
    assert without <= with_feedback - MARGIN, (without, with_feedback)


@pytest.mark.parametrize("workers,tau,beta", [(2, 10, 0.9), (2, 4, 0.5), (4, 10, 0.9)])
def test_easgd_center_moves_at_p_over_p_plus_one_of_a_common_drift(workers, tau, beta):
    """Why EASGD trails above: when every worker moves the same way at v per step, the lag L of the center
    before an exchange settles where L = (1 - alpha - p * alpha) * L + tau * v, so each exchange pulls the
    workers back by alpha * L = tau * v / (p + 1): the center advances at p / (p + 1) of v."""
    steps = 1000
    group = LoopbackGroup(workers)
    centers = [None] * workers

    def rank(r):
        net = types.SimpleNamespace(flat_data=numpy.zeros(3), xp=numpy)
        solver = types.SimpleNamespace(net=net, iter=0, is_root=False)
        easgd = ElasticAveraging(group.comm(r), tau, beta / workers)
        easgd.start(solver)
        for _ in range(steps):
            net.flat_data += 1.0             # the solver's step: the same drift on every worker
            solver.iter += 1
            easgd.iteration(solver)
        centers[r] = easgd.center / steps
    threads = [threading.Thread(target=rank, args=(r,)) for r in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(c is not None for c in centers), "a rank did not finish"
    for c in centers:
        assert numpy.allclose(c, workers / (workers + 1), atol=0.01), (c, workers / (workers + 1))


def test_one_bit_codec_gives_the_same_bits_for_columns_in_any_layout():
    """The codec sums contiguous columns with reduceat (fast) and any other layout with bincount: same result."""
    rng = numpy.random.default_rng(3)
    runs = numpy.repeat(numpy.arange(6), [5, 1, 9, 4, 7, 2])
    g = rng.standard_normal(runs.size).astype(numpy.float32)
    order = rng.permutation(runs.size)                  # the same columns, scattered over the buffer
    payload, sent = OneBit(runs).encode(g)
    scattered_payload, scattered_sent = OneBit(runs[order]).encode(g[order])
    assert numpy.allclose(scattered_sent, sent[order], atol=1e-6)
    assert numpy.allclose(OneBit(runs[order]).decode(scattered_payload), scattered_sent)
    for c in range(6):                                  # the formula: each value's sign side's column mean
        values = g[runs == c]
        positive = values[values > 0].mean() if (values > 0).any() else 0.0
        other = values[values <= 0].mean() if (values <= 0).any() else 0.0
        assert numpy.allclose(sent[runs == c], numpy.where(values > 0, positive, other), atol=1e-6)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="*", default=[1])
    p.add_argument("--only", nargs="*", default=None, help="strategies (default: the test's runs)")
    p.add_argument("--short", type=int, default=SHORT, help="iterations of the short budget")
    p.add_argument("--long", type=int, default=LONG, help="iterations of the long budget (0: none)")
    p.add_argument("--all-long", action="store_true", help="every strategy at the long budget too")
    p.add_argument("--batch", type=int, default=BATCH)
    p.add_argument("--lr", type=float, default=LR)
    p.add_argument("--power", type=float, default=POWER)
    args = p.parse_args(argv)
    runs = [(name, {SHORT: args.short, LONG: args.long}[iters]) for name, iters in RUNS]
    if args.all_long:
        runs += [(name, args.long) for name in STRATEGIES if (name, args.long) not in runs]
    runs = [(name, iters) for name, iters in dict.fromkeys(runs) if iters and (args.only is None or name in args.only)]
    print("LeNet on Fashion-MNIST: %d workers x batch %d, base_lr %g, poly power %g; 10,000 test images"
          % (WORKERS, args.batch, args.lr, args.power))
    print("%-20s %5s %7s %6s %9s %7s" % ("strategy", "ranks", "samples", "seed", "accuracy", "wall s"))
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as folder:
            results, seconds = train_all(folder, runs, seed, args.lr, args.batch, args.power)
        for name, iters in runs:
            accuracy, run_seconds = results[name, iters]
            print("%-20s %5d %7d %6d %9.4f %7.1f" % (name, WORKERS + STRATEGIES[name][0],
                                                     WORKERS * iters * args.batch, seed, accuracy, run_seconds))
        print("seed %d: one job of %d runs, %.1f s" % (seed, len(runs), seconds), flush=True)


if __name__ == "__main__":
    sys.exit(main())
