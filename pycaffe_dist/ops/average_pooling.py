"""Average pooling with Caffe's divisor, over (N, C, H, W) arrays.

Average pooling is linear: for small planes it is one GEMM with a (H*W,
OH*OW) matrix of window weights 1/pool_size (Caffe's pool size counts
padding up to H + pad); bigger planes use pooling.TwoStage's phase split and
two stages of sums, as max pooling does with maxima.
"""
import functools
import math

import numpy

from .. import backend
from . import kernels, threads
from .pooling import TwoStage

# Average pooling is a GEMM when its (H*W, OH*OW) matrix has at most this
# many entries, and the GEMM does at most GEMM_FACTOR times the additions of
# the separable sums (a GEMM flop is that much cheaper than a numpy add).
GEMM_MAX_ENTRIES = 1 << 20
GEMM_FACTOR = 32
# The GEMM's rows (planes) are cut into one contiguous run per thread where
# it does at least this many flops: cifar10's pool2 (105 MFLOP) forward and
# backward x0.76-0.77 at two threads (bench/bench_pooling.py --ave); pool3
# (13 MFLOP, 0.18 ms) measured x1.22 split, so it runs whole on the calling
# thread. A given thread count always cuts the same way.
GEMM_SPLIT_FLOPS = 1 << 25


def _average_weights(size, kernel, stride, pad, out):
    """(out, size) matrix of one axis' window weights: 1/extent on the window
    clipped to the input, where extent counts padding up to size + pad. A
    window that rounding up starts past the input holds none of it and
    averages to 0 (Caffe divides its empty sum by a size of 0 or less:
    NaN, or 0)."""
    weights = numpy.zeros((out, size))
    for o in range(out):
        start = o * stride - pad
        end = min(start + kernel, size + pad)
        if min(end, size) > max(start, 0):
            weights[o, max(start, 0):min(end, size)] = 1.0 / (end - start)
    return weights


class AveragePooling(TwoStage):
    """Average pooling with Caffe's divisor (padding counts, the overhang past it does not)."""

    def __init__(self, geometry):
        super().__init__(geometry)
        g = geometry
        self.rows = _average_weights(g.in_size[0], g.kernel[0], g.stride[0], g.pad[0], g.out_size[0])
        self.cols = _average_weights(g.in_size[1], g.kernel[1], g.stride[1], g.pad[1], g.out_size[1])
        entries = math.prod(g.in_size) * math.prod(g.out_size)
        separable_adds = (g.kernel[1] + g.kernel[0]) * g.plane_size
        self.use_gemm = entries <= GEMM_MAX_ENTRIES and entries <= GEMM_FACTOR * separable_adds
        self._cache = {}

    def _constant(self, name, xp, dtype, make):
        key = (name, numpy.dtype(dtype), xp)
        if key not in self._cache:
            self._cache[key] = backend.to_device(make().astype(dtype), xp)
        return self._cache[key]

    def _operator(self, xp, dtype):
        """The (H*W, OH*OW) matrix with y_plane = x_plane @ M."""
        g = self.geometry
        return self._constant("operator", xp, dtype, lambda: numpy.einsum(
            "ah,bw->hwab", self.rows, self.cols).reshape(math.prod(g.in_size), math.prod(g.out_size)))

    def _inverse_pool_size(self, xp, dtype):
        # A window's weight on either axis is 1/extent, so the largest weight
        # in each row of the per-axis matrices gives the divisor's factors.
        return self._constant("inverse", xp, dtype, lambda: numpy.outer(self.rows.max(axis=1),
                                                                        self.cols.max(axis=1)))

    def forward(self, x, y, track=True):
        if kernels.on_gpu(x):   # CuPy: one kernel (ops/kernels.py)
            return kernels.ave_pool_forward(self, x, y)
        xp = backend.get_array_module(x)
        n, c = x.shape[:2]
        if self.use_gemm:
            self._matmul(xp, x.reshape(n * c, -1), self._operator(xp, x.dtype), y.reshape(n * c, -1), "forward")
            return
        g = self.geometry
        planes, out = self._planes(x), self._planes(y)
        inverse = self._inverse_pool_size(xp, x.dtype)

        def block_average(op, p0, p1, block):
            nb = p1 - p0
            buf = op._split(xp, planes[p0:p1], block, 0)
            partial = op._partial(xp, nb, x.dtype)
            op._sum(xp, op._stage1_views(buf, nb), partial[:nb * g.plane_size])
            result = op._wide(xp, block, nb, x.dtype, "result")
            op._sum(xp, op._stage2_views(partial, nb), result)
            xp.multiply(result[:, :g.out_size[0], :g.out_size[1]], inverse, out=out[p0:p1])
        self._each_block(xp, planes.shape[0], x.itemsize, block_average)

    def _matmul(self, xp, a, b, out, kind):
        """out = a @ b, its rows split over the ops' threads (see GEMM_SPLIT_FLOPS)."""
        lanes = threads.count(xp) if 2 * a.shape[0] * a.shape[1] * b.shape[1] >= GEMM_SPLIT_FLOPS else 1
        if lanes < 2:
            xp.matmul(a, b, out=out)
            return
        runs = threads.split(range(a.shape[0]), lanes)
        threads.run([functools.partial(xp.matmul, a[r.start:r.stop], b, out=out[r.start:r.stop]) for r in runs],
                    self._choices["gemm " + kind])

    @staticmethod
    def _sum(xp, views, out):
        xp.copyto(out, views[0])
        for v in views[1:]:
            out += v

    def backward(self, dy, dx, x=None):
        if kernels.on_gpu(dy):   # CuPy: one kernel (ops/kernels.py)
            return kernels.ave_pool_backward(self, dy, dx)
        xp = backend.get_array_module(dy)
        n, c = dy.shape[:2]
        if self.use_gemm:
            self._matmul(xp, dy.reshape(n * c, -1), self._operator(xp, dy.dtype).T, dx.reshape(n * c, -1), "backward")
            return
        g = self.geometry
        grad, dx_planes = self._planes(dy), self._planes(dx)
        inverse = self._inverse_pool_size(xp, dy.dtype)

        def block_grad(op, p0, p1, block):
            nb = p1 - p0
            scaled = op._wide(xp, block, nb, dy.dtype, "grad")
            xp.multiply(grad[p0:p1], inverse, out=scaled[:, :g.out_size[0], :g.out_size[1]])
            partial = op._partial_grad(xp, nb, dy.dtype)
            for view in op._stage2_views(partial, nb):
                view += scaled
            buf = op._grad_buffer(xp, dx_planes[p0:p1], block)
            for view in op._stage1_views(buf, nb):
                view += partial[:nb * g.plane_size]
            op._merge(buf, dx_planes[p0:p1])
        self._each_block(xp, grad.shape[0], dy.itemsize, block_grad)
