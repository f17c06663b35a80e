"""Makers for the parallel tests: a small separable LMDB dataset, an MLP, solvers, worker hooks.

Hooks are module-level functions so worker processes can unpickle them.
"""
import os
import signal

import numpy

from pycaffe_dist.data import db
from pycaffe_dist.data.datum import array_to_datum
from pycaffe_dist.layers import dataset  # noqa: F401  (registers the Data layer)
from pycaffe_dist.parallel import launcher
from pycaffe_dist.solvers.base import Callback

CLASSES = 4
SIDE = 4          # records are 1 x SIDE x SIDE uint8 images


def write_dataset(path, count, seed=0):
    """An LMDB of `count` records in CLASSES well separated clusters; returns the path."""
    rng = numpy.random.default_rng(seed)
    centres = rng.integers(40, 216, (CLASSES, 1, SIDE, SIDE))
    with db.Writer(path) as writer:
        for i in range(count):
            label = int(rng.integers(CLASSES))
            image = numpy.clip(centres[label] + rng.normal(0, 12, centres[label].shape), 0, 255)
            writer.put("%08d" % i, array_to_datum(image.astype(numpy.uint8), label).SerializeToString())
    return path


def mlp_net(train_source, batch, test_source=None, test_batch=50, hidden=16):
    """Data -> InnerProduct -> ReLU -> InnerProduct -> SoftmaxWithLoss (+ Accuracy in TEST)."""
    test = ""
    if test_source:
        test = '''
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { scale: 0.00390625 }
  data_param { source: "%s" batch_size: %d backend: LMDB } }
layer { name: "acc" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy" include { phase: TEST } }
''' % (test_source, test_batch)
    return '''name: "mlp"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.00390625 }
  data_param { source: "%s" batch_size: %d backend: LMDB } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: %d weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: %d weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
%s''' % (train_source, batch, hidden, CLASSES, test)


def solver_text(net_path, max_iter, extra=""):
    return '''net: "%s"
base_lr: 0.1 momentum: 0.9 weight_decay: 0.0005 lr_policy: "inv" gamma: 0.01 power: 0.75
display: 0 max_iter: %d snapshot_after_train: false random_seed: 7
%s''' % (net_path, max_iter, extra)


def write_solver(folder, name, batch, max_iter, data, extra="", test_data=None):
    """net and solver prototxt files in `folder`; returns the solver's path."""
    net = os.path.join(folder, name + "_net.prototxt")
    with open(net, "w") as f:
        f.write(mlp_net(data, batch, test_data))
    path = os.path.join(folder, name + "_solver.prototxt")
    with open(path, "w") as f:
        f.write(solver_text(net, max_iter, extra))
    return path


# -- worker hooks ------------------------------------------------------------------------
class RaiseAt(Callback):
    """Raise ValueError at iteration `iteration` (to test failure handling)."""

    def __init__(self, iteration):
        self.iteration = iteration

    def on_start(self, solver):
        if solver.iter == self.iteration:
            raise ValueError("boom at iteration %d" % solver.iter)


def record_pid(folder, worker):
    """setup hook: write this worker's pid to folder/pid<rank>."""
    path = os.path.join(folder, "pid%d" % worker.rank)
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)


def fail_on_rank(rank, iteration, folder, worker):
    """setup hook: record the pid; worker `rank` raises at `iteration`."""
    record_pid(folder, worker)
    if worker.rank == rank:
        worker.solver.add_callback(RaiseAt(iteration))


def count_snapshots(folder, worker):
    """setup hook: append this worker's rank to folder/snapshots at every snapshot."""
    solver = worker.solver
    original = solver.snapshot

    def snapshot():
        with open(os.path.join(folder, "snapshots"), "a") as f:
            f.write("%d\n" % worker.rank)
        return original()
    solver.snapshot = snapshot


def processes_alive(pids):
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
            alive.append(pid)
        except ProcessLookupError:
            pass
    return alive


def read_pids(folder, count):
    pids = []
    for rank in range(count):
        path = os.path.join(folder, "pid%d" % rank)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            pids.append(int(f.read()))
    return pids


def kill(pid):
    os.kill(pid, signal.SIGKILL)


STOP = launcher.STOP
