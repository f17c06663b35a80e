"""`pycaffe-dist time`: per-layer forward/backward timings (Caffe's `caffe time`)."""
import logging
import time as _time

from .. import backend
from ..net import Net
from .common import parse_gpus, parser, user_errors

log = logging.getLogger("pycaffe_dist")


def build_parser():
    p = parser("time", "Time forward and backward of every layer of a net.")
    p.add_flag("model", required=True, help="net prototxt")
    p.add_flag("iterations", type=int, default=50, help="number of timed iterations (default 50)")
    p.add_flag("gpu", default="", help="GPU id (default: CPU)")
    p.add_flag("phase", default="TRAIN", choices=("TRAIN", "TEST"), help="net phase")
    return p


def _sync(net):
    if net.xp is not backend.numpy:
        net.xp.cuda.Stream.null.synchronize()


def time_net(net, iterations):
    """Mean ms per layer for forward and backward, plus totals: (forward, backward, total).

    As Caffe's `caffe time`: one untimed forward and backward first (buffers
    are made then), then every layer timed on its own, each iteration's
    forward-backward time logged."""
    n = len(net.layers)
    fwd, bwd = [0.0] * n, [0.0] * n
    log.info("Performing Forward")
    log.info("Initial loss: %g", net.forward())
    log.info("Performing Backward")
    net.backward()
    log.info("*** Benchmark begins ***")
    log.info("Testing for %d iterations.", iterations)
    start = _time.perf_counter()
    for j in range(iterations):
        begin = _time.perf_counter()
        for i in range(n):
            t = _time.perf_counter()
            net.forward(i, i)
            _sync(net)
            fwd[i] += _time.perf_counter() - t
        for i in range(n - 1, -1, -1):
            t = _time.perf_counter()
            net.backward(i, i)
            _sync(net)
            bwd[i] += _time.perf_counter() - t
        log.info("Iteration: %d forward-backward time: %g ms.", j + 1, (_time.perf_counter() - begin) * 1000)
    total = _time.perf_counter() - start
    scale = 1000.0 / iterations
    return [f * scale for f in fwd], [b * scale for b in bwd], total * scale


@user_errors("time")
def main(argv):
    args = build_parser().parse_args(argv)
    gpus = parse_gpus(args.gpu)
    if gpus:
        backend.set_mode_gpu()
        backend.set_device(gpus[0])
    net = Net(args.model, 0 if args.phase == "TRAIN" else 1)
    fwd, bwd, total = time_net(net, args.iterations)
    # Caffe's layout: names right-aligned in 10 columns, C++'s default
    # six significant digits
    log.info("Average time per layer: ")
    for name, f, b in zip(net.layer_names, fwd, bwd):
        log.info("%10s\tforward: %g ms.", name, f)
        log.info("%10s\tbackward: %g ms.", name, b)
    log.info("Average Forward pass: %g ms.", sum(fwd))
    log.info("Average Backward pass: %g ms.", sum(bwd))
    log.info("Average Forward-Backward: %g ms.", total)
    log.info("Total Time: %g ms.", total * args.iterations)
    log.info("*** Benchmark ends ***")
    return 0
