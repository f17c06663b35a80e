"""The convolutions of LeNet and cifar10_quick, layer by layer: pycaffe_dist's
op against PyTorch CPU at one thread, forward and backward separately.

Times are medians of the calling thread's CPU time, which other jobs on a
shared machine disturb far less than wall time; both frameworks run on the
calling thread at one thread. The layout column says which column layout
and input-gradient method the cost model chose.

    .venv/bin/python bench/bench_conv.py [--rounds 15]
"""
import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# name: (batch, channels, outputs, size, pad, input gradient needed)
LAYERS = {
    "lenet/conv1": (64, 1, 20, 28, 0, False),
    "lenet/conv2": (64, 20, 50, 12, 0, True),
    "cifar/conv1": (100, 3, 32, 32, 2, False),
    "cifar/conv2": (100, 32, 32, 16, 2, True),
    "cifar/conv3": (100, 32, 64, 8, 2, True),
}


def ours(batch, channels, outputs, size, pad, needs_dx):
    import numpy
    from pycaffe_dist import ops
    rng = numpy.random.default_rng(0)
    op = ops.Convolution(ops.ConvGeometry((5, 5), (1, 1), (pad, pad), (1, 1)))
    x = rng.random((batch, channels, size, size), dtype=numpy.float32)
    w = rng.random((outputs, channels, 5, 5), dtype=numpy.float32)
    b = numpy.zeros(outputs, numpy.float32)
    out = size + 2 * pad - 4
    y = numpy.empty((batch, outputs, out, out), numpy.float32)
    dy = rng.random(y.shape, dtype=numpy.float32)
    dw, db = numpy.zeros_like(w), numpy.zeros_like(b)
    dx = numpy.empty_like(x) if needs_dx else None

    def describe():
        plan = op._plan(x.shape, outputs, 4)
        grad = "" if not needs_dx else (" + transposed conv" if plan.by_convolution else " + col2im")
        return plan.layout.__name__ + grad
    return (lambda: op.forward(x, w, b, y)), (lambda: op.backward(x, dy, w, dw, db, dx)), describe


def pytorch(batch, channels, outputs, size, pad, needs_dx):
    import torch
    torch.set_num_threads(1)
    x = torch.rand(batch, channels, size, size, requires_grad=needs_dx)
    w = torch.rand(outputs, channels, 5, 5, requires_grad=True)
    b = torch.zeros(outputs, requires_grad=True)
    state = {}

    def forward():
        state["y"] = torch.nn.functional.conv2d(x, w, b, padding=pad)
    dy = torch.rand_like(torch.nn.functional.conv2d(x, w, b, padding=pad))

    def backward():
        state["y"].backward(dy)
    return forward, backward


def median_ms(times):
    return statistics.median(times) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    print("%-12s %-36s %9s %9s %6s %9s %9s %6s" % ("layer", "layout", "fwd ms", "torch", "ratio",
                                                   "bwd ms", "torch", "ratio"))
    for name, shape in LAYERS.items():
        f, b, describe = ours(*shape)
        tf, tb = pytorch(*shape)
        times = {k: [] for k in ("f", "b", "tf", "tb")}
        for fn in (f, b, tf, tb):      # warm-up: buffers, plans, first-call costs
            fn()
        for _ in range(args.rounds):
            for key, pair in (("f", (f, b)), ("tf", (tf, tb))):
                start = time.thread_time()
                pair[0]()
                middle = time.thread_time()
                pair[1]()
                times[key].append(middle - start)
                times["b" if key == "f" else "tb"].append(time.thread_time() - middle)
        m = {k: median_ms(v) for k, v in times.items()}
        print("%-12s %-36s %9.2f %9.2f %6.2f %9.2f %9.2f %6.2f" % (
            name, describe(), m["f"], m["tf"], m["f"] / m["tf"], m["b"], m["tb"], m["b"] / m["tb"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
