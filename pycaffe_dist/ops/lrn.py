"""Local response normalization, as Caffe's LRN layer computes it.

Both regions compute y = x * scale^-beta from a window sum of x^2:
  ACROSS_CHANNELS: scale = k + alpha/n * (sum of x^2 over n channels centred on c)
  WITHIN_CHANNEL:  scale = 1 + alpha/n^2 * (sum of x^2 over the n x n box centred
                   on (h, w)); Caffe builds this from square -> AVE pooling with
                   pad (n-1)/2 (whose divisor is always n^2) -> power(shift 1,
                   scale alpha, power -beta) -> product, so k is not used.
Both windows are symmetric and zero padded, so the backward pass is the same
window sum applied to dy * y / scale:
  dx = dy * scale^-beta - (2 alpha beta / window) * x * window_sum(dy * y / scale)
The window sums are slice adds over a zero-bordered buffer: n adds of whole
arrays instead of a loop over positions.
"""
import functools

import numpy

from .. import backend
from . import kernels, threads
from .workspace import Workspace

SPLIT_ELEMENTS = 1 << 16    # smaller inputs run on one thread: the pool's hand-off would show

# Each thread takes its images in chunks of about this many bytes of x, so
# that the dozen passes over a chunk's buffers find them in cache: whole
# cifar10_full steps (norm1 and norm2 WITHIN_CHANNEL) at x0.96 at one thread
# and x0.98 at two against one run per thread (paired steps in one process;
# 256 KB chunks: x0.97 and x1.00, 1 MB: x0.99 at two); CaffeNet's
# ACROSS_CHANNELS layers x0.99.
CHUNK_BYTES = 1 << 19


def negative_power(xp, base, beta, out, scratch):
    """out = base ** -beta, with sqrt-based shortcuts for Caffe's usual betas
    (a general float power is several times slower than sqrt). `scratch` is
    an array like `out`."""
    if beta == 0.75:
        xp.sqrt(base, out=out)
        xp.sqrt(out, out=scratch)
        out *= scratch
        xp.reciprocal(out, out=out)
    elif beta == 0.5:
        xp.sqrt(base, out=out)
        xp.reciprocal(out, out=out)
    elif beta == 1.0:
        xp.reciprocal(base, out=out)
    else:
        xp.power(base, -beta, out=out)
    return out


class LRN:
    """Forward and backward of one LRN configuration, buffers reused."""

    def __init__(self, local_size, alpha, beta, k, across_channels):
        self.size = int(local_size)
        self.alpha, self.beta, self.k = float(alpha), float(beta), float(k)
        self.across_channels = bool(across_channels)
        self.workspace = Workspace()
        self._saved_x = None
        self._choices = threads.Choices()

    # -- window sums ---------------------------------------------------------------
    def _padded(self, xp, x, name):
        """A zero-bordered buffer for x's window sums, and its interior view.
        Within a channel the buffer is flat: the padded planes (H x W, each
        side size - 1 larger) one after another, and slack past the end for
        the shifted reads of _box_sum."""
        n, c, h, w = x.shape
        pre = (self.size - 1) // 2
        if self.across_channels:
            buf = self.workspace.get(name, (n, c + self.size - 1, h * w), x.dtype, xp, fill=0)
            return buf, buf[:, pre:pre + c].reshape(x.shape)
        big_h, big_w = h + self.size - 1, w + self.size - 1
        count = n * c * big_h * big_w
        buf = self.workspace.get(name, (count + (self.size - 1) * (big_w + 1),), x.dtype, xp, fill=0)
        return buf, buf[:count].reshape(n * c, big_h, big_w)[:, pre:pre + h, pre:pre + w].reshape(x.shape)

    def _box_sum(self, xp, grid, out, n0, n1, shape, lane):
        """WITHIN_CHANNEL: out[n0:n1] = each position's size x size box sum
        of the flat zero-bordered `grid` (_padded). The sums run over whole
        flat slices, along the rows and then down the columns, with the box's
        top-left corner as the index: positions whose box wraps into the next
        row or plane are garbage and never read, and the valid ones are a
        view (planes, :h, :w) of the result. The strided form (sums of
        (planes, rows, w) views) paid numpy an inner loop per row of 16 or 8
        values: cifar10_full's norm1 alone, forward / backward at one
        thread, 4.03 / 4.81 ms that way, 3.50 / 4.37 this way."""
        n, c, h, w = shape
        s, big_w = self.size, w + self.size - 1
        plane = (h + s - 1) * big_w
        a, b = n0 * c * plane, n1 * c * plane
        # The sums go to the lane's own chunk-sized buffers; the column sums
        # read past the chunk's rows into zero slack (garbage outputs only).
        size = b - a
        rows = self.workspace.prefix(f"rows{lane}", (size + (s - 1) * big_w,), grid.dtype, xp)
        boxes = self.workspace.prefix(f"boxes{lane}", (size,), grid.dtype, xp)
        rows[size:] = 0
        self._shifted_sum(xp, grid[a:], rows[:size], 1)
        self._shifted_sum(xp, rows, boxes, big_w)
        valid = boxes.reshape((n1 - n0) * c, h + s - 1, big_w)[:, :h, :w]
        xp.copyto(out[n0:n1].reshape(valid.shape), valid)

    def _shifted_sum(self, xp, source, out, step):
        """out = the sum over t < size of `source` shifted by t * step along
        its first axis."""
        m = len(out)
        if self.size == 1:
            xp.copyto(out, source[:m])
            return
        xp.add(source[:m], source[step:step + m], out=out)
        for t in range(2, self.size):
            out += source[t * step:t * step + m]

    def _sum(self, xp, buf, out, n0, n1, shape, lane):
        """out[n0:n1] = the window sums of images [n0, n1) of buf (_padded)."""
        if not self.across_channels:
            return self._box_sum(xp, buf, out, n0, n1, shape, lane)
        n, c, h, w = shape
        total = out[n0:n1].reshape(n1 - n0, c, h * w)
        self._shifted_sum(xp, buf[n0:n1].transpose(1, 0, 2), total.transpose(1, 0, 2), 1)

    def _window(self):
        return self.size if self.across_channels else self.size * self.size

    def _each_run(self, xp, x, body, choice):
        """body(lane, n0, n1) over runs of images, one run per op thread
        (ops/threads.py) taken in CHUNK_BYTES chunks; every step is
        elementwise within an image, so the cuts change no result."""
        n = x.shape[0]
        parts = min(threads.count(xp), n) if x.size >= SPLIT_ELEMENTS else 1
        runs = [(r.start, r.stop) for r in threads.split(range(n), parts)]
        chunk = max(1, CHUNK_BYTES // max(1, x[0].nbytes)) if xp is numpy else n

        def lane(k, n0, n1):
            for m0 in range(n0, n1, chunk):
                body(k, m0, min(n1, m0 + chunk))
        threads.run([functools.partial(lane, k, n0, n1) for k, (n0, n1) in enumerate(runs) if n1 > n0],
                    self._choices[choice])

    # -- the op --------------------------------------------------------------------------
    def forward(self, x, y):
        """y = LRN(x); y may be x (in place), in which case x is kept for backward."""
        if self.across_channels and kernels.on_gpu(x):   # CuPy: two kernels (ops/kernels.py)
            return kernels.lrn_forward(self, x, y)
        xp = backend.get_array_module(x)
        self._saved_x = None
        if y is x:
            self._saved_x = self.workspace.get("x", x.shape, x.dtype, xp)
            xp.copyto(self._saved_x, x)
            x = self._saved_x
        buf, interior = self._padded(xp, x, "squares")
        scale = self.workspace.get("scale", x.shape, x.dtype, xp)
        powered = self.workspace.get("powered", x.shape, x.dtype, xp)
        total = self.workspace.get("total", x.shape, x.dtype, xp)
        alpha = self.alpha / self._window()
        shift = self.k if self.across_channels else 1.0

        def run(lane, n0, n1):
            xs, sc = x[n0:n1], scale[n0:n1]
            xp.multiply(xs, xs, out=interior[n0:n1])
            self._sum(xp, buf, scale, n0, n1, x.shape, lane)
            sc *= alpha
            sc += shift
            negative_power(xp, sc, self.beta, powered[n0:n1], total[n0:n1])
            xp.multiply(xs, powered[n0:n1], out=y[n0:n1])
        self._each_run(xp, x, run, "forward")

    def backward(self, dy, dx, x):
        """dx from dy; `x` is the bottom data of the forward pass (ignored
        after an in-place forward, which kept its own copy)."""
        if self.across_channels and kernels.on_gpu(dy):   # CuPy: one kernel (ops/kernels.py)
            return kernels.lrn_backward(self, dy, dx, x)
        xp = backend.get_array_module(dy)
        if self._saved_x is not None:
            x = self._saved_x
        scale = self.workspace.get("scale", x.shape, x.dtype, xp)
        powered = self.workspace.get("powered", x.shape, x.dtype, xp)
        buf, interior = self._padded(xp, x, "squares")    # the squares are spent: the ratios reuse it
        total = self.workspace.get("total", x.shape, x.dtype, xp)
        factor = 2.0 * self.alpha * self.beta / self._window()

        def run(lane, n0, n1):
            # dy * y / scale, with y recomputed: the top may have been changed in place since.
            inner, xs, dys = interior[n0:n1], x[n0:n1], dy[n0:n1]
            xp.multiply(dys, xs, out=inner)
            inner *= powered[n0:n1]
            inner /= scale[n0:n1]
            tot = total[n0:n1]
            self._sum(xp, buf, total, n0, n1, x.shape, lane)
            tot *= xs
            tot *= factor
            xp.multiply(dys, powered[n0:n1], out=dx[n0:n1])
            dx[n0:n1] -= tot
        self._each_run(xp, x, run, "backward")
