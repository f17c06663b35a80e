"""Common layers: InnerProduct, Embed, Flatten, Concat, Split, Eltwise, Softmax.

Also the small helpers other layer families share: axis canonicalisation,
the outer/inner split of a shape around an axis, reusable scratch buffers and
a numerically stable softmax.
"""
import numpy

from ..ops.inner_product import InnerProduct as InnerProductOp
from ..proto.caffe_pb2 import EltwiseParameter
from .base import Layer, register


# -- shared helpers -------------------------------------------------------------
def canonical_axis(layer, axis, ndim):
    """`axis` in [0, ndim), counting negative axes from the end as Caffe does."""
    if not -ndim <= axis < ndim:
        raise layer.error(f"axis {axis} is out of range for a {ndim}-axis blob")
    return axis % ndim


def split_shape(shape, axis):
    """(outer, shape[axis], inner): the 3-D view softmax-like layers work on."""
    outer = int(numpy.prod(shape[:axis], dtype=numpy.int64))
    inner = int(numpy.prod(shape[axis + 1:], dtype=numpy.int64))
    return outer, int(shape[axis]), inner


def scratch(layer, name, shape, dtype, xp=None):
    """A buffer kept on `layer`, reused across iterations while shape and dtype hold.

    Steady-state training then allocates nothing per step.
    """
    xp = xp or layer.xp
    shape = tuple(shape)
    buf = getattr(layer, name, None)
    if buf is None or buf.shape != shape or buf.dtype != dtype or not isinstance(buf, xp.ndarray):
        buf = xp.empty(shape, dtype=dtype)
        setattr(layer, name, buf)
    return buf


def softmax(xp, x, y, scale):
    """y = softmax of the (outer, C, inner) array x over axis 1; y may be x.

    The per-position maximum is subtracted first so exp never overflows.
    `scale` is an (outer, 1, inner) scratch buffer.
    """
    x.max(axis=1, keepdims=True, out=scale)
    xp.subtract(x, scale, out=y)
    xp.exp(y, out=y)
    y.sum(axis=1, keepdims=True, out=scale)
    y /= scale


def read_indices(layer, blob, limit, what):
    """A blob's values as int64 indices into range(limit); a value that is not
    an integer in that range raises an error naming it (Caffe truncates the
    float and checks only in debug builds)."""
    values = blob.data.reshape(-1)
    indices = values.astype(numpy.int64)
    bad = (indices != values) | (indices < 0) | (indices >= limit)
    if bool(bad.any()):
        value = float(values[bad][0])
        raise layer.error(f"{what} value {value:g} is not an integer in [0, {limit})")
    return indices


def check_not_in_place(layer, bottom, top):
    if any(t is b for t in top for b in bottom):
        raise layer.error("does not work in place; give its top a different name")


# -- InnerProduct -----------------------------------------------------------------
@register
class InnerProduct(Layer):
    """y = x W^T + b over the axes from `axis` on, flattened to one."""

    type = "InnerProduct"
    exact_num_bottom = 1
    exact_num_top = 1
    overwrites_weight_diff = True     # see Net.clear_param_diffs(lazily=True)

    def layer_setup(self, bottom, top):
        p = self.param.inner_product_param
        if p.num_output <= 0:
            raise self.error("inner_product_param.num_output must be positive")
        self.num_output = int(p.num_output)
        self.transpose = bool(p.transpose)
        self.bias_term = bool(p.bias_term)
        shape = bottom[0].shape
        self.axis = canonical_axis(self, p.axis, len(shape))
        k = int(numpy.prod(shape[self.axis:], dtype=numpy.int64))
        if not self.blobs:  # weights may come from elsewhere (shared, loaded)
            wshape = (k, self.num_output) if self.transpose else (self.num_output, k)
            self.blobs = [self.make_blob(wshape, p.weight_filler)]
            if self.bias_term:
                self.blobs.append(self.make_blob((self.num_output,), p.bias_filler))
        self.param_propagate_down = [True] * len(self.blobs)

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        self.m = int(numpy.prod(shape[:self.axis], dtype=numpy.int64))
        self.k = int(numpy.prod(shape[self.axis:], dtype=numpy.int64))
        wshape = self.blobs[0].shape
        expected = wshape[0] if self.transpose else wshape[1]
        if self.k != expected:
            raise self.error(f"bottom {shape} flattens to {self.k} inputs from axis {self.axis} "
                             f"but the weights take {expected}")
        top[0].reshape(tuple(shape[:self.axis]) + (self.num_output,))

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.m, self.k)
        y = top[0].data.reshape(self.m, self.num_output)
        self._gemms().forward(x, self.blobs[0].data, y, self.transpose)
        if self.bias_term:
            y += self.blobs[1].data

    def _gemms(self):
        # the GEMMs on the ops' threads, their scratch kept (ops/inner_product.py)
        if getattr(self, "_op", None) is None:
            self._op = InnerProductOp()
        return self._op

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff.reshape(self.m, self.num_output)
        x = bottom[0].data.reshape(self.m, self.k)
        weight = self.blobs[0]
        if self.param_propagate_down[0]:
            # accumulated: parameter diffs add up until the solver clears them;
            # written straight into the diff when it was cleared lazily
            overwrite = weight.diff_owes_zeros
            diff = weight.diff_to_overwrite() if overwrite else weight.diff
            self._gemms().weight_grad(dy, x, diff, self.transpose, overwrite=overwrite)
        if self.bias_term and self.param_propagate_down[1]:
            bias_diff = self.blobs[1].diff
            bias_diff += dy.sum(axis=0)
        if propagate_down[0]:
            dx = bottom[0].diff.reshape(self.m, self.k)
            self._gemms().input_grad(dy, weight.data, dx, self.transpose)


# -- Embed ------------------------------------------------------------------------
@register
class Embed(Layer):
    """y[..., :] = W[x] (+ b): rows of a learned input_dim x num_output table
    looked up by the integer ids in the bottom (InnerProduct on one-hot
    inputs). The ids get no gradient."""

    type = "Embed"
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        check_not_in_place(self, bottom, top)
        p = self.param.embed_param
        if p.num_output <= 0 or p.input_dim <= 0:
            raise self.error("embed_param needs positive num_output and input_dim, got "
                             f"{p.num_output} and {p.input_dim}")
        self.num_output, self.input_dim = int(p.num_output), int(p.input_dim)
        self.bias_term = bool(p.bias_term)
        if not self.blobs:
            self.blobs = [self.make_blob((self.input_dim, self.num_output), p.weight_filler)]
            if self.bias_term:
                self.blobs.append(self.make_blob((self.num_output,), p.bias_filler))
        self.param_propagate_down = [True] * len(self.blobs)

    def reshape(self, bottom, top):
        top[0].reshape(tuple(bottom[0].shape) + (self.num_output,))

    def allow_force_backward(self, bottom_index):
        return False

    def forward(self, bottom, top):
        self._ids = read_indices(self, bottom[0], self.input_dim, "bottom[0] (an id)")
        y = top[0].data.reshape(-1, self.num_output)
        self.xp.take(self.blobs[0].data, self._ids, axis=0, out=y)
        if self.bias_term:
            y += self.blobs[1].data

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            raise self.error("cannot backpropagate to its input ids (bottom[0])")
        dy = top[0].diff.reshape(-1, self.num_output)
        if self.param_propagate_down[0]:
            # repeated ids add up, as the one-hot product would
            self.xp.add.at(self.blobs[0].diff, self._ids, dy)
        if self.bias_term and self.param_propagate_down[1]:
            bias_diff = self.blobs[1].diff
            bias_diff += dy.sum(axis=0)


# -- Flatten ----------------------------------------------------------------------
@register
class Flatten(Layer):
    """Merge axes axis..end_axis into one."""

    type = "Flatten"
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        check_not_in_place(self, bottom, top)

    def reshape(self, bottom, top):
        p = self.param.flatten_param
        shape = bottom[0].shape
        start = canonical_axis(self, p.axis, len(shape))
        end = canonical_axis(self, p.end_axis, len(shape))
        if end < start:
            raise self.error(f"end_axis {p.end_axis} comes before axis {p.axis}")
        merged = int(numpy.prod(shape[start:end + 1], dtype=numpy.int64))
        top[0].reshape(tuple(shape[:start]) + (merged,) + tuple(shape[end + 1:]))

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data.reshape(top[0].shape)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff.reshape(bottom[0].shape)


# -- Concat -----------------------------------------------------------------------
@register
class Concat(Layer):
    """Join the bottoms along one axis."""

    type = "Concat"
    min_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        check_not_in_place(self, bottom, top)
        p = self.param.concat_param
        if p.HasField("axis") and p.HasField("concat_dim"):
            raise self.error("give concat_param either axis or the legacy concat_dim, not both")
        axis = p.concat_dim if p.HasField("concat_dim") else p.axis
        self.axis = canonical_axis(self, axis, len(bottom[0].shape))

    def reshape(self, bottom, top):
        first = bottom[0].shape
        total = 0
        for i, b in enumerate(bottom):
            if len(b.shape) != len(first) or any(
                    d != f for a, (d, f) in enumerate(zip(b.shape, first)) if a != self.axis):
                raise self.error(f"bottom[{i}] has shape {b.shape} but bottom[0] has {first}; "
                                 f"all axes except the concat axis {self.axis} must match")
            total += b.shape[self.axis]
        shape = list(first)
        shape[self.axis] = total
        top[0].reshape(shape)

    def _slices(self, bottom):
        lead = (slice(None),) * self.axis
        start = 0
        for b in bottom:
            stop = start + b.shape[self.axis]
            yield b, lead + (slice(start, stop),)
            start = stop

    def forward(self, bottom, top):
        out = top[0].data
        for b, where in self._slices(bottom):
            out[where] = b.data

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff
        for i, (b, where) in enumerate(self._slices(bottom)):
            if propagate_down[i]:
                b.diff[...] = dy[where]


# -- Split ------------------------------------------------------------------------
@register
class Split(Layer):
    """Copy one bottom to several tops (the Net inserts these for shared blobs)."""

    type = "Split"
    exact_num_bottom = 1
    min_top = 1

    def layer_setup(self, bottom, top):
        check_not_in_place(self, bottom, top)

    def reshape(self, bottom, top):
        for t in top:
            t.reshape(bottom[0].shape)

    def forward(self, bottom, top):
        # Copies rather than shared memory: a consumer working in place on
        # one top must not change what the others see.
        for t in top:
            t.data[...] = bottom[0].data

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        if len(top) == 1:
            dx[...] = top[0].diff
            return
        self.xp.add(top[0].diff, top[1].diff, out=dx)
        for t in top[2:]:
            dx += t.diff


# -- Eltwise ----------------------------------------------------------------------
PROD, SUM, MAX = EltwiseParameter.PROD, EltwiseParameter.SUM, EltwiseParameter.MAX


@register
class Eltwise(Layer):
    """Elementwise PROD, SUM (weighted by coeff) or MAX of same-shaped bottoms."""

    type = "Eltwise"
    min_bottom = 2
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        check_not_in_place(self, bottom, top)
        p = self.param.eltwise_param
        self.op = p.operation
        self.stable_prod_grad = bool(p.stable_prod_grad)
        if p.coeff and self.op != SUM:
            raise self.error("coeff is only meaningful for operation SUM")
        if p.coeff and len(p.coeff) != len(bottom):
            raise self.error(f"{len(p.coeff)} coeff values for {len(bottom)} bottoms; "
                             "give one per bottom")
        self.coeff = [float(c) for c in p.coeff] or [1.0] * len(bottom)

    def reshape(self, bottom, top):
        for i, b in enumerate(bottom[1:], 1):
            if b.shape != bottom[0].shape:
                raise self.error(f"bottom[{i}] has shape {b.shape} but bottom[0] has {bottom[0].shape}")
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        {SUM: self._forward_sum, PROD: self._forward_prod, MAX: self._forward_max}[self.op](
            [b.data for b in bottom], top[0].data)

    def backward(self, top, propagate_down, bottom):
        grad = {SUM: self._grad_sum, PROD: self._grad_prod, MAX: self._grad_max}[self.op]
        for i, b in enumerate(bottom):
            if propagate_down[i]:
                grad(i, bottom, top[0], b.diff)

    # SUM: y = sum_i c_i x_i; dx_i = c_i dy
    def _forward_sum(self, xs, y):
        self.xp.multiply(xs[0], self.coeff[0], out=y)
        for c, x in zip(self.coeff[1:], xs[1:]):
            if c == 1.0:
                y += x
            else:
                term = scratch(self, "_term", y.shape, y.dtype)
                self.xp.multiply(x, c, out=term)
                y += term

    def _grad_sum(self, i, bottom, top, dx):
        self.xp.multiply(top.diff, self.coeff[i], out=dx)

    # PROD: y = prod_i x_i; dx_i = dy * prod_{j != i} x_j
    def _forward_prod(self, xs, y):
        self.xp.multiply(xs[0], xs[1], out=y)
        for x in xs[2:]:
            y *= x

    def _grad_prod(self, i, bottom, top, dx):
        if self.stable_prod_grad:
            # Multiply the others explicitly: y / x_i breaks down at x_i = 0.
            others = [b.data for j, b in enumerate(bottom) if j != i]
            self.xp.multiply(top.diff, others[0], out=dx)
            for x in others[1:]:
                dx *= x
        else:
            self.xp.divide(top.data, bottom[i].data, out=dx)
            dx *= top.diff

    # MAX: y = max_i x_i; the gradient goes to the first bottom holding the max
    def _forward_max(self, xs, y):
        xp = self.xp
        argmax = scratch(self, "_argmax", y.shape, numpy.int32)
        better = scratch(self, "_better", y.shape, bool)
        y[...] = xs[0]
        argmax[...] = 0
        for i, x in enumerate(xs[1:], 1):
            xp.greater(x, y, out=better)
            xp.copyto(argmax, i, where=better)
            xp.maximum(y, x, out=y)

    def _grad_max(self, i, bottom, top, dx):
        chosen = scratch(self, "_better", dx.shape, bool)
        self.xp.equal(self._argmax, i, out=chosen)
        self.xp.multiply(top.diff, chosen, out=dx)


# -- Softmax ----------------------------------------------------------------------
@register
class Softmax(Layer):
    """y = exp(x) / sum(exp(x)) over softmax_param.axis."""

    type = "Softmax"
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        self.axis = canonical_axis(self, self.param.softmax_param.axis, len(bottom[0].shape))

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape)
        self.dims = split_shape(bottom[0].shape, self.axis)

    def _scale(self, dtype):
        outer, _, inner = self.dims
        return scratch(self, "_scale_buf", (outer, 1, inner), dtype)

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.dims)
        y = top[0].data.reshape(self.dims)
        softmax(self.xp, x, y, self._scale(y.dtype))

    def backward(self, top, propagate_down, bottom):
        # dx = y * (dy - sum(dy * y)) over the softmax axis
        if not propagate_down[0]:
            return
        xp = self.xp
        y = top[0].data.reshape(self.dims)
        dy = top[0].diff.reshape(self.dims)
        dx = bottom[0].diff.reshape(self.dims)
        product = scratch(self, "_product", self.dims, y.dtype)
        dot = self._scale(y.dtype)
        xp.multiply(dy, y, out=product)
        product.sum(axis=1, keepdims=True, out=dot)
        xp.subtract(dy, dot, out=dx)
        dx *= y
