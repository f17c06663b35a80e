"""Neuron layers: elementwise functions of one bottom.

ReLU, PReLU, ELU, Sigmoid, TanH, AbsVal, BNLL, Threshold, Clip, Swish and
Dropout. (Power, Exp, Log, Bias and Scale live in `arithmetic`.)

All but AbsVal work in place (top is the bottom Blob), as Caffe's do:
backward reads what survives an in-place forward (the top data, or the sign
of the bottom data, which an in-place ReLU keeps), or a copy of the input
that the layer keeps only when it runs in place.
"""
import numpy

from .. import backend
from ..ops import threads
from ..proto.caffe_pb2 import TRAIN, FillerParameter
from .base import Layer, register
from .common import check_not_in_place, scratch


class NeuronLayer(Layer):
    """One bottom, one top of the same shape; scratch buffers follow the shape."""

    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape)

    def scratch(self, name, shape, dtype):
        return scratch(self, name, shape, dtype)

    def keep_input(self, bottom, top):
        """Call in forward before writing the top: keeps a copy of the input
        for backward when the layer runs in place and would overwrite it."""
        if top[0] is bottom[0]:
            x = bottom[0].data
            self.scratch("_input_copy", x.shape, x.dtype)[...] = x

    def kept_input(self, bottom, top):
        """The input forward saw, for backward (see keep_input)."""
        return self._input_copy if top[0] is bottom[0] else bottom[0].data


@register
class ReLU(NeuronLayer):
    """y = max(x, 0) + negative_slope * min(x, 0)."""

    type = "ReLU"

    def layer_setup(self, bottom, top):
        self.negative_slope = float(self.param.relu_param.negative_slope)
        self._choices = threads.Choices()

    def _slopes(self, x, name=""):
        # 1 where x > 0, negative_slope elsewhere: the derivative, and the
        # factor that maps x to y for the leaky form.
        positive = self.scratch("_positive" + name, x.shape, bool)
        self.xp.greater(x, 0, out=positive)
        slopes = self.scratch("_slope_buf" + name, x.shape, x.dtype)
        # typed scalars: a Python float makes numpy go through float64
        cast = slopes.dtype.type
        self.xp.multiply(positive, cast(1.0 - self.negative_slope), out=slopes)
        slopes += cast(self.negative_slope)
        return slopes

    def _blocks(self, kind, body, *arrays, one_pass=False):
        """body(name, *blocks) over the arrays' elements, block by block
        and split over the ops' threads (ops.threads.elementwise; `name`
        tells a lane's scratch buffers apart); elementwise, so the same
        bits as whole arrays."""
        size = arrays[0].size       # sizes that ops.threads.elementwise keeps whole at any thread count
        if (size <= threads.ELEMENTWISE_WHOLE and (one_pass or size < threads.ELEMENTWISE_LANES)
                or not all(a.flags.c_contiguous for a in arrays)):
            body("", *arrays)
            return
        flat = [a.reshape(-1) for a in arrays]

        def block(lane, start, stop):
            name = "" if stop - start == flat[0].size else "_lane%d_%d" % (lane, stop - start)
            body(name, *(f[start:stop] for f in flat))
        threads.elementwise(self.xp, flat[0].size, block, self._choices[kind], one_pass=one_pass)

    def _forward(self, name, x, y):
        if self.negative_slope == 0:
            self.xp.maximum(x, 0, out=y)
        else:
            self.xp.multiply(x, self._slopes(x, name), out=y)

    def _backward(self, name, x, dy, dx):
        if self.negative_slope == 0:
            positive = self.scratch("_positive" + name, x.shape, bool)
            self.xp.greater(x, 0, out=positive)
            self.xp.multiply(dy, positive, out=dx)
        else:
            self.xp.multiply(dy, self._slopes(x, name), out=dx)

    def forward(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        self._blocks("forward", self._forward, x, y, one_pass=self.negative_slope == 0)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        # bottom data is the top data when in place; its sign is unchanged
        # for a non-negative slope, so the derivative reads the same.
        x, dy, dx = bottom[0].data, top[0].diff, bottom[0].diff
        self._blocks("backward", self._backward, x, dy, dx)


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


@register
class PReLU(NeuronLayer):
    """y = max(x, 0) + a * min(x, 0) with a learned slope `a` for each channel
    (axis 1), or one slope for all of them when channel_shared."""

    type = "PReLU"

    def layer_setup(self, bottom, top):
        p = self.param.prelu_param
        shape = bottom[0].shape
        if len(shape) < 2:
            raise self.error(f"bottom needs at least 2 axes (num, channels, ...), got {shape}")
        self.channel_shared = bool(p.channel_shared)
        slopes = 1 if self.channel_shared else shape[1]
        if not self.blobs:
            filler = p.filler if p.HasField("filler") else FillerParameter(type="constant", value=0.25)
            # Caffe's shared slope is a 0-axis blob; keep its shape so weights load
            self.blobs = [self.make_blob(() if self.channel_shared else (slopes,), filler)]
        if self.blobs[0].count != slopes:
            raise self.error(f"the slope blob has {self.blobs[0].count} values but "
                             f"{'channel_shared needs 1' if self.channel_shared else f'bottom has {slopes} channels'}")
        self.param_propagate_down = [True]

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) < 2 or (not self.channel_shared and shape[1] != self.blobs[0].count):
            raise self.error(f"bottom {shape} must keep the {self.blobs[0].count} channels "
                             "(axis 1) the slopes were made for")
        top[0].reshape(shape)
        n, c = shape[0], shape[1]
        self.dims = (n, c, bottom[0].count // max(n * c, 1))

    def _slope(self):
        return self.blobs[0].data.reshape(1, -1, 1)

    def forward(self, bottom, top):
        self.keep_input(bottom, top)
        xp = self.xp
        x = bottom[0].data.reshape(self.dims)
        y = top[0].data.reshape(self.dims)
        negative = self.scratch("_negative", self.dims, x.dtype)
        xp.minimum(x, 0, out=negative)
        xp.maximum(x, 0, out=y)
        negative *= self._slope()
        y += negative

    def backward(self, top, propagate_down, bottom):
        xp = self.xp
        x = self.kept_input(bottom, top).reshape(self.dims)
        dy = top[0].diff.reshape(self.dims)
        # the slope gradient reads dy, so it comes before dx (which may be dy)
        if self.param_propagate_down[0]:
            product = self.scratch("_negative", self.dims, x.dtype)
            xp.minimum(x, 0, out=product)
            product *= dy
            grad = product.sum(axis=(0, 2))
            slope_diff = self.blobs[0].diff
            slope_diff += grad.sum() if self.channel_shared else grad
        if propagate_down[0]:
            # dx = dy where x > 0, a * dy elsewhere
            slopes = self.scratch("_negative", self.dims, x.dtype)
            xp.multiply(x <= 0, self._slope() - 1, out=slopes)
            slopes += 1
            xp.multiply(dy, slopes, out=bottom[0].diff.reshape(self.dims))


@register
class ELU(NeuronLayer):
    """y = x for x > 0, alpha * (exp(x) - 1) otherwise."""

    type = "ELU"

    def layer_setup(self, bottom, top):
        self.alpha = float(self.param.elu_param.alpha)

    def forward(self, bottom, top):
        self.keep_input(bottom, top)
        xp = self.xp
        x, y = bottom[0].data, top[0].data
        negative = self.scratch("_slope_buf", x.shape, x.dtype)
        xp.minimum(x, 0, out=negative)
        xp.expm1(negative, out=negative)
        negative *= negative.dtype.type(self.alpha)
        xp.maximum(x, 0, out=y)
        y += negative

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        # dx = dy for x > 0, (y + alpha) dy = alpha exp(x) dy otherwise
        xp = self.xp
        x, y = self.kept_input(bottom, top), top[0].data
        slopes = self.scratch("_slope_buf", y.shape, y.dtype)
        xp.add(y, slopes.dtype.type(self.alpha), out=slopes)
        xp.copyto(slopes, slopes.dtype.type(1), where=x > 0)
        xp.multiply(top[0].diff, slopes, out=bottom[0].diff)


@register
class AbsVal(NeuronLayer):
    """y = |x|."""

    type = "AbsVal"

    def layer_setup(self, bottom, top):
        check_not_in_place(self, bottom, top)   # backward needs the sign of x

    def forward(self, bottom, top):
        self.xp.abs(bottom[0].data, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        self.xp.sign(bottom[0].data, out=dx)
        dx *= top[0].diff


@register
class BNLL(NeuronLayer):
    """y = log(1 + exp(x)) (the binomial normal log likelihood), computed
    without overflow."""

    type = "BNLL"

    def forward(self, bottom, top):
        self.xp.logaddexp(bottom[0].data, 0, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        # dy/dx = sigmoid(x) = 1 - exp(-y): read from the top, so in place works
        y = top[0].data
        slope = self.scratch("_slope_buf", y.shape, y.dtype)
        self.xp.negative(y, out=slope)
        self.xp.expm1(slope, out=slope)
        self.xp.negative(slope, out=slope)
        self.xp.multiply(top[0].diff, slope, out=bottom[0].diff)


@register
class Threshold(NeuronLayer):
    """y = 1 where x > threshold, else 0. No gradient (as in Caffe)."""

    type = "Threshold"
    allow_backward = False

    def layer_setup(self, bottom, top):
        self.threshold = float(self.param.threshold_param.threshold)

    def forward(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        self.xp.greater(x, x.dtype.type(self.threshold), out=y)


@register
class Clip(NeuronLayer):
    """y = min(max(x, min), max); the gradient passes where min <= x <= max."""

    type = "Clip"

    def layer_setup(self, bottom, top):
        p = self.param.clip_param
        self.min, self.max = float(p.min), float(p.max)
        if self.min > self.max:
            raise self.error(f"clip_param.min {self.min:g} is greater than max {self.max:g}")

    def forward(self, bottom, top):
        self.keep_input(bottom, top)
        x, y = bottom[0].data, top[0].data
        cast = x.dtype.type
        self.xp.clip(x, cast(self.min), cast(self.max), out=y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        x = self.kept_input(bottom, top)
        cast = x.dtype.type
        inside = self.scratch("_inside", x.shape, bool)
        xp.greater_equal(x, cast(self.min), out=inside)
        inside &= x <= cast(self.max)
        xp.multiply(top[0].diff, inside, out=bottom[0].diff)


@register
class Swish(NeuronLayer):
    """y = x * sigmoid(beta * x)."""

    type = "Swish"

    def layer_setup(self, bottom, top):
        self.beta = float(self.param.swish_param.beta)

    def forward(self, bottom, top):
        # sigmoid(beta x) is kept for backward; the tanh form never overflows
        xp = self.xp
        x, y = bottom[0].data, top[0].data
        cast = x.dtype.type
        s = self.scratch("_sigmoid", x.shape, x.dtype)
        xp.multiply(x, cast(0.5 * self.beta), out=s)
        xp.tanh(s, out=s)
        s *= cast(0.5)
        s += cast(0.5)
        xp.multiply(x, s, out=y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        # dy/dx = s + beta x s (1 - s) = beta y + s (1 - beta y)
        xp = self.xp
        y, s = top[0].data, self._sigmoid
        cast = y.dtype.type
        beta_y = self.scratch("_slope_buf", y.shape, y.dtype)
        xp.multiply(y, cast(self.beta), out=beta_y)
        slope = self.scratch("_slope2", y.shape, y.dtype)
        xp.subtract(cast(1), beta_y, out=slope)
        slope *= s
        slope += beta_y
        xp.multiply(top[0].diff, slope, out=bottom[0].diff)
