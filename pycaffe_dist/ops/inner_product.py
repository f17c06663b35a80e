"""InnerProduct's three GEMMs, split over the ops' threads, and its weight
gradient accumulated block by block.

With W stored (N, K) (or (K, N) with transpose), the layer computes
  forward:         y  (M, N)  = x (M, K) @ W^T
  weight gradient: dW (N, K) += dy^T @ x     (transposed: dW (K, N) += x^T @ dy)
  input gradient:  dx (M, K)  = dy (M, N) @ W
BLAS is held to one thread (ops/threads.py), so a GEMM large enough to
share is cut by output columns (forward, input gradient) or weight rows
(weight gradient) into one contiguous run per thread; numpy releases the
GIL inside each product. Every output element is still one dot product
over the same inputs, so the split changes results by float rounding at
most.

numpy's matmul cannot accumulate (no GEMM beta), so the weight gradient is
a product into scratch and an add. For CaffeNet's fc6 (4096 x 9216) a
whole-matrix scratch costs an extra 150 MB write and read per iteration;
in blocks of weight rows the scratch stays in cache and only the gradient
itself crosses memory.
"""
import functools

import numpy

from .. import backend
from . import threads
from .workspace import Workspace

BLOCK_BYTES = 1 << 20   # one weight-gradient block: stays in L2 while it is added
SPLIT_FLOPS = 1 << 23   # smaller products run on one thread: the pool's hand-off would show
# Batches of at most this many rows multiply transposed: out^T = b^T @ a^T,
# the weights as the left operand (OpenBLAS runs CaffeNet's fc6 at batch 16
# in 27 ms that way against 32 ms for x @ W^T, and its input gradient in
# 28-38 ms against 44), into a scratch whose transpose is then copied out.
TRANSPOSED_ROWS = 32


class InnerProduct:
    """The GEMMs of one InnerProduct layer; its scratch is reused across iterations."""

    def __init__(self):
        self.workspace = Workspace()
        self._choices = threads.Choices()

    @staticmethod
    def _parts(xp, flops, columns):
        if flops < SPLIT_FLOPS:
            return 1
        return max(1, min(threads.count(xp), columns))

    @staticmethod
    def _column_runs(columns, parts):
        return [(r.start, r.stop) for r in threads.split(range(columns), parts)]

    def forward(self, x, w, y, transpose):
        """y = x @ W^T (x @ W with transpose)."""
        xp = backend.get_array_module(x)
        wt = w if transpose else w.T                        # (K, N)
        parts = self._parts(xp, 2 * x.shape[0] * wt.shape[0] * wt.shape[1], wt.shape[1])
        self._by_columns(xp, x, wt, y, parts, self._choices["forward"], "forward")

    def input_grad(self, dy, w, dx, transpose):
        """dx = dy @ W (dy @ W^T with transpose)."""
        xp = backend.get_array_module(dy)
        wn = w.T if transpose else w                        # (N, K)
        parts = self._parts(xp, 2 * dy.shape[0] * wn.shape[0] * wn.shape[1], wn.shape[1])
        self._by_columns(xp, dy, wn, dx, parts, self._choices["input_grad"], "input_grad")

    def _by_columns(self, xp, a, b, out, parts, choice, name):
        """out = a @ b, one run of out's columns per thread; small batches as
        out^T = b^T @ a^T into the scratch called `name`, then copied out."""
        transposed = xp is numpy and a.shape[0] <= TRANSPOSED_ROWS
        if parts == 1 and not transposed:
            xp.matmul(a, b, out=out)
            return
        if transposed:
            scratch = self.workspace.get(name, (b.shape[1], a.shape[0]), out.dtype, xp)
            products = [functools.partial(numpy.matmul, b[:, c0:c1].T, a.T, out=scratch[c0:c1])
                        for c0, c1 in self._column_runs(b.shape[1], parts)]
        else:
            products = [functools.partial(numpy.matmul, a, b[:, c0:c1], out=out[:, c0:c1])
                        for c0, c1 in self._column_runs(b.shape[1], parts)]
        threads.run(products, choice)
        if transposed:
            numpy.copyto(out, scratch.T)

    def weight_grad(self, dy, x, diff, transpose, overwrite=False):
        """diff += dy^T @ x (x^T @ dy with transpose): accumulated, as Caffe's
        parameter gradients are; diff = ... with overwrite (the diff was
        cleared lazily, so it is written once instead of zeroed, read and
        written again)."""
        xp = backend.get_array_module(dy)
        a, b = (x, dy) if transpose else (dy, x)            # diff (R, C) += a^T @ b
        rows, cols = diff.shape
        if xp is not numpy:
            if overwrite:
                xp.matmul(a.T, b, out=diff)
            else:
                grad = self.workspace.get("grad", diff.shape, diff.dtype, xp)
                xp.matmul(a.T, b, out=grad)
                diff += grad
            return
        block = max(1, min(rows, BLOCK_BYTES // max(1, cols * diff.itemsize)))
        blocks = [(r0, min(rows, r0 + block)) for r0 in range(0, rows, block)]
        parts = min(self._parts(xp, 2 * a.shape[0] * rows * cols, len(blocks)), len(blocks))

        def work(lane, run):
            if overwrite:
                for r0, r1 in run:
                    numpy.matmul(a[:, r0:r1].T, b, out=diff[r0:r1])
                return
            grad = self.workspace.get("grad%d" % lane, (block, cols), diff.dtype, xp)
            for r0, r1 in run:
                part = grad[:r1 - r0]
                numpy.matmul(a[:, r0:r1].T, b, out=part)
                target = diff[r0:r1]
                target += part
        threads.run([functools.partial(work, lane, run)
                     for lane, run in enumerate(threads.split(blocks, parts))], self._choices["weight_grad"])
