"""Pooling (MAX, AVE, STOCHASTIC, global) and SPP, Caffe's spatial pyramid.

The layers read and check pooling_param / spp_param as Caffe does; the
arithmetic lives in pycaffe_dist.ops.
"""
from .. import ops
from ..proto import caffe_pb2
from .base import Layer, register
from .common import scratch

PoolMethod = caffe_pb2.PoolingParameter


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


def make_pool_op(method, kernel, stride, pad, in_size, out):
    geometry = ops.PoolGeometry(kernel, stride, pad, in_size, out)
    if method == PoolMethod.MAX:
        return ops.MaxPooling(geometry)
    if method == PoolMethod.AVE:
        return ops.AveragePooling(geometry)
    return ops.StochasticPooling(geometry)


@register
class Pooling(Layer):
    """Caffe's Pooling: MAX (optional second top: the argmax mask), AVE or
    STOCHASTIC (sampling in TRAIN, weighted average in TEST; no padding),
    Caffe's round-up output size, padding, global pooling."""

    type = "Pooling"
    exact_num_bottom = 1
    min_top = 1
    max_top = 2

    def layer_setup(self, bottom, top):
        p = self.param.pooling_param
        self.method = p.pool
        if self.method not in (PoolMethod.MAX, PoolMethod.AVE, PoolMethod.STOCHASTIC):
            raise self.error(f"unknown pool method {self.method}")
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
        if self.method == PoolMethod.STOCHASTIC and self.pad != (0, 0):
            raise self.error("padding is implemented only for MAX and AVE pooling, not STOCHASTIC")
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
        return make_pool_op(self.method, kernel, self.stride, self.pad, in_size, out)

    def fuses_relu(self):
        return self.method == PoolMethod.MAX and not self.global_pooling

    def forward(self, bottom, top):
        if self.method == PoolMethod.STOCHASTIC:
            self.op.forward(bottom[0].data, top[0].data, train=self.phase == caffe_pb2.TRAIN)
            return
        # The argmax is only needed to learn; a TEST forward skips it (backward
        # recomputes it if asked) unless the mask top wants it.
        track = self.phase == caffe_pb2.TRAIN or len(top) == 2
        if self.fused_relu:
            self.op.forward(bottom[0].data, top[0].data, track=track, relu=True)
        else:
            self.op.forward(bottom[0].data, top[0].data, track=track)
        if len(top) == 2:
            self.op.mask(top[1].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            self.op.backward(top[0].diff, bottom[0].diff, bottom[0].data)


@register
class SPP(Layer):
    """Caffe's spatial pyramid pooling: level l pools the whole input into
    about 2^l x 2^l bins (kernel ceil(H / 2^l), stride = kernel, the
    remainder padded), and the flattened levels are concatenated. One level
    leaves its (N, C, 1, 1) output unflattened, as Caffe does."""

    type = "SPP"
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.spp_param
        self.height = int(p.pyramid_height)
        if self.height < 1:
            raise self.error(f"pyramid_height must be at least 1, got {self.height}")
        self.method = {p.MAX: PoolMethod.MAX, p.AVE: PoolMethod.AVE, p.STOCHASTIC: PoolMethod.STOCHASTIC}[p.pool]
        self._size = None

    def _level(self, level, h, w):
        """Kernel, pad and output size of one level (Caffe's GetPoolingParam)."""
        bins = 2 ** level
        kernel = (-(-h // bins), -(-w // bins))
        pad = tuple((k * bins - size + 1) // 2 for k, size in zip(kernel, (h, w)))
        if any(pd >= k for pd, k in zip(pad, kernel)) or (self.method == PoolMethod.STOCHASTIC and any(pad)):
            raise self.error(f"a {h}x{w} input is too small for pyramid level {level} ({bins}x{bins} bins "
                             f"need kernel {kernel} with pad {pad})")
        out = tuple(ops.pooled_size(size, k, k, pd) for size, k, pd in zip((h, w), kernel, pad))
        return kernel, pad, out

    def reshape(self, bottom, top):
        if len(bottom[0].shape) != 4:
            raise self.error(f"bottom must have 4 axes (num, channels, height, width), got {bottom[0].shape}")
        n, c, h, w = bottom[0].shape
        if (h, w) != self._size:
            self.ops, self.outs = [], []
            for level in range(self.height):
                kernel, pad, out = self._level(level, h, w)
                self.ops.append(make_pool_op(self.method, kernel, kernel, pad, (h, w), out))
                self.outs.append(out)
            self._size = (h, w)
        if self.height == 1:
            top[0].reshape((n, c) + self.outs[0])
        else:
            top[0].reshape((n, sum(c * oh * ow for oh, ow in self.outs)))

    def _level_arrays(self, top_array, n, c):
        """Each level's (N, C, oh, ow) part of the top, as (view, offset)."""
        flat = top_array.reshape(n, -1)
        start = 0
        for level, (oh, ow) in enumerate(self.outs):
            size = c * oh * ow
            yield level, flat[:, start:start + size], (n, c, oh, ow)
            start += size

    def _pool(self, op, x, y):
        if self.method == PoolMethod.STOCHASTIC:
            op.forward(x, y, train=self.phase == caffe_pb2.TRAIN)
        else:
            op.forward(x, y, track=self.phase == caffe_pb2.TRAIN)

    def forward(self, bottom, top):
        x = bottom[0].data
        n, c = x.shape[:2]
        if self.height == 1:
            self._pool(self.ops[0], x, top[0].data)
            return
        for level, part, shape in self._level_arrays(top[0].data, n, c):
            # The ops write whole contiguous arrays; a level's part of the top is strided.
            y = scratch(self, f"_y{level}", shape, x.dtype)
            self._pool(self.ops[level], x, y)
            part[...] = y.reshape(n, -1)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x, dx = bottom[0].data, bottom[0].diff
        n, c = x.shape[:2]
        if self.height == 1:
            self.ops[0].backward(top[0].diff, dx, x)
            return
        for level, part, shape in self._level_arrays(top[0].diff, n, c):
            dy = scratch(self, f"_y{level}", shape, x.dtype)
            dy.reshape(n, -1)[...] = part
            target = dx if level == 0 else scratch(self, "_dx", dx.shape, dx.dtype)
            self.ops[level].backward(dy, target, x)
            if level:
                dx += target
