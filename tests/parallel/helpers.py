"""Makers for the parallel tests: a small separable LMDB dataset, an MLP, solvers, worker hooks.

Hooks are module-level functions so worker processes can unpickle them.
"""
import functools
import os
import signal

import numpy

from pycaffe_dist.data import db
from pycaffe_dist.data.datum import array_to_datum
from pycaffe_dist.layers import dataset  # noqa: F401  (registers the Data layer)
from pycaffe_dist.solvers.base import Callback

CLASSES = 4
SIDE = 4          # records are 1 x SIDE x SIDE uint8 images


def write_dataset(path, count, seed=0):
    """An LMDB of `count` records in CLASSES well separated clusters; returns the path."""
    centres = numpy.random.default_rng(0).integers(40, 216, (CLASSES, 1, SIDE, SIDE))
    rng = numpy.random.default_rng(seed)     # the same classes, different samples
    with db.Writer(path) as writer:
        for i in range(count):
            label = int(rng.integers(CLASSES))
            image = numpy.clip(centres[label] + rng.normal(0, 12, centres[label].shape), 0, 255)
            writer.put("%08d" % i, array_to_datum(image.astype(numpy.uint8), label).SerializeToString())
    return path


def mlp_net(train_source, batch, test_source=None, test_batch=50, hidden=16):
    """Data -> InnerProduct -> ReLU -> InnerProduct -> SoftmaxWithLoss (+ Accuracy in TEST)."""
    test_data = accuracy = ""
    if test_source:
        test_data = '''
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { scale: 0.00390625 }
  data_param { source: "%s" batch_size: %d backend: LMDB } }''' % (test_source, test_batch)
        accuracy = '''
layer { name: "acc" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy" include { phase: TEST } }'''
    return '''name: "mlp"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.00390625 }
  data_param { source: "%s" batch_size: %d backend: LMDB } }%s
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: %d weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: %d weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }%s
''' % (train_source, batch, test_data, hidden, CLASSES, accuracy)


SOLVER_DEFAULTS = {"base_lr": 0.1, "momentum": 0.9, "weight_decay": 0.0005, "lr_policy": '"inv"',
                   "gamma": 0.01, "power": 0.75, "display": 0, "snapshot_after_train": "false",
                   "random_seed": 7}


def solver_text(net_path, max_iter, extra="", **fields):
    """A solver for `net_path`; `fields` replace the defaults above, `extra` is appended as is."""
    values = dict(SOLVER_DEFAULTS, **fields)
    body = " ".join("%s: %s" % item for item in values.items())
    return 'net: "%s" max_iter: %d\n%s\n%s\n' % (net_path, max_iter, body, extra)


def write_solver(folder, name, batch, max_iter, data, extra="", test_data=None, **fields):
    """net and solver prototxt files in `folder`; returns the solver's path."""
    net = os.path.join(folder, name + "_net.prototxt")
    with open(net, "w") as f:
        f.write(mlp_net(data, batch, test_data))
    path = os.path.join(folder, name + "_solver.prototxt")
    with open(path, "w") as f:
        f.write(solver_text(net, max_iter, extra, **fields))
    return path


# -- worker hooks ------------------------------------------------------------------------
class RaiseAt(Callback):
    """Raise ValueError at iteration `iteration` (to test failure handling)."""

    def __init__(self, iteration):
        self.iteration = iteration

    def on_start(self, solver):
        if solver.iter == self.iteration:
            raise ValueError("boom at iteration %d" % solver.iter)


class SaveWeights(Callback):
    """Save the weights to `path` (.npy) when iteration `iteration` starts: after that many updates."""

    def __init__(self, path, iteration):
        self.path, self.iteration = path, iteration

    def on_start(self, solver):
        if solver.iter == self.iteration:
            numpy.save(self.path, solver.net.flat_data)


def save_weights_at(folder, iteration, worker):
    """setup hook: the root saves its weights after `iteration` updates to folder/weights_at_<iteration>.npy."""
    if worker.rank == 0:
        worker.solver.add_callback(SaveWeights(os.path.join(folder, "weights_at_%d.npy" % iteration), iteration))


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


def probe_sharing(folder, worker):
    """setup hook: rank 0 writes a marker into its weights; the others report whether they see it."""
    import time
    weights = worker.solver.net.flat_data
    if worker.rank == 0:
        weights[-1] = 12345.0
        return
    deadline = time.monotonic() + 10
    while weights[-1] != 12345.0 and time.monotonic() < deadline:
        time.sleep(0.01)
    with open(os.path.join(folder, "seen%d" % worker.rank), "w") as f:
        f.write("yes" if weights[-1] == 12345.0 else "no")


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


# -- Fashion-MNIST through MemoryData ------------------------------------------------------
FASHION = "/usr/share/datasets/fashion-mnist"
FASHION_MISSING = ("Fashion-MNIST is not in %s: apt-get install dataset-fashion-mnist "
                   "(make demo installs it)" % FASHION)


def fashion_available():
    return os.path.exists(os.path.join(FASHION, "train-images-idx3-ubyte.gz"))


@functools.lru_cache(maxsize=None)
def fashion(split):
    """(images N x 1 x 28 x 28 uint8, labels N) of "train" or "t10k"."""
    from pycaffe_dist.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx
    images = read_idx(os.path.join(FASHION, split + "-images-idx3-ubyte.gz"), IMAGES_MAGIC)
    labels = read_idx(os.path.join(FASHION, split + "-labels-idx1-ubyte.gz"), LABELS_MAGIC)
    return images[:, None], labels


FASHION_MLP = '''name: "fashion_mlp"
layer { name: "data" type: "MemoryData" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.00390625 }
  memory_data_param { batch_size: %(batch)d channels: 1 height: 28 width: 28 } }
layer { name: "data" type: "MemoryData" top: "data" top: "label" include { phase: TEST }
  transform_param { scale: 0.00390625 }
  memory_data_param { batch_size: 100 channels: 1 height: 28 width: 28 } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param { num_output: 100 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy" include { phase: TEST } }
'''


def write_fashion_solver(folder, batch, max_iter, test_images=10000):
    net = os.path.join(folder, "fashion_net.prototxt")
    with open(net, "w") as f:
        f.write(FASHION_MLP % {"batch": batch})
    path = os.path.join(folder, "fashion_solver.prototxt")
    with open(path, "w") as f:
        f.write('''net: "%s" test_iter: %d test_interval: %d test_initialization: false
base_lr: 0.02 momentum: 0.9 weight_decay: 0.0005 lr_policy: "poly" power: 1
display: 0 max_iter: %d snapshot_after_train: false random_seed: 3
''' % (net, test_images // 100, max_iter, max_iter))
    return path


def feed_fashion(worker):
    """setup hook: worker r trains on Fashion-MNIST records r, r+N, ...; the root tests on t10k."""
    images, labels = fashion("train")
    net = worker.solver.net
    batch = net.layers[0].batch_size
    mine = slice(worker.rank, None, worker.size)
    n = len(images[mine]) // batch * batch
    net.layers[0].set_input_arrays(images[mine][:n], labels[mine][:n])
    for test_net in worker.solver.test_nets:
        images, labels = fashion("t10k")
        test_net.layers[0].set_input_arrays(images, labels)
