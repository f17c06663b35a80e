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
    """Mean ms per layer for forward and backward, plus totals: (forward, backward, total)."""
    n = len(net.layers)
    fwd, bwd = [0.0] * n, [0.0] * n
    net.forward()
    net.backward()
    start = _time.perf_counter()
    for _ in range(iterations):
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
    log.info("Performing Forward-Backward, %d iterations.", args.iterations)
    fwd, bwd, total = time_net(net, args.iterations)
    log.info("Average time per layer: ")
    for name, f, b in zip(net.layer_names, fwd, bwd):
        log.info("%12s\tforward: %.5f ms.", name, f)
        log.info("%12s\tbackward: %.5f ms.", name, b)
    log.info("Average Forward pass: %.5f ms.", sum(fwd))
    log.info("Average Backward pass: %.5f ms.", sum(bwd))
    log.info("Average Forward-Backward: %.5f ms.", total)
    log.info("Total Time: %.5f ms.", total * args.iterations)
    return 0
