"""The solver update in cache-sized blocks against the same formulas over whole buffers.

The baseline is what Solver.apply_update did before it went block by block:
per-element lr_mult/decay_mult arrays, a parameter-sized scratch, each pass
over the whole flat buffer. Both run in this process, alternating; the
ratio is blocked / whole-buffer (below 1.0: faster).

    .venv/bin/python bench/bench_update.py [--sizes 0.43,37.7] [--types SGD,Adam] [--rounds 7]
"""
import argparse
import os
import sys
import time

import numpy

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from google.protobuf import text_format  # noqa: E402

from pycaffe_dist.proto import caffe_pb2  # noqa: E402
from pycaffe_dist.solvers import Solver, updates  # noqa: E402

NET = '''
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: %d } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "y"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        inner_product_param { num_output: %d } }
'''


def solver(millions, solver_type):
    inputs = 4096
    outputs = max(1, int(millions * 1e6 / inputs))
    param = text_format.Parse('base_lr: 0.01 lr_policy: "fixed" momentum: 0.9 momentum2: 0.999 weight_decay: 5e-4 '
                              'type: "%s" display: 0' % solver_type, caffe_pb2.SolverParameter())
    param.net_param.CopyFrom(text_format.Parse(NET % (inputs, outputs), caffe_pb2.NetParameter()))
    return Solver(param, "<bench>", dtype=numpy.float32)


def whole_buffer(s):
    """The update over whole buffers with per-element multipliers (the old code path)."""
    n = s.net.flat_data.size
    lr_mult, decay_mult = numpy.zeros(n, numpy.float32), numpy.zeros(n, numpy.float32)
    for info in s.net.learnable:
        lr_mult[info.offset:info.offset + info.blob.count] = info.lr_mult
        decay_mult[info.offset:info.offset + info.blob.count] = info.decay_mult
    tmp, rate = numpy.zeros(n, numpy.float32), numpy.zeros(n, numpy.float32)
    p = s.param

    def step():
        g, w = s.net.flat_diff, s.net.flat_data
        numpy.multiply(decay_mult, p.weight_decay, out=tmp)
        numpy.multiply(tmp, w, out=tmp)
        g += tmp
        numpy.multiply(lr_mult, 0.01, out=rate)
        updates.RULES[s.type][0](numpy, p, g, rate, s.history, tmp, s.iter)
        w -= g
    return step


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="0.43,37.7", help="millions of parameters")
    ap.add_argument("--types", default="SGD,Adam")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    print("%-6s %10s %14s %14s %7s" % ("type", "params", "whole ms", "blocked ms", "ratio"))
    for solver_type in args.types.split(","):
        for millions in (float(m) for m in args.sizes.split(",")):
            s = solver(millions, solver_type)
            old, new = whole_buffer(s), s.apply_update
            times = {"old": [], "new": []}
            for _ in range(args.rounds):
                for name, step in (("old", old), ("new", new)):
                    s.net.flat_diff[...] = 1e-3
                    start = time.perf_counter()
                    step()
                    times[name].append(time.perf_counter() - start)
            o, b = (1e3 * float(numpy.median(times[k][1:])) for k in ("old", "new"))
            print("%-6s %10d %14.2f %14.2f %7.2f" % (solver_type, s.net.flat_data.size, o, b, b / o), flush=True)
    print("# threads: OPENBLAS_NUM_THREADS=%s; load average %.2f" % (os.environ.get("OPENBLAS_NUM_THREADS", "unset"),
                                                                   os.getloadavg()[0]))


if __name__ == "__main__":
    main()
