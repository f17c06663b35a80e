"""Under mpiexec: CompressedSGD's applied gradient and residual against the formulas, two steps, every codec."""
import itertools
import sys

import numpy

from pycaffe_dist.parallel.compression import CompressedSGD, columns_of
from pycaffe_dist.parallel.mpi import MPIComm
from pycaffe_dist.proto import caffe_pb2
from pycaffe_dist.solvers.base import Solver
from google.protobuf import text_format

NET = '''name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 2 dim: 5 } shape { dim: 2 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1" inner_product_param { num_output: 7 } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
'''

comm = MPIComm(timeout=30)
failures = []


def solver():
    param = caffe_pb2.SolverParameter()
    text_format.Merge('base_lr: 0.1 max_iter: 1 display: 0', param)
    param.net_param.CopyFrom(text_format.Parse(NET, caffe_pb2.NetParameter()))
    return Solver(param)


def gradient(rank, step, n):
    return numpy.random.default_rng(100 * rank + step).standard_normal(n).astype(numpy.float32)


def onebit_formula(g, columns):
    out = numpy.empty_like(g)
    for c in numpy.unique(columns):
        values = g[columns == c]
        positive = values > 0
        pos = values[positive].mean() if positive.any() else 0.0
        neg = values[~positive].mean() if (~positive).any() else 0.0
        out[columns == c] = numpy.where(positive, pos, neg)
    return out


def topk_formula(g, k):
    out = numpy.zeros_like(g)
    keep = numpy.argsort(-numpy.abs(g), kind="stable")[:k]
    out[keep] = g[keep]
    return out


for compression, feedback, staged in itertools.product(("onebit", "topk", "fp16"), (True, False), (False, True)):
    s = solver()
    strategy = CompressedSGD(comm, compression, error_feedback=feedback, topk_ratio=0.2, algorithm="ring")
    strategy.attach(s)
    strategy.stage_numpy = staged       # the host-copy path a CuPy gradient takes
    n = s.net.flat_diff.size
    columns = columns_of(s.net)
    k = max(1, int(round(0.2 * n)))
    quantize = {"onebit": lambda g, c=columns: onebit_formula(g, c), "topk": lambda g, k=k: topk_formula(g, k),
                "fp16": lambda g: g.astype(numpy.float16).astype(numpy.float32)}[compression]
    residuals = [numpy.zeros(n, numpy.float32) for _ in range(comm.size)]
    for step in range(2):
        s.net.flat_diff[...] = gradient(comm.rank, step, n)
        strategy.on_gradients_ready(s)
        sent = []
        for r in range(comm.size):          # every rank's contribution, by the formula
            g = gradient(r, step, n) + (residuals[r] if feedback else 0)
            q = quantize(g)
            sent.append(q)
            residuals[r] = g - q if feedback else residuals[r]
        expected = sum(sent) / comm.size
        tolerance = 2e-3 if compression == "fp16" else 1e-5
        name = "%s feedback=%s staged=%s step %d" % (compression, feedback, staged, step)
        if not numpy.allclose(s.net.flat_diff, expected, atol=tolerance):
            failures.append(name + ": applied gradient %g off" % numpy.abs(s.net.flat_diff - expected).max())
        if not numpy.allclose(strategy.residual, residuals[comm.rank], atol=1e-5):
            failures.append(name + ": residual %g off" % numpy.abs(strategy.residual - residuals[comm.rank]).max())

if failures:
    print("rank %d: %d failures:\n  %s" % (comm.rank, len(failures), "\n  ".join(failures)), flush=True)
    sys.exit(1)
print("rank %d: compression checks passed" % comm.rank, flush=True)
