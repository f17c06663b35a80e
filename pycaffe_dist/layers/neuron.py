"""Neuron layers: elementwise functions of one bottom (ReLU, Sigmoid, TanH, Dropout).

All of them work in place (top is the bottom Blob), as Caffe's do: backward
only reads what survives an in-place forward (the top data, or the sign of
the bottom data, which an in-place ReLU keeps).
"""
import numpy

from .. import backend
from ..proto.caffe_pb2 import TRAIN
from .base import Layer, register
from .common import scratch


class NeuronLayer(Layer):
    """One bottom, one top of the same shape; scratch buffers follow the shape."""

    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape)

    def scratch(self, name, shape, dtype):
        return scratch(self, name, shape, dtype)


@register
class ReLU(NeuronLayer):
    """y = max(x, 0) + negative_slope * min(x, 0)."""

    type = "ReLU"

    def layer_setup(self, bottom, top):
        self.negative_slope = float(self.param.relu_param.negative_slope)

    def _slopes(self, x):
        # 1 where x > 0, negative_slope elsewhere: the derivative, and the
        # factor that maps x to y for the leaky form.
        positive = self.scratch("_positive", x.shape, bool)
        self.xp.greater(x, 0, out=positive)
        slopes = self.scratch("_slope_buf", x.shape, x.dtype)
        # typed scalars: a Python float makes numpy go through float64
        cast = slopes.dtype.type
        self.xp.multiply(positive, cast(1.0 - self.negative_slope), out=slopes)
        slopes += cast(self.negative_slope)
        return slopes

    def forward(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        if self.negative_slope == 0:
            self.xp.maximum(x, 0, out=y)
        else:
            self.xp.multiply(x, self._slopes(x), out=y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        # bottom data is the top data when in place; its sign is unchanged
        # for a non-negative slope, so the derivative reads the same.
        x, dy, dx = bottom[0].data, top[0].diff, bottom[0].diff
        if self.negative_slope == 0:
            positive = self.scratch("_positive", x.shape, bool)
            self.xp.greater(x, 0, out=positive)
            self.xp.multiply(dy, positive, out=dx)
        else:
            self.xp.multiply(dy, self._slopes(x), out=dx)


@register
class Sigmoid(NeuronLayer):
    """y = 1 / (1 + exp(-x))."""

    type = "Sigmoid"

    def forward(self, bottom, top):
        # The tanh form never overflows, unlike exp(-x) for very negative x.
        xp, y = self.xp, top[0].data
        xp.multiply(bottom[0].data, 0.5, out=y)
        xp.tanh(y, out=y)
        y *= 0.5
        y += 0.5

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y = top[0].data
        slope = self.scratch("_slope_buf", y.shape, y.dtype)
        self.xp.subtract(1, y, out=slope)
        slope *= y
        self.xp.multiply(top[0].diff, slope, out=bottom[0].diff)


@register
class TanH(NeuronLayer):
    """y = tanh(x)."""

    type = "TanH"

    def forward(self, bottom, top):
        self.xp.tanh(bottom[0].data, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y = top[0].data
        slope = self.scratch("_slope_buf", y.shape, y.dtype)
        self.xp.multiply(y, y, out=slope)
        self.xp.subtract(1, slope, out=slope)
        self.xp.multiply(top[0].diff, slope, out=bottom[0].diff)


@register
class Dropout(NeuronLayer):
    """TRAIN: zero each element with probability dropout_ratio and scale the
    survivors by 1 / (1 - dropout_ratio); TEST: identity (as Caffe, the
    scaling happens at train time so deployed nets need no change)."""

    type = "Dropout"

    def layer_setup(self, bottom, top):
        self.ratio = float(self.param.dropout_param.dropout_ratio)
        if not 0.0 <= self.ratio < 1.0:
            raise self.error(f"dropout_ratio must be in [0, 1), got {self.ratio:g}")
        self.scale = 1.0 / (1.0 - self.ratio)

    def _draw_mask(self, shape, dtype):
        # The host generator is the run's single random stream (seeded by
        # random_seed, saved in snapshots), so masks are the same on CPU and
        # GPU; only the compact boolean mask crosses to the device.
        uniform = scratch(self, "_uniform", shape, numpy.float32, numpy)
        backend.rng.generator.random(out=uniform, dtype=numpy.float32)
        keep = scratch(self, "_keep", shape, bool, numpy)
        numpy.greater_equal(uniform, self.ratio, out=keep)
        mask = self.scratch("_mask", shape, dtype)
        # a typed scale: a Python float sends numpy through a float64 loop
        self.xp.multiply(backend.to_device(keep, self.xp), mask.dtype.type(self.scale), out=mask)
        return mask

    def forward(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        if self.phase != TRAIN:
            if y is not x:
                y[...] = x
            return
        self.xp.multiply(x, self._draw_mask(x.shape, x.dtype), out=y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy, dx = top[0].diff, bottom[0].diff
        if self.phase != TRAIN:
            if dx is not dy:
                dx[...] = dy
            return
        self.xp.multiply(dy, self._mask, out=dx)
