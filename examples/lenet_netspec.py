"""LeNet on Fashion-MNIST from Python: NetSpec, a solver driven step by step, the log plotted.

Run from the repository root once `make demo` has made the LMDBs:

    .venv/bin/python examples/lenet_netspec.py              # 500 iterations, about a minute or two
    .venv/bin/python examples/lenet_netspec.py --iters 2000 --out /tmp/lenet

It writes into --out (default examples/output):
    lenet_train.prototxt, lenet_test.prototxt, lenet_solver.prototxt   what NetSpec generated
    lenet_train.log     the training log in Caffe's format
    lenet_curves.png    loss and accuracy against iterations and time (plot_log)
    lenet_net.png       a picture of the net (draw; .dot when graphviz is missing)

Each block below is one notebook cell of Caffe's "learning LeNet" tutorial,
written for `import pycaffe_dist as caffe`.
"""
import argparse
import os
import shutil
import sys

import numpy

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import pycaffe_dist as caffe  # noqa: E402
from pycaffe_dist import draw  # noqa: E402
from pycaffe_dist import layers as L  # noqa: E402
from pycaffe_dist import params as P  # noqa: E402
from pycaffe_dist.proto import caffe_pb2  # noqa: E402
from pycaffe_dist.tools.plot_log import plot_logs  # noqa: E402


# %% The net, written with NetSpec: one line per layer, tops named by assignment.
def lenet(lmdb, batch_size, accuracy=False):
    n = caffe.NetSpec()
    n.data, n.label = L.Data(batch_size=batch_size, backend=P.Data.LMDB, source=lmdb,
                             transform_param=dict(scale=1. / 255), ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type="xavier"))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=50, weight_filler=dict(type="xavier"))
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.fc1 = L.InnerProduct(n.pool2, num_output=500, weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.fc1, in_place=True)
    n.score = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type="xavier"))
    n.loss = L.SoftmaxWithLoss(n.score, n.label)
    if accuracy:
        n.accuracy = L.Accuracy(n.score, n.label)
    return n.to_proto()


# %% The solver, as a SolverParameter message (a .prototxt file works the same).
def solver_param(train_net, test_net, args):
    s = caffe_pb2.SolverParameter()
    s.train_net = train_net
    s.test_net.append(test_net)
    s.test_iter.append(args.test_iters)
    s.test_interval = args.test_interval
    s.base_lr, s.momentum, s.weight_decay = 0.01, 0.9, 5e-4
    s.lr_policy, s.gamma, s.power = "inv", 1e-4, 0.75
    s.display = args.display
    s.max_iter = args.iters
    s.snapshot_prefix = os.path.join(args.out, "lenet")
    s.random_seed = 1
    return s


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train-lmdb", default="data/fashion_mnist_train_lmdb")
    p.add_argument("--test-lmdb", default="data/fashion_mnist_test_lmdb")
    p.add_argument("--iters", type=int, default=500, help="training iterations (default 500)")
    p.add_argument("--batch", type=int, default=64, help="training batch size")
    p.add_argument("--test-batch", type=int, default=100)
    p.add_argument("--test-iters", type=int, default=20, help="test batches per test (default 20: 2000 images)")
    p.add_argument("--test-interval", type=int, default=100)
    p.add_argument("--display", type=int, default=50)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "output"))
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    for lmdb in (args.train_lmdb, args.test_lmdb):
        if not os.path.isdir(lmdb):
            sys.exit("%s not found: run `make demo` first (it converts Fashion-MNIST to LMDB)" % lmdb)
    os.makedirs(args.out, exist_ok=True)
    path = lambda name: os.path.join(args.out, name)  # noqa: E731

    # %% Generate the prototxt files; str() of a NetParameter is prototxt.
    with open(path("lenet_train.prototxt"), "w") as f:
        f.write(str(lenet(args.train_lmdb, args.batch)))
    with open(path("lenet_test.prototxt"), "w") as f:
        f.write(str(lenet(args.test_lmdb, args.test_batch, accuracy=True)))
    with open(path("lenet_solver.prototxt"), "w") as f:
        f.write(str(solver_param(path("lenet_train.prototxt"), path("lenet_test.prototxt"), args)))

    # %% Log in Caffe's format, to the terminal and to a file for plot_log.
    caffe.set_mode_cpu()
    caffe.init_log(filename=path("lenet_train.log"))
    solver = caffe.SGDSolver(path("lenet_solver.prototxt"))

    # %% Look inside before training: blob and parameter shapes.
    for name, blob in solver.net.blobs.items():
        print("%-8s %s" % (name, blob.shape))
    for name, params in solver.net.params.items():
        print("%-8s %s" % (name, [p.shape for p in params]))

    # %% Train, watching the first filters' gradient norm as we go. solve() is
    # step(max_iter) plus a last test; solver.step(n) trains n iterations at a time.
    norms = []
    solver.add_callback(lambda: None,
                        lambda: norms.append(float(numpy.linalg.norm(solver.net.params["conv1"][0].diff))))
    solver.solve()
    print("conv1 gradient norm: first %.4f, last %.4f" % (norms[0], norms[-1]))

    # %% Score a test batch by hand: argmax of the scores against the labels.
    test = solver.test_nets[0]
    out = test.forward(blobs=["score", "label"])
    accuracy = float((out["score"].argmax(1) == out["label"]).mean())
    print("accuracy on one test batch of %d: %.3f (the Accuracy layer says %.3f)"
          % (len(out["label"]), accuracy, out["accuracy"]))

    # %% Plot the log and draw the net.
    plot_logs([path("lenet_train.log")], path("lenet_curves.png"), title="LeNet on Fashion-MNIST (NetSpec)")
    net_picture = path("lenet_net.png") if shutil.which("dot") else path("lenet_net.dot")
    draw.draw_net_to_file(lenet(args.train_lmdb, args.batch), net_picture, rankdir="TB")
    print("wrote %s, %s and %s" % (path("lenet_train.log"), path("lenet_curves.png"), net_picture))
    return accuracy


if __name__ == "__main__":
    main()
