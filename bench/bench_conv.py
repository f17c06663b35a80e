"""The convolutions of LeNet, cifar10_quick/cifar10_full and CaffeNet, layer
by layer: pycaffe_dist's op against PyTorch CPU, forward and backward
separately, or (--compare) the op with and without the GEMM paths of
issue #8.

At one thread, times are medians of the calling thread's CPU time, which
other jobs on a shared machine disturb far less than wall time; both
frameworks run on the calling thread. At two threads (--threads 2) the
ops' second lane runs on a pool thread, so times are wall-clock medians.
The layout column says which column layout and input-gradient method the
cost model chose.

--compare alternates, in this one process, the op as it is and the op with
ops.gemm's blocked products, the shared backward columns
(conv.SHARED_COLUMNS), the bias inside the channels-first GEMM
(conv_columns.FUSED_BIAS) and channels-last products written straight into
y (conv_columns.DIRECT_OUTPUTS) switched off, and prints new/old per pass.

--winograd compares the same way with only the Winograd path
(ops/winograd.py) switched off: "old" is im2col + GEMM for every layer.
--fft does the same with the Fourier path (ops/fourier.py).

With --steps lenet,cifar10_quick, --compare (or --winograd) times whole
training steps (bench_step.py's nets and solver) instead of single layers.

--ways (issue #8, two cores) alternates, in one process, each layer at one
thread and at two threads run several ways: lanes at once with one-thread
chunks, with twice those, with conv.LANE_COLUMN_SCALE-times chunks, the same
lanes in turn on the calling thread, and as ops.threads.Choice picks;
wall-clock medians (--stat min: the least, which other jobs disturb less).

    .venv/bin/python bench/bench_conv.py [--rounds 15] [--threads 1] [--compare | --winograd | --fft]
        [--layers lenet/conv1,...] [--caffenet] [--steps lenet,cifar10_quick]
    .venv/bin/python bench/bench_conv.py --ways [--stat min] [--caffenet]
"""
import argparse
import os
import statistics
import sys
import time

THREADS = "1"
if "--threads" in sys.argv[1:-1]:
    THREADS = sys.argv[sys.argv.index("--threads") + 1]
if "--ways" in sys.argv[1:]:
    THREADS = "2"
os.environ.setdefault("OMP_NUM_THREADS", THREADS)
os.environ.setdefault("OPENBLAS_NUM_THREADS", THREADS)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# name: (batch, channels, outputs, size, kernel, stride, pad, group, input gradient needed)
# cifar10_full's convolutions have cifar10_quick's shapes.
LAYERS = {
    "lenet/conv1": (64, 1, 20, 28, 5, 1, 0, 1, False),
    "lenet/conv2": (64, 20, 50, 12, 5, 1, 0, 1, True),
    "cifar/conv1": (100, 3, 32, 32, 5, 1, 2, 1, False),
    "cifar/conv2": (100, 32, 32, 16, 5, 1, 2, 1, True),
    "cifar/conv3": (100, 32, 64, 8, 5, 1, 2, 1, True),
}
CAFFENET = {
    "caffenet/conv1": (16, 3, 96, 227, 11, 4, 0, 1, False),
    "caffenet/conv2": (16, 96, 256, 27, 5, 1, 2, 2, True),
    "caffenet/conv3": (16, 256, 384, 13, 3, 1, 1, 1, True),
    "caffenet/conv4": (16, 384, 384, 13, 3, 1, 1, 2, True),
    "caffenet/conv5": (16, 384, 256, 13, 3, 1, 1, 2, True),
}
# (module, setting, value that switches the path off)
GEMM_SWITCHES = (("gemm", "ENABLED", False), ("conv", "SHARED_COLUMNS", False),
                 ("conv_columns", "FUSED_BIAS", False), ("conv_columns", "DIRECT_OUTPUTS", 0))
WINOGRAD_SWITCHES = (("winograd", "ENABLED", False),)
FOURIER_SWITCHES = (("fourier", "ENABLED", False),)
SWITCHES = GEMM_SWITCHES      # what --compare switches off; --winograd sets WINOGRAD_SWITCHES
_SHIPPED = {}


def switch(on):
    """The compared paths on (as shipped) or off (as before)."""
    import importlib
    from pycaffe_dist import ops
    for module, name, off in SWITCHES:
        importlib.import_module("pycaffe_dist.ops." + module)
        owner = getattr(ops, module)
        _SHIPPED.setdefault((module, name), getattr(owner, name))
        setattr(owner, name, _SHIPPED[(module, name)] if on else off)


def out_size(size, kernel, stride, pad):
    return (size + 2 * pad - kernel) // stride + 1


def ours(batch, channels, outputs, size, kernel, stride, pad, group, needs_dx):
    import numpy
    from pycaffe_dist import ops
    rng = numpy.random.default_rng(0)
    op = ops.Convolution(ops.ConvGeometry((kernel, kernel), (stride, stride), (pad, pad), (1, 1)), group)
    x = rng.random((batch, channels, size, size), dtype=numpy.float32)
    w = rng.random((outputs, channels // group, kernel, kernel), dtype=numpy.float32)
    b = numpy.zeros(outputs, numpy.float32)
    out = out_size(size, kernel, stride, pad)
    y = numpy.empty((batch, outputs, out, out), numpy.float32)
    dy = rng.random(y.shape, dtype=numpy.float32)
    dw, db = numpy.zeros_like(w), numpy.zeros_like(b)
    dx = numpy.empty_like(x) if needs_dx else None

    def describe():
        if ops.fourier.use_fourier(op.geometry, group, channels, outputs, (size, size), batch, needs_dx):
            return "Fourier %dx%d" % ((size + 2 * pad,) * 2)
        m = ops.winograd.tile_size(op.geometry, group, channels, outputs, (size, size))
        if m is not None:
            return "Winograd F(%dx%d, %dx%d)" % (m, m, kernel, kernel)
        plan = op._plan(x.shape, outputs, 4)
        grad = "" if not needs_dx else (" + transposed conv" if plan.by_convolution else " + col2im")
        return plan.layout.__name__ + grad
    def forward():
        w.flat[0] = -w.flat[0]      # new weights each step, as in training (ops.fourier keeps a product of them)
        op.forward(x, w, b, y)
    return forward, (lambda: op.backward(x, dy, w, dw, db, dx)), describe


def pytorch(batch, channels, outputs, size, kernel, stride, pad, group, needs_dx):
    import torch
    torch.set_num_threads(int(THREADS))
    x = torch.rand(batch, channels, size, size, requires_grad=needs_dx)
    w = torch.rand(outputs, channels // group, kernel, kernel, requires_grad=True)
    b = torch.zeros(outputs, requires_grad=True)
    state = {}

    def conv():
        return torch.nn.functional.conv2d(x, w, b, stride=stride, padding=pad, groups=group)

    def forward():
        state["y"] = conv()
    dy = torch.rand_like(conv())

    def backward():
        state["y"].backward(dy)
    return forward, backward


def median_ms(times):
    return statistics.median(times) * 1e3


def measure(pairs, rounds, clock):
    """Alternate the (forward, backward) pairs for `rounds` rounds; median
    ms of each pass of each pair."""
    for f, b in pairs:          # warm-up: buffers, plans, first-call costs
        f()
        b()
    times = [([], []) for _ in pairs]
    for _ in range(rounds):
        for (f, b), (tf, tb) in zip(pairs, times):
            start = clock()
            f()
            middle = clock()
            b()
            tf.append(middle - start)
            tb.append(clock() - middle)
    return [(median_ms(tf), median_ms(tb)) for tf, tb in times]


def compare_steps(nets, rounds, clock):
    """Whole training steps (bench_step's nets and solver) with the paths on
    and off, alternating in rounds; median ms and the median of the
    rounds' new/old ratios."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_step import pycaffe_step
    print("%-15s %9s %9s %9s" % ("net", "new ms", "old ms", "new/old"))
    for net in nets:
        new, _ = pycaffe_step(net)
        old, _ = pycaffe_step(net)

        def off(old=old):
            switch(False)
            try:
                old()
            finally:
                switch(True)
        for fn in (new, off, new, off):
            fn()
        times, ratios = ([], []), []
        for _ in range(rounds):
            pair = ([], [])
            for fn, k in ((new, 0), (off, 1), (off, 1), (new, 0)):
                start = clock()
                fn()
                pair[k].append(clock() - start)
            times[0].extend(pair[0])
            times[1].extend(pair[1])
            ratios.append(sum(pair[0]) / sum(pair[1]))
        print("%-15s %9.2f %9.2f %9.3f" % (net, median_ms(times[0]), median_ms(times[1]), statistics.median(ratios)))


def _forced(parallel, way):
    """Choice.parallel that always answers `way` (and still counts the call, as record() expects)."""
    def forced(self, lanes):
        parallel(self, lanes)
        return way
    return forced


def ways(layers, rounds, stat):
    """Each layer at one thread and at two threads several ways (see above)."""
    from pycaffe_dist.ops import conv, threads
    scale, at_once = conv.LANE_COLUMN_SCALE, threads.Choice.parallel
    # (label, threads, chunk scale, way: True at once, False in turn, None as the Choice picks)
    variants = [("1 thread", 1, 1, None), ("at once 1x", 2, 1, True), ("at once 2x", 2, 2, True),
                ("at once %dx" % scale, 2, scale, True),
                ("in turn %dx" % scale, 2, scale, False), ("measured", 2, scale, None)]
    print("%-15s" % "layer" + "".join("%20s" % v[0] for v in variants))
    print("%-15s" % "" + "   fwd ms   bwd ms " * len(variants))
    for name, shape in layers.items():
        passes = [ours(*shape)[:2] for _ in variants]
        times = [([], []) for _ in variants]
        for r in range(rounds + 3):
            for (_, count, chunks, way), (f, b), (tf, tb) in zip(variants, passes, times):
                threads.set_count(count)
                conv.LANE_COLUMN_SCALE = chunks
                threads.Choice.parallel = at_once if way is None else _forced(at_once, way)
                try:
                    start = time.perf_counter()
                    f()
                    middle = time.perf_counter()
                    b()
                    end = time.perf_counter()
                finally:
                    threads.Choice.parallel, conv.LANE_COLUMN_SCALE = at_once, scale
                if r >= 3:      # the Choice's untimed calls and first trials
                    tf.append(middle - start)
                    tb.append(end - middle)
        print("%-15s" % name + "".join("  %7.2f  %7.2f " % (stat(tf) * 1e3, stat(tb) * 1e3) for tf, tb in times),
              flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compare", action="store_true", help="new/old in one process instead of against PyTorch")
    ap.add_argument("--winograd", action="store_true", help="like --compare, only the Winograd path switched off")
    ap.add_argument("--fft", action="store_true", help="like --compare, only the Fourier path switched off")
    ap.add_argument("--caffenet", action="store_true", help="CaffeNet's convolutions too (batch 16)")
    ap.add_argument("--layers", default="", help="comma-separated names (default: all)")
    ap.add_argument("--steps", default="", help="with --compare: whole training steps of these nets instead")
    ap.add_argument("--ways", action="store_true", help="one thread against two threads run several ways")
    ap.add_argument("--stat", choices=("median", "min"), default="median", help="with --ways")
    args = ap.parse_args()
    if args.winograd or args.fft:
        global SWITCHES
        SWITCHES = FOURIER_SWITCHES if args.fft else WINOGRAD_SWITCHES
        args.compare = True
    layers = dict(LAYERS, **(CAFFENET if args.caffenet else {}))
    if args.layers:
        layers = {name: {**LAYERS, **CAFFENET}[name] for name in args.layers.split(",")}
    if args.ways:
        print("wall ms (%s), load %.1f" % (args.stat, os.getloadavg()[0]))
        ways(layers, args.rounds, min if args.stat == "min" else statistics.median)
        print("load %.1f at the end" % os.getloadavg()[0])
        return 0
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    print("threads %d, %s, load %.1f" % (args.threads, "thread CPU ms" if args.threads == 1 else "wall ms",
                                        os.getloadavg()[0]))
    if args.compare and args.steps:
        compare_steps(args.steps.split(","), args.rounds, clock)
        return 0
    other = "old" if args.compare else "torch"
    print("%-15s %-36s %9s %9s %6s %9s %9s %6s" % ("layer", "layout", "fwd ms", other, "ratio",
                                                   "bwd ms", other, "ratio"))
    for name, shape in layers.items():
        f, b, describe = ours(*shape)
        if args.compare:
            fo, bo, _ = ours(*shape)

            def off(fn):
                def run():
                    switch(False)
                    try:
                        fn()
                    finally:
                        switch(True)
                return run
            (mf, mb), (of, ob) = measure([(f, b), (off(fo), off(bo))], args.rounds, clock)
        else:
            (mf, mb), (of, ob) = measure([(f, b), pytorch(*shape)], args.rounds, clock)
        print("%-15s %-36s %9.2f %9.2f %6.2f %9.2f %9.2f %6.2f" % (
            name, describe(), mf, of, mf / of, mb, ob, mb / ob))
    return 0


if __name__ == "__main__":
    sys.exit(main())
