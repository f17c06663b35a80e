"""Caffe's STOCHASTIC pooling (Zeiler & Fergus 2013) over (N, C, H, W).

TRAIN picks one element per window with probability proportional to its
value (the inputs are activations after a ReLU, so non-negative) and
remembers which; TEST outputs the probability-weighted average
sum(x^2) / sum(x). There is no padding, as in Caffe; windows that hang over
the bottom or right edge (Caffe's rounded-up output size) are clipped.

The windows are copied once into (planes, OH, OW, kh*kw) in Caffe's
row-major window order; zeros stand in for the overhang, which neither
changes a window's sum nor can be picked (a running sum only reaches the
threshold at an element that adds to it).
"""
import itertools

import numpy

from .. import backend
from .workspace import Workspace


class StochasticPooling:
    """Sampling in TRAIN, weighted average in TEST, and their gradients."""

    def __init__(self, geometry):
        if any(geometry.pad):
            raise ValueError("stochastic pooling has no padding")
        self.geometry = geometry
        self.workspace = Workspace()
        self.train = True

    def _padded_size(self):
        g = self.geometry
        return tuple(max(size, (o - 1) * s + k)
                     for size, o, s, k in zip(g.in_size, g.out_size, g.stride, g.kernel))

    def _windows(self, x):
        """(planes, OH, OW, kh*kw): each window's elements, row-major."""
        xp = backend.get_array_module(x)
        g = self.geometry
        n, c, h, w = x.shape
        padded = self.workspace.get("padded", (n * c,) + self._padded_size(), x.dtype, xp, fill=0)
        padded[:, :h, :w] = x.reshape(n * c, h, w)
        st = padded.strides
        view = xp.lib.stride_tricks.as_strided(
            padded, (n * c,) + g.out_size + g.kernel,
            (st[0], st[1] * g.stride[0], st[2] * g.stride[1], st[1], st[2]))
        windows = self.workspace.get("windows", (n * c,) + g.out_size + (g.kernel[0] * g.kernel[1],), x.dtype, xp)
        xp.copyto(windows.reshape(view.shape), view)
        return windows

    @staticmethod
    def _weighted_average(xp, windows):
        """(sum, sum > 0, sum(x^2) / sum) per window; where the sum is not
        positive it reads 1 and the average 0 (Caffe's choice)."""
        total = windows.sum(axis=-1)
        positive = total > 0
        total = xp.where(positive, total, 1)
        squares = xp.einsum("...k,...k->...", windows, windows)
        return total, positive, xp.where(positive, squares / total, 0)

    def forward(self, x, y, train=True, uniform=None):
        """TRAIN: y = the sampled element of each window; TEST: y = the
        weighted average. `uniform` (planes, OH, OW) in [0, 1) picks the
        samples; by default it is drawn from the run's random stream."""
        xp = backend.get_array_module(x)
        self.train = train
        windows = self._windows(x)
        if not train:
            _, _, average = self._weighted_average(xp, windows)
            y.reshape(average.shape)[...] = average
            return
        ws, shape = self.workspace, windows.shape
        if uniform is None:
            uniform = ws.get("uniform", shape[:-1], numpy.float32, numpy)
            backend.rng.generator.random(out=uniform, dtype=numpy.float32)
        running = ws.get("running", shape, x.dtype, xp)
        xp.cumsum(windows, axis=-1, out=running)
        threshold = ws.get("threshold", shape[:-1], x.dtype, xp)
        xp.copyto(threshold, backend.to_device(uniform, xp))
        threshold *= running[..., -1]
        reached = ws.get("reached", shape, bool, xp)
        xp.greater_equal(running, threshold[..., None], out=reached)
        # The first element whose running sum reaches the threshold (Caffe's
        # loop); argmax of an all-False row gives 0, the window's first element.
        choice = ws.get("choice", shape[:-1], xp.intp, xp)
        xp.argmax(reached, axis=-1, out=choice)
        # ... as an index into the flat windows: window number * K + choice
        offsets = ws.get("offsets", shape[:-1], xp.intp, xp)
        if getattr(self, "_offsets_for", None) != shape:
            xp.copyto(offsets, xp.arange(0, offsets.size * shape[-1], shape[-1]).reshape(offsets.shape))
            self._offsets_for = shape
        self.choice = ws.get("flat_choice", shape[:-1], xp.intp, xp)
        xp.add(choice, offsets, out=self.choice)
        xp.take(windows.reshape(-1), self.choice.reshape(-1), out=y.reshape(-1), mode="clip")

    def backward(self, dy, dx, x=None):
        """dx: TRAIN routes each window's gradient to its sampled element;
        TEST is the gradient of sum(x^2) / sum(x) (zero where the sum is 0)."""
        xp = backend.get_array_module(dy)
        g = self.geometry
        n, c, h, w = dx.shape
        grad = dy.reshape(n * c, *g.out_size)[..., None]
        if self.train:
            # each window's gradient at its sampled element, zeros elsewhere
            parts = self.workspace.get("parts", grad.shape[:-1] + (g.kernel[0] * g.kernel[1],), dx.dtype, xp)
            parts.fill(0)
            parts.reshape(-1)[self.choice.reshape(-1)] = dy.reshape(-1)
        else:
            # d/dx_k of sum(x^2) / sum(x) is (2 x_k - average) / sum; where the
            # average is 0 by definition (sum <= 0) the gradient is 0 too.
            windows = self._windows(x)
            total, positive, average = self._weighted_average(xp, windows)
            parts = grad * (2 * windows - average[..., None]) / total[..., None] * positive[..., None]
        padded = self.workspace.get("grad", (n * c,) + self._padded_size(), dx.dtype, xp)
        padded.fill(0)
        (oh, ow), (sh, sw), kw = g.out_size, g.stride, g.kernel[1]
        for i, j in itertools.product(range(g.kernel[0]), range(kw)):
            padded[:, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw] += parts[..., i * kw + j]
        xp.copyto(dx.reshape(n * c, h, w), padded[:, :h, :w])
