"""Vision layers: Convolution, Deconvolution, Im2col and LRN (pooling is in pooling.py).

The layers read and check their parameters the way Caffe does and hand the
arithmetic to pycaffe_dist.ops, which keeps the speed-minded array code.
"""
import numpy

from .. import ops
from ..proto import caffe_pb2
from .base import Layer, register
from .common import canonical_axis

NormRegion = caffe_pb2.LRNParameter


def _per_axis(layer, name, values, num_axes, default):
    """A repeated shape field (kernel_size, stride, pad, dilation) as one value
    per spatial axis: empty means `default`, one value applies to every axis."""
    values = [int(v) for v in values]
    if not values:
        if default is None:
            raise layer.error(f"{name} is required")
        return (default,) * num_axes
    if len(values) == 1:
        return (values[0],) * num_axes
    if len(values) != num_axes:
        raise layer.error(f"{name} has {len(values)} values; give 1 or one per spatial axis ({num_axes})")
    return tuple(values)


def _conv_shape_field(layer, p, name, hw_names, num_axes, default):
    """Read kernel_size/stride/pad, letting the 2-D-only _h/_w fields override."""
    h_name, w_name = hw_names
    if p.HasField(h_name) or p.HasField(w_name):
        if num_axes != 2:
            raise layer.error(f"{h_name}/{w_name} can only be used for 2-D convolution")
        if len(getattr(p, name)):
            raise layer.error(f"give either {name} or {h_name} and {w_name}, not both")
        if name != "pad" and not (p.HasField(h_name) and p.HasField(w_name)):
            raise layer.error(f"{h_name} and {w_name} must be given together")
        return (int(getattr(p, h_name)), int(getattr(p, w_name)))
    return _per_axis(layer, name, getattr(p, name), num_axes, default)


class _ConvolutionBase(Layer):
    """What Convolution, Deconvolution and Im2col share: convolution_param's
    kernel, stride, pad and dilation per spatial axis after the channel axis."""

    min_bottom = 1
    min_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.convolution_param
        if len(bottom) != len(top):
            raise self.error(f"needs one top per bottom, got {len(bottom)} bottoms and {len(top)} tops")
        shape = bottom[0].shape
        self.axis = canonical_axis(self, p.axis, len(shape))
        num_axes = len(shape) - self.axis - 1
        if num_axes < 1:
            raise self.error(f"bottom {shape} has no spatial axis after channel axis {self.axis}")
        if not len(p.kernel_size) and not (p.HasField("kernel_h") or p.HasField("kernel_w")):
            raise self.error("kernel_size (or kernel_h and kernel_w) is required")
        kernel = _conv_shape_field(self, p, "kernel_size", ("kernel_h", "kernel_w"), num_axes, None)
        stride = _conv_shape_field(self, p, "stride", ("stride_h", "stride_w"), num_axes, 1)
        pad = _conv_shape_field(self, p, "pad", ("pad_h", "pad_w"), num_axes, 0)
        dilation = _per_axis(self, "dilation", p.dilation, num_axes, 1)
        for name, values, least in (("kernel size", kernel, 1), ("stride", stride, 1),
                                    ("dilation", dilation, 1), ("pad", pad, 0)):
            if min(values) < least:
                raise self.error(f"{name} must be at least {least}, got {values}")
        self.geometry = ops.ConvGeometry(kernel, stride, pad, dilation)
        self.channels = int(shape[self.axis])
        self.setup_op(p, bottom)

    def setup_op(self, p, bottom):
        raise TypeError("%s must define setup_op()" % type(self).__name__)

    def top_spatial(self, spatial):
        """The top's spatial shape for a bottom's."""
        return self.geometry.out_shape(spatial)

    def top_channels(self):
        raise TypeError("%s must define top_channels()" % type(self).__name__)

    def reshape(self, bottom, top):
        shape = tuple(bottom[0].shape)
        for i, b in enumerate(bottom[1:], 1):
            if tuple(b.shape) != shape:
                raise self.error(f"all bottoms need one shape: bottom[0] is {shape}, bottom[{i}] is {b.shape}")
        g = self.geometry
        if len(shape) != self.axis + 1 + len(g.kernel) or shape[self.axis] != self.channels:
            raise self.error(f"bottom {shape} does not match the setup (channels {self.channels} at axis "
                             f"{self.axis}, {len(g.kernel)} spatial axes)")
        spatial = shape[self.axis + 1:]
        out = self.top_spatial(spatial)
        if min(out) < 1:
            raise self.error(f"input {spatial} (pad {g.pad}) is smaller than the kernel {g.kernel} "
                             f"(dilation {g.dilation})")
        self.num = int(numpy.prod(shape[:self.axis], dtype=numpy.int64))
        self.in_shape = (self.num, self.channels) + tuple(spatial)
        self.out_shape = (self.num, self.top_channels()) + tuple(out)
        for t in top:
            t.reshape(shape[:self.axis] + self.out_shape[1:])


class _WeightedConvolution(_ConvolutionBase):
    """Convolution and Deconvolution: num_output, group, weights and bias."""

    def setup_op(self, p, bottom):
        self.num_output, self.group = int(p.num_output), int(p.group)
        if self.num_output <= 0:
            raise self.error("convolution_param.num_output must be positive")
        if self.group <= 0:
            raise self.error("group must be positive")
        if self.channels % self.group:
            raise self.error(f"{self.channels} input channels are not divisible by group {self.group}")
        if self.num_output % self.group:
            raise self.error(f"num_output {self.num_output} is not divisible by group {self.group}")
        self.bias_term = bool(p.bias_term)
        self.op = ops.Convolution(self.geometry, self.group)
        self._make_blobs(p, self.weight_shape())
        self.param_propagate_down = [True] * len(self.blobs)

    def weight_shape(self):
        raise TypeError("%s must define weight_shape()" % type(self).__name__)

    def top_channels(self):
        return self.num_output

    def _make_blobs(self, p, wshape):
        if not self.blobs:  # weights may come from elsewhere (shared, loaded)
            self.blobs = [self.make_blob(wshape, p.weight_filler)]
            if self.bias_term:
                self.blobs.append(self.make_blob((self.num_output,), p.bias_filler))
        expected = [wshape] + ([(self.num_output,)] if self.bias_term else [])
        got = [tuple(b.shape) for b in self.blobs]
        if got != expected:
            raise self.error(f"parameter blobs have shapes {got}, expected {expected}")

    def _gradient_targets(self):
        """(dweight, dbias), None where the parameter is not learned."""
        dweight = self.blobs[0].diff if self.param_propagate_down[0] else None
        dbias = None
        if self.bias_term and self.param_propagate_down[1]:
            dbias = self.blobs[1].diff
        return dweight, dbias


@register
class Convolution(_WeightedConvolution):
    """Caffe's Convolution: N-D, grouped, dilated; one top per bottom, weights shared."""

    type = "Convolution"

    def weight_shape(self):
        return (self.num_output, self.channels // self.group) + self.geometry.kernel

    def fuses_relu(self):
        return True

    def forward(self, bottom, top):
        bias = self.blobs[1].data if self.bias_term else None
        for b, t in zip(bottom, top):
            x = b.data.reshape(self.in_shape)
            self.op.forward(x, self.blobs[0].data, bias, t.data.reshape(self.out_shape), self.fused_relu)

    def expect_backward(self, bottom_needs):
        self.op.expect_dx(any(bottom_needs))

    def backward(self, top, propagate_down, bottom):
        dweight, dbias = self._gradient_targets()
        for i, (b, t) in enumerate(zip(bottom, top)):
            dx = b.diff.reshape(self.in_shape) if propagate_down[i] else None
            self.op.backward(b.data.reshape(self.in_shape), t.diff.reshape(self.out_shape),
                             self.blobs[0].data, dweight, dbias, dx)


@register
class Deconvolution(_WeightedConvolution):
    """Caffe's Deconvolution: the transpose of a Convolution whose input is
    this layer's top. Weights are (channels, num_output / group, *kernel) and
    the top is stride * (in - 1) + dilation * (kernel - 1) + 1 - 2 * pad.

    Forward is that convolution's input gradient; backward is its forward
    (for the bottom gradient) and its weight gradient with the roles of data
    and gradient swapped.
    """

    type = "Deconvolution"

    def weight_shape(self):
        return (self.channels, self.num_output // self.group) + self.geometry.kernel

    def top_spatial(self, spatial):
        return self.geometry.in_shape(spatial)

    def forward(self, bottom, top):
        for b, t in zip(bottom, top):
            y = t.data.reshape(self.out_shape)
            self.op.backward_data(b.data.reshape(self.in_shape), self.blobs[0].data, y)
            if self.bias_term:
                y += self.blobs[1].data.reshape((-1,) + (1,) * (y.ndim - 2))

    def backward(self, top, propagate_down, bottom):
        dweight, dbias = self._gradient_targets()
        weight = self.blobs[0].data
        for i, (b, t) in enumerate(zip(bottom, top)):
            dy = t.diff.reshape(self.out_shape)
            if dbias is not None:
                dbias += dy.sum(axis=(0,) + tuple(range(2, dy.ndim)))
            if propagate_down[i]:
                self.op.forward(dy, weight, None, b.diff.reshape(self.in_shape))
            if dweight is not None:
                # The convolution's input is dy and its output gradient our bottom.
                self.op.backward(dy, b.data.reshape(self.in_shape), weight, dweight=dweight)


@register
class Im2col(_ConvolutionBase):
    """Caffe's Im2col: the column matrix of a convolution as a blob,
    (N, C * kernel volume, *out), channel-major rows as Caffe orders them."""

    type = "Im2col"
    exact_num_bottom = 1
    exact_num_top = 1

    def setup_op(self, p, bottom):
        self.op = ops.Im2col(self.geometry)

    def top_channels(self):
        return self.channels * self.geometry.kernel_volume()

    def _columns(self, blob_array):
        g = self.geometry
        return blob_array.reshape((self.num, self.channels) + g.kernel + self.out_shape[2:])

    def forward(self, bottom, top):
        for b, t in zip(bottom, top):
            self.op.forward(b.data.reshape(self.in_shape), self._columns(t.data))

    def backward(self, top, propagate_down, bottom):
        for i, (b, t) in enumerate(zip(bottom, top)):
            if propagate_down[i]:
                self.op.backward(self._columns(t.diff), b.diff.reshape(self.in_shape))


@register
class LRN(Layer):
    """Caffe's local response normalization, ACROSS_CHANNELS or WITHIN_CHANNEL."""

    type = "LRN"
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.lrn_param
        if p.local_size % 2 == 0:
            raise self.error(f"local_size must be odd, got {p.local_size}")
        if p.norm_region not in (NormRegion.ACROSS_CHANNELS, NormRegion.WITHIN_CHANNEL):
            raise self.error(f"unknown norm_region {p.norm_region}")
        if len(bottom[0].shape) != 4:
            raise self.error(f"bottom must have 4 axes (num, channels, height, width), got {bottom[0].shape}")
        self.op = ops.LRN(p.local_size, p.alpha, p.beta, p.k,
                          across_channels=p.norm_region == NormRegion.ACROSS_CHANNELS)

    def reshape(self, bottom, top):
        if len(bottom[0].shape) != 4:
            raise self.error(f"bottom must have 4 axes (num, channels, height, width), got {bottom[0].shape}")
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        x = bottom[0].data
        y = x if top[0] is bottom[0] else top[0].data
        self.op.forward(x, y)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            self.op.backward(top[0].diff, bottom[0].diff, bottom[0].data)
