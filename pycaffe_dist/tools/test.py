"""`pycaffe-dist test`: score a trained model (Caffe's `caffe test`)."""
import logging

import numpy

from .. import backend
from ..net import TEST, Net
from .common import parse_gpus, parser, user_errors

log = logging.getLogger("pycaffe_dist")


def build_parser():
    p = parser("test", "Run a model in the TEST phase for N batches and report its outputs.")
    p.add_flag("model", required=True, help="net prototxt")
    p.add_flag("weights", required=True, help=".caffemodel with the trained weights")
    p.add_flag("iterations", type=int, default=50, help="number of batches (default 50)")
    p.add_flag("gpu", default="", help="GPU id (default: CPU)")
    p.add_flag("level", type=int, default=0, help="net state level")
    p.add_flag("stage", default="", help="comma-separated net state stages")
    return p


@user_errors("test")
def main(argv):
    args = build_parser().parse_args(argv)
    gpus = parse_gpus(args.gpu)
    if gpus:
        backend.set_mode_gpu()
        backend.set_device(gpus[0])
    stages = [s for s in args.stage.split(",") if s]
    net = Net(args.model, TEST, level=args.level, stages=stages, weights=args.weights)
    log.info("Running for %d iterations.", args.iterations)
    sums, total_loss = {}, 0.0
    for i in range(args.iterations):
        loss = net.forward()
        total_loss += loss
        for name in net.outputs:
            values = backend.to_host(net.blobs[name].data).astype(numpy.float64).reshape(-1)
            sums[name] = sums[name] + values if name in sums else values.copy()
            for k, v in enumerate(values):
                log.info("Batch %d, %s = %g", i, name if values.size == 1 else "%s[%d]" % (name, k), v)
    log.info("Loss: %g", total_loss / args.iterations)
    for name in net.outputs:
        mean = sums[name] / args.iterations
        weight = net.blob_loss_weights.get(name, 0.0)
        for k, v in enumerate(mean):
            extra = " (* %g = %g loss)" % (weight, weight * v) if weight else ""
            log.info("%s = %g%s", name if mean.size == 1 else "%s[%d]" % (name, k), v, extra)
    return 0
