"""ReLU in blocks (ops.threads.elementwise) against whole-array passes.

For each shape (cifar10's relu1/relu2 and pool1 sizes, CaffeNet's relu1
and relu2) and slope (ReLU, leaky ReLU), one process alternates the
whole-array passes (the code before blocks) and the layer's forward and
backward, at one and at two of the ops' threads, with the caches evicted
before every call as in a net; it prints the least ms of each and the
median over rounds of new over old (below 1: the blocks are faster).

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/bench_elementwise.py [--rounds 30]
"""
import argparse
import functools
import os
import statistics
import sys
import time

import numpy

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHAPES = [(64, 500), (100, 64, 8, 8), (100, 32, 16, 16), (100, 32, 32, 32), (16, 96, 55, 55), (16, 256, 27, 27)]


def layers_and_blobs(shape, slope, rng):
    """Two ReLU layers on the same blobs: one for the whole-array passes,
    one for the layer's own way (each keeps its own scratch buffers)."""
    from pycaffe_dist.blob import Blob
    from pycaffe_dist.layers.neuron import ReLU
    from pycaffe_dist.proto import caffe_pb2
    param = caffe_pb2.LayerParameter(name="relu", type="ReLU")
    param.relu_param.negative_slope = slope
    bottom, top = Blob(shape), Blob(shape)
    bottom.data[...] = rng.standard_normal(shape, dtype=numpy.float32)
    top.diff[...] = rng.standard_normal(shape, dtype=numpy.float32)
    layers = [ReLU(param), ReLU(param)]
    for layer in layers:
        layer.setup([bottom], [top])
    return layers, bottom, top


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args(argv)
    from pycaffe_dist.ops import threads
    rng = numpy.random.default_rng(0)
    evict = numpy.empty(8 << 20, numpy.float32)
    print("load average %.2f" % os.getloadavg()[0])
    for slope in (0.0, 0.1):
        for shape in SHAPES:
            (whole, layer), bottom, top = layers_and_blobs(shape, slope, rng)
            ways = {("backward", "old"): functools.partial(whole._backward, "", bottom.data, top.diff, bottom.diff),
                    ("backward", "new"): functools.partial(layer.backward, [top], [True], [bottom]),
                    ("forward", "old"): functools.partial(whole._forward, "", bottom.data, top.data),
                    ("forward", "new"): functools.partial(layer.forward, [bottom], [top])}
            runners = {(count,) + way: run for count in (1, 2) for way, run in ways.items()}
            times = {key: [] for key in runners}
            for _ in range(args.rounds + 5):
                for key, run in runners.items():
                    threads.set_count(key[0])
                    evict += 1
                    start = time.perf_counter()
                    run()
                    times[key].append(time.perf_counter() - start)
            threads.set_count(1)
            cells = []
            for count, kind, way in runners:
                if way == "new":
                    old, new = times[(count, kind, "old")][5:], times[(count, kind, "new")][5:]
                    cells.append("%dt %s %.3f -> %.3f ms (x%.2f)" % (
                        count, kind, min(old) * 1e3, min(new) * 1e3,
                        statistics.median(b / a for a, b in zip(old, new))))
            print("slope %g %s: %s" % (slope, shape, "; ".join(cells)))
    print("load average %.2f" % os.getloadavg()[0])


if __name__ == "__main__":
    main()
