"""Power, Exp, Log (functions of shift + scale * x) and Bias, Scale (a blob
added to or multiplying the bottom, broadcast along some of its axes).
"""
import math

import numpy

from ..proto.caffe_pb2 import FillerParameter
from .base import Layer, register
from .common import canonical_axis, scratch
from .neuron import NeuronLayer


@register
class Power(NeuronLayer):
    """y = (shift + scale * x) ^ power."""

    type = "Power"

    def layer_setup(self, bottom, top):
        p = self.param.power_param
        self.power, self.scale, self.shift = float(p.power), float(p.scale), float(p.shift)
        self.diff_scale = self.power * self.scale
        # only a non-constant derivative needs the input in backward
        self.needs_input = self.diff_scale != 0 and self.power != 1

    def forward(self, bottom, top):
        if self.needs_input:
            self.keep_input(bottom, top)
        xp, x, y = self.xp, bottom[0].data, top[0].data
        cast = x.dtype.type
        xp.multiply(x, cast(self.scale), out=y)
        y += cast(self.shift)
        if self.power != 1:
            xp.power(y, cast(self.power), out=y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp, dy, dx = self.xp, top[0].diff, bottom[0].diff
        cast = dx.dtype.type
        if self.diff_scale == 0:
            dx[...] = 0
        elif self.power == 1:
            xp.multiply(dy, cast(self.scale), out=dx)
        else:
            # power * scale * (shift + scale x)^(power - 1), finite at a zero
            # base for power > 1 where Caffe's power * y / base is not
            slope = self.scratch("_slope_buf", dx.shape, dx.dtype)
            xp.multiply(self.kept_input(bottom, top), cast(self.scale), out=slope)
            slope += cast(self.shift)
            xp.power(slope, cast(self.power - 1), out=slope)
            slope *= cast(self.diff_scale)
            xp.multiply(dy, slope, out=dx)


def log_of_base(layer, base):
    """ln(base) for Exp/Log's `base`, where -1 (the default) means e."""
    if base == -1:
        return 1.0
    if base <= 0:
        raise layer.error(f"base must be positive (or -1 for e), got {base:g}")
    return math.log(base)


@register
class Exp(NeuronLayer):
    """y = base ^ (shift + scale * x); base -1 means e."""

    type = "Exp"

    def layer_setup(self, bottom, top):
        p = self.param.exp_param
        log_base = log_of_base(self, float(p.base))
        self.inner_scale = log_base * float(p.scale)
        self.outer_scale = math.exp(log_base * float(p.shift))

    def forward(self, bottom, top):
        xp, x, y = self.xp, bottom[0].data, top[0].data
        cast = x.dtype.type
        xp.multiply(x, cast(self.inner_scale), out=y)
        xp.exp(y, out=y)
        if self.outer_scale != 1:
            y *= cast(self.outer_scale)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        # dy/dx = ln(base) * scale * y, read from the top, so in place works
        dx = bottom[0].diff
        self.xp.multiply(top[0].diff, top[0].data, out=dx)
        dx *= dx.dtype.type(self.inner_scale)


@register
class Log(NeuronLayer):
    """y = log_base(shift + scale * x); base -1 means e."""

    type = "Log"

    def layer_setup(self, bottom, top):
        p = self.param.log_param
        log_base = log_of_base(self, float(p.base))
        if log_base == 0:
            raise self.error("base 1 has no logarithm; use a positive base other than 1")
        self.base_scale = 1.0 / log_base
        self.scale, self.shift = float(p.scale), float(p.shift)

    def _shifted(self, x, out):
        cast = out.dtype.type
        self.xp.multiply(x, cast(self.scale), out=out)
        out += cast(self.shift)
        return out

    def forward(self, bottom, top):
        self.keep_input(bottom, top)
        y = self._shifted(bottom[0].data, top[0].data)
        self.xp.log(y, out=y)
        if self.base_scale != 1:
            y *= y.dtype.type(self.base_scale)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        # dy/dx = scale / (ln(base) * (shift + scale x))
        dx = bottom[0].diff
        shifted = self._shifted(self.kept_input(bottom, top),
                                self.scratch("_slope_buf", dx.shape, dx.dtype))
        self.xp.divide(top[0].diff, shifted, out=dx)
        dx *= dx.dtype.type(self.scale * self.base_scale)


# -- Bias and Scale ---------------------------------------------------------------
def operand_dims(layer, shape, operand_shape, axis):
    """(outer, dim, inner): the bottom viewed so an operand of `operand_shape`
    lines up with axes axis.. of `shape` and broadcasts over the rest."""
    n = len(operand_shape)
    if tuple(shape[axis:axis + n]) != tuple(operand_shape):
        raise layer.error(f"the {layer.operand_name} of shape {tuple(operand_shape)} does not match "
                          f"bottom[0] {tuple(shape)} at axes {axis}..{axis + n - 1}")
    outer = int(numpy.prod(shape[:axis], dtype=numpy.int64))
    dim = int(numpy.prod(operand_shape, dtype=numpy.int64))
    return outer, dim, int(numpy.prod(shape[axis + n:], dtype=numpy.int64))


class BroadcastLayer(Layer):
    """Shared by Bias and Scale: the operand is bottom[1] when given, else a
    learned blob shaped like bottom[0]'s axes axis..axis+num_axes-1
    (num_axes -1: to the last axis). A scalar operand broadcasts everywhere."""

    min_bottom = 1
    max_bottom = 2
    exact_num_top = 1

    def operand_shape(self, bottom, p):
        """The learned operand's shape, from axis and num_axes."""
        shape = bottom[0].shape
        axis = canonical_axis(self, p.axis, len(shape)) if shape else 0
        if p.num_axes < -1:
            raise self.error(f"num_axes must be -1 (all axes from axis on) or more, got {p.num_axes}")
        end = len(shape) if p.num_axes == -1 else axis + p.num_axes
        if end > len(shape):
            raise self.error(f"axis {p.axis} with num_axes {p.num_axes} reaches past the "
                             f"{len(shape)} axes of bottom[0] {shape}")
        return tuple(shape[axis:end])

    def operand_axis(self, bottom, operand):
        # As in Caffe: a scalar operand ignores axis.
        if not operand.shape:
            return 0
        return canonical_axis(self, self.axis_param, len(bottom[0].shape))

    def reshape(self, bottom, top):
        operand = self.operand(bottom)
        self.dims = operand_dims(self, bottom[0].shape, operand.shape,
                                 self.operand_axis(bottom, operand))
        top[0].reshape(bottom[0].shape)

    def sum_over_broadcast(self, values):
        """Sum an (outer, dim, inner) array over its outer and inner axes."""
        return values.sum(axis=(0, 2))


@register
class Bias(BroadcastLayer):
    """y = x + b, b broadcast (see BroadcastLayer); b learned unless bottom[1]."""

    type = "Bias"
    operand_name = "bias"

    def layer_setup(self, bottom, top):
        p = self.param.bias_param
        self.axis_param = p.axis
        if len(bottom) == 1 and not self.blobs:
            self.blobs = [self.make_blob(self.operand_shape(bottom, p), p.filler)]
        self.param_propagate_down = [True] * len(self.blobs)

    def operand(self, bottom):
        return bottom[1] if len(bottom) > 1 else self.blobs[0]

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.dims)
        y = top[0].data.reshape(self.dims)
        b = self.operand(bottom).data.reshape(1, -1, 1)
        self.xp.add(x, b, out=y)

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff.reshape(self.dims)
        if len(bottom) > 1 and propagate_down[1]:
            bottom[1].diff[...] = self.sum_over_broadcast(dy).reshape(bottom[1].shape)
        elif len(bottom) == 1 and self.param_propagate_down[0]:
            bias_diff = self.blobs[0].diff
            bias_diff += self.sum_over_broadcast(dy).reshape(bias_diff.shape)
        if propagate_down[0] and top[0] is not bottom[0]:
            bottom[0].diff[...] = top[0].diff


@register
class Scale(BroadcastLayer):
    """y = x * s (+ b with bias_term), s and b broadcast (see BroadcastLayer).

    s is bottom[1] when given, else learned (filler default constant 1); b is
    always learned, shaped like s. The blobs are [s, b] with one bottom, [b]
    with two, as in Caffe.
    """

    type = "Scale"
    operand_name = "scale"

    def layer_setup(self, bottom, top):
        p = self.param.scale_param
        self.axis_param = p.axis
        self.bias_term = bool(p.bias_term)
        if not self.blobs:
            shape = self.operand_shape(bottom, p) if len(bottom) == 1 else bottom[1].shape
            if len(bottom) == 1:
                filler = p.filler if p.HasField("filler") else FillerParameter(type="constant", value=1)
                self.blobs.append(self.make_blob(shape, filler))
            if self.bias_term:
                self.blobs.append(self.make_blob(shape, p.bias_filler))
        self.bias_index = len(self.blobs) - 1 if self.bias_term else None
        self.param_propagate_down = [True] * len(self.blobs)

    def operand(self, bottom):
        return bottom[1] if len(bottom) > 1 else self.blobs[0]

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if self.bias_term and self.blobs[self.bias_index].count != self.dims[1]:
            raise self.error(f"the bias has {self.blobs[self.bias_index].count} values but the "
                             f"scale has {self.dims[1]}")

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.dims)
        if top[0] is bottom[0]:
            # the scale's gradient needs x, which an in-place forward overwrites
            saved = scratch(self, "_input_copy", self.dims, x.dtype)
            saved[...] = x
        y = top[0].data.reshape(self.dims)
        s = self.operand(bottom).data.reshape(1, -1, 1)
        self.xp.multiply(x, s, out=y)
        if self.bias_term:
            y += self.blobs[self.bias_index].data.reshape(1, -1, 1)

    def backward(self, top, propagate_down, bottom):
        xp = self.xp
        dy = top[0].diff.reshape(self.dims)
        operand = self.operand(bottom)
        two_bottoms = len(bottom) > 1
        # parameter gradients read dy, so they come before dx (which may be dy)
        if self.bias_term and self.param_propagate_down[self.bias_index]:
            bias_diff = self.blobs[self.bias_index].diff
            bias_diff += self.sum_over_broadcast(dy).reshape(bias_diff.shape)
        if (propagate_down[1] if two_bottoms else self.param_propagate_down[0]):
            x = self._input_copy if top[0] is bottom[0] else bottom[0].data.reshape(self.dims)
            product = scratch(self, "_product", self.dims, dy.dtype)
            xp.multiply(dy, x, out=product)
            grad = self.sum_over_broadcast(product).reshape(operand.shape)
            if two_bottoms:
                operand.diff[...] = grad
            else:
                scale_diff = operand.diff
                scale_diff += grad
        if propagate_down[0]:
            dx = bottom[0].diff.reshape(self.dims)
            xp.multiply(dy, operand.data.reshape(1, -1, 1), out=dx)
