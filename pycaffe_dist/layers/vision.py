"""Vision layers: Convolution, Pooling and LRN.

The layers read and check their parameters the way Caffe does and hand the
arithmetic to pycaffe_dist.ops, which keeps the speed-minded array code.
"""
import numpy

from .. import ops
from ..proto import caffe_pb2
from .base import Layer, register
from .common import canonical_axis

PoolMethod = caffe_pb2.PoolingParameter
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


@register
class Convolution(Layer):
    """Caffe's Convolution: N-D, grouped, dilated; one top per bottom, weights shared."""

    type = "Convolution"
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
        self._check_channels(p, shape[self.axis])
        self.op = ops.Convolution(ops.ConvGeometry(kernel, stride, pad, dilation), p.group)
        self._make_blobs(p, kernel)
        self.param_propagate_down = [True] * len(self.blobs)

    def _check_channels(self, p, channels):
        self.num_output, self.group, self.channels = int(p.num_output), int(p.group), int(channels)
        if self.num_output <= 0:
            raise self.error("convolution_param.num_output must be positive")
        if self.group <= 0:
            raise self.error("group must be positive")
        if self.channels % self.group:
            raise self.error(f"{self.channels} input channels are not divisible by group {self.group}")
        if self.num_output % self.group:
            raise self.error(f"num_output {self.num_output} is not divisible by group {self.group}")
        self.bias_term = bool(p.bias_term)

    def _make_blobs(self, p, kernel):
        wshape = (self.num_output, self.channels // self.group) + tuple(kernel)
        if not self.blobs:  # weights may come from elsewhere (shared, loaded)
            self.blobs = [self.make_blob(wshape, p.weight_filler)]
            if self.bias_term:
                self.blobs.append(self.make_blob((self.num_output,), p.bias_filler))
        expected = [wshape] + ([(self.num_output,)] if self.bias_term else [])
        got = [tuple(b.shape) for b in self.blobs]
        if got != expected:
            raise self.error(f"parameter blobs have shapes {got}, expected {expected}")

    def reshape(self, bottom, top):
        shape = tuple(bottom[0].shape)
        for i, b in enumerate(bottom[1:], 1):
            if tuple(b.shape) != shape:
                raise self.error(f"all bottoms need one shape: bottom[0] is {shape}, bottom[{i}] is {b.shape}")
        if len(shape) != self.axis + 1 + len(self.op.geometry.kernel) or shape[self.axis] != self.channels:
            raise self.error(f"bottom {shape} does not match the setup (channels {self.channels} at axis "
                             f"{self.axis}, {len(self.op.geometry.kernel)} spatial axes)")
        spatial = shape[self.axis + 1:]
        out = self.op.geometry.out_shape(spatial)
        if min(out) < 1:
            g = self.op.geometry
            raise self.error(f"input {spatial} (pad {g.pad}) is smaller than the kernel {g.kernel} "
                             f"(dilation {g.dilation})")
        self.num = int(numpy.prod(shape[:self.axis], dtype=numpy.int64))
        self.in_shape = (self.num, self.channels) + tuple(spatial)
        self.out_shape = (self.num, self.num_output) + tuple(out)
        for t in top:
            t.reshape(shape[:self.axis] + (self.num_output,) + tuple(out))

    def forward(self, bottom, top):
        bias = self.blobs[1].data if self.bias_term else None
        for b, t in zip(bottom, top):
            x = b.data.reshape(self.in_shape)
            self.op.forward(x, self.blobs[0].data, bias, t.data.reshape(self.out_shape))

    def backward(self, top, propagate_down, bottom):
        weight = self.blobs[0]
        dweight = weight.diff if self.param_propagate_down[0] else None
        dbias = None
        if self.bias_term and self.param_propagate_down[1]:
            dbias = self.blobs[1].diff
        for i, (b, t) in enumerate(zip(bottom, top)):
            dx = b.diff.reshape(self.in_shape) if propagate_down[i] else None
            self.op.backward(b.data.reshape(self.in_shape), t.diff.reshape(self.out_shape),
                             weight.data, dweight, dbias, dx)


def _pool_field(layer, p, name, default):
    """kernel/pad/stride of PoolingParameter as (h, w), Caffe's rules: the
    square field or both _h and _w, never a mix; `default` when none is given
    (None: required)."""
    h_name, w_name = f"{name}_h", f"{name}_w"
    if name == "kernel":
        name = "kernel_size"
    has_one = p.HasField(name)
    has_h, has_w = p.HasField(h_name), p.HasField(w_name)
    if has_one and (has_h or has_w):
        raise layer.error(f"give either {name} or {h_name} and {w_name}, not both")
    if has_h != has_w:
        raise layer.error(f"{h_name} and {w_name} must be given together")
    if has_h:
        return int(getattr(p, h_name)), int(getattr(p, w_name))
    if has_one or default is None:
        if not has_one:
            raise layer.error(f"{name} (or {h_name} and {w_name}) is required")
        return (int(getattr(p, name)),) * 2
    return (default, default)


@register
class Pooling(Layer):
    """Caffe's Pooling: MAX (optional second top: the argmax mask) or AVE,
    Caffe's round-up output size, padding, global pooling."""

    type = "Pooling"
    exact_num_bottom = 1
    min_top = 1
    max_top = 2

    def layer_setup(self, bottom, top):
        p = self.param.pooling_param
        self.method = p.pool
        if self.method == PoolMethod.STOCHASTIC:
            raise self.error("STOCHASTIC pooling is not implemented; use MAX or AVE")
        if len(top) == 2 and self.method != PoolMethod.MAX:
            raise self.error("only MAX pooling has a second (mask) top")
        if len(bottom[0].shape) != 4:
            raise self.error(f"bottom must have 4 axes (num, channels, height, width), got {bottom[0].shape}")
        if top[0] is bottom[0]:
            raise self.error("in-place pooling is not supported; give the top its own name")
        self.global_pooling = bool(p.global_pooling)
        if self.global_pooling:
            if p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w"):
                raise self.error("with global_pooling the kernel size cannot be given")
            self.kernel = None
        else:
            self.kernel = _pool_field(self, p, "kernel", None)
            if min(self.kernel) < 1:
                raise self.error(f"kernel size must be positive, got {self.kernel}")
        self.pad = _pool_field(self, p, "pad", int(p.pad))
        self.stride = _pool_field(self, p, "stride", int(p.stride))
        if self.global_pooling and (self.pad != (0, 0) or self.stride != (1, 1)):
            raise self.error("with global_pooling only pad 0 and stride 1 are allowed")
        if min(self.stride) < 1:
            raise self.error(f"stride must be positive, got {self.stride}")
        if self.kernel and any(pd >= k for pd, k in zip(self.pad, self.kernel)):
            raise self.error(f"pad {self.pad} must be smaller than the kernel {self.kernel}")
        self.ceil_mode = p.round_mode == caffe_pb2.PoolingParameter.CEIL
        self._geometry_key = None

    def reshape(self, bottom, top):
        n, c, h, w = bottom[0].shape
        kernel = (h, w) if self.global_pooling else self.kernel
        out = tuple(ops.pooled_size(size, k, s, pd, self.ceil_mode)
                    for size, k, s, pd in zip((h, w), kernel, self.stride, self.pad))
        if min(out) < 1:
            raise self.error(f"input {h}x{w} (pad {self.pad}) is smaller than the kernel {kernel}")
        key = ((h, w), kernel, out)
        if key != self._geometry_key:
            self.op = self._make_op(kernel, (h, w), out)
            self._geometry_key = key
        for t in top:
            t.reshape((n, c) + out)

    def _make_op(self, kernel, in_size, out):
        if self.global_pooling and self.method == PoolMethod.MAX:
            return ops.GlobalMaxPooling()
        geometry = ops.PoolGeometry(kernel, self.stride, self.pad, in_size, out)
        if self.method == PoolMethod.MAX:
            return ops.MaxPooling(geometry)
        return ops.AveragePooling(geometry)

    def forward(self, bottom, top):
        # The argmax is only needed to learn; a TEST forward skips it (backward
        # recomputes it if asked) unless the mask top wants it.
        track = self.phase == caffe_pb2.TRAIN or len(top) == 2
        self.op.forward(bottom[0].data, top[0].data, track=track)
        if len(top) == 2:
            self.op.mask(top[1].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            self.op.backward(top[0].diff, bottom[0].diff, bottom[0].data)


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
