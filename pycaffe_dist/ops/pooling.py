"""2-D max and average pooling over (N, C, H, W) arrays, Caffe's arithmetic.

Max pooling walks the kernel offsets: each offset is a strided (NC, OH, OW)
view of the (padded) input, and the running maximum and the offset that set
it are updated with whole-array ops, kernel-area many. Ties go to the first
offset in row-major order, as in Caffe, because only a strictly greater value
replaces the running maximum. The winning offset is kept as a small integer
array, so backward is one compare and one multiply per offset.

Average pooling is linear, so when the planes are small it is one GEMM with a
(H*W, OH*OW) matrix holding the window weights 1/pool_size (Caffe's pool size
counts padding up to H + pad); bigger planes sum offset views separably.
"""
import math

import numpy

from .. import backend
from .workspace import Workspace

# Average pooling is a GEMM when its (H*W, OH*OW) matrix has at most this
# many entries, and the GEMM does at most GEMM_FACTOR times the additions of
# the separable sums (a GEMM flop is that much cheaper than a numpy add).
GEMM_MAX_ENTRIES = 1 << 20
GEMM_FACTOR = 32


def pooled_size(size, kernel, stride, pad, ceil_mode=True):
    """Caffe's pooling output size: rounded up (or down with round_mode FLOOR),
    then the last window dropped if it would start inside the bottom padding."""
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return out


class PoolGeometry:
    """Kernel, stride and pad as (h, w) pairs, with the input and output sizes."""

    def __init__(self, kernel, stride, pad, in_size, out_size):
        self.kernel, self.stride, self.pad = tuple(kernel), tuple(stride), tuple(pad)
        self.in_size, self.out_size = tuple(in_size), tuple(out_size)
        # Rows/columns the windows touch, in padded coordinates.
        self.span = tuple((o - 1) * s + k for o, s, k in zip(self.out_size, self.stride, self.kernel))
        self.needs_buffer = any(p > 0 or span > size for p, span, size in zip(self.pad, self.span, self.in_size))
        self.overlapping = any(s < k for s, k in zip(self.stride, self.kernel))
        self.offsets = [(i, j) for i in range(self.kernel[0]) for j in range(self.kernel[1])]

    def copied_extent(self):
        """How many input rows/columns the windows reach (the rest is never read)."""
        return tuple(min(size, span - p) for size, span, p in zip(self.in_size, self.span, self.pad))

    def covers_exactly(self):
        """Every input element is in exactly one window (backward may assign)."""
        return not self.needs_buffer and not self.overlapping and all(
            s == k and span == size for s, k, span, size in zip(self.stride, self.kernel, self.span, self.in_size))


def _offset_view(xp, planes, geometry, offset):
    """The (NC, OH, OW) view of `planes` seen by kernel offset (i, j)."""
    i, j = offset
    st = planes.strides
    shape = (planes.shape[0],) + geometry.out_size
    strides = (st[0], st[1] * geometry.stride[0], st[2] * geometry.stride[1])
    return xp.lib.stride_tricks.as_strided(planes[:, i:, j:], shape, strides)


class _Pooling:
    def __init__(self, geometry):
        self.geometry = geometry
        self.workspace = Workspace()

    def _planes(self, x):
        n, c, h, w = x.shape
        return x.reshape(n * c, h, w)

    def _padded_input(self, xp, planes, fill):
        """The input inside a buffer padded with `fill`, or the input itself
        when the windows stay inside it."""
        g = self.geometry
        if not g.needs_buffer:
            return planes
        buf = self.workspace.get("xpad", (planes.shape[0],) + g.span, planes.dtype, xp, fill=fill)
        eh, ew = g.copied_extent()
        ph, pw = g.pad
        buf[:, ph:ph + eh, pw:pw + ew] = planes[:, :eh, :ew]
        return buf

    def _grad_buffer(self, xp, dx_planes):
        """Where backward accumulates: dx itself, or a zeroed padded buffer."""
        g = self.geometry
        if not g.needs_buffer:
            if not g.covers_exactly():
                dx_planes.fill(0)
            return dx_planes
        buf = self.workspace.get("dxpad", (dx_planes.shape[0],) + g.span, dx_planes.dtype, xp)
        buf.fill(0)
        return buf

    def _crop_grad(self, buf, dx_planes):
        g = self.geometry
        if buf is dx_planes:
            return
        eh, ew = g.copied_extent()
        ph, pw = g.pad
        if (eh, ew) != g.in_size:
            dx_planes.fill(0)
        dx_planes[:, :eh, :ew] = buf[:, ph:ph + eh, pw:pw + ew]


class MaxPooling(_Pooling):
    """Max pooling; forward remembers each window's winning offset."""

    def __init__(self, geometry):
        super().__init__(geometry)
        k = len(geometry.offsets)
        self.index_dtype = numpy.uint8 if k < 256 else numpy.int32
        self._index_valid = False

    def forward(self, x, y, track=True):
        """y = max over each window; with `track`, remember the argmax for backward."""
        xp = backend.get_array_module(x)
        g = self.geometry
        planes = self._padded_input(xp, self._planes(x), -numpy.inf)
        ymax = self._planes(y)
        views = [_offset_view(xp, planes, g, offset) for offset in g.offsets]
        xp.copyto(ymax, views[0])
        self._index_valid = track
        if not track:
            for v in views[1:]:
                xp.maximum(ymax, v, out=ymax)
            return
        index = self.workspace.get("index", ymax.shape, self.index_dtype, xp)
        greater = self.workspace.get("greater", ymax.shape, numpy.bool_, xp)
        scratch = self.workspace.get("scratch", ymax.shape, self.index_dtype, xp)
        # A window's last strictly-greater offset is its first maximum, and the
        # offsets only grow, so the index is the max over q of q * [greater].
        flags = greater.view(numpy.uint8) if self.index_dtype == numpy.uint8 else greater
        index.fill(0)
        for q in range(1, len(views)):
            xp.greater(views[q], ymax, out=greater)
            xp.multiply(flags, q, out=scratch)
            xp.maximum(index, scratch, out=index)
            xp.maximum(ymax, views[q], out=ymax)

    def mask(self, out):
        """Caffe's mask top: the argmax as an index h * W + w into the unpadded plane."""
        xp = backend.get_array_module(out)
        g = self.geometry
        oh, ow = g.out_size
        index = self.workspace.get("index", (out.size // (oh * ow), oh, ow), self.index_dtype, xp)
        rows = (xp.arange(oh) * g.stride[0] - g.pad[0]).reshape(1, oh, 1)
        cols = (xp.arange(ow) * g.stride[1] - g.pad[1]).reshape(1, 1, ow)
        kw = g.kernel[1]
        flat = (index // kw + rows) * g.in_size[1] + (index % kw + cols)
        out.reshape(flat.shape)[...] = flat

    def backward(self, dy, dx, x=None):
        """dx = dy routed to each window's maximum. Needs forward(track=True)
        first; when forward ran untracked, `x` is used to redo it."""
        xp = backend.get_array_module(dy)
        g = self.geometry
        if not self._index_valid:
            if x is None:
                raise RuntimeError("max pooling backward needs the argmax of a tracked forward")
            scratch_y = self.workspace.get("retrack", dy.shape, dy.dtype, xp)
            self.forward(x, scratch_y, track=True)
        dy_planes = self._planes(dy)
        dx_planes = self._planes(dx)
        buf = self._grad_buffer(xp, dx_planes)
        index = self.workspace.get("index", dy_planes.shape, self.index_dtype, xp)
        chosen = self.workspace.get("greater", dy_planes.shape, numpy.bool_, xp)
        routed = None
        if g.overlapping:
            routed = self.workspace.get("routed", dy_planes.shape, dy.dtype, xp)
        for q, offset in enumerate(g.offsets):
            xp.equal(index, q, out=chosen)
            view = _offset_view(xp, buf, g, offset)
            if routed is None:     # windows do not overlap: each element written once
                xp.multiply(dy_planes, chosen, out=view)
            else:
                xp.multiply(dy_planes, chosen, out=routed)
                view += routed
        self._crop_grad(buf, dx_planes)


class GlobalMaxPooling:
    """Max over each whole (H, W) plane; a reduction, no windows."""

    def __init__(self):
        self.index = None

    def forward(self, x, y, track=True):
        n, c = x.shape[:2]
        flat = x.reshape(n * c, -1)
        flat.max(axis=1, out=y.reshape(-1))
        self.index = flat.argmax(axis=1)   # first maximum, as Caffe

    def mask(self, out):
        out.reshape(-1)[...] = self.index

    def backward(self, dy, dx, x=None):
        xp = backend.get_array_module(dy)
        n, c = dx.shape[:2]
        flat = dx.reshape(n * c, -1)
        flat.fill(0)
        flat[xp.arange(n * c), self.index] = dy.reshape(-1)


def _average_weights(size, kernel, stride, pad, out):
    """(out, size) matrix of one axis' window weights: 1/extent on the window
    clipped to the input, where extent counts padding up to size + pad."""
    weights = numpy.zeros((out, size))
    for o in range(out):
        start = o * stride - pad
        end = min(start + kernel, size + pad)
        extent = end - start
        weights[o, max(start, 0):min(end, size)] = 1.0 / extent
    return weights


class AveragePooling(_Pooling):
    """Average pooling with Caffe's divisor (padding counts, the overhang past it does not)."""

    def __init__(self, geometry):
        super().__init__(geometry)
        g = geometry
        self.rows = _average_weights(g.in_size[0], g.kernel[0], g.stride[0], g.pad[0], g.out_size[0])
        self.cols = _average_weights(g.in_size[1], g.kernel[1], g.stride[1], g.pad[1], g.out_size[1])
        entries = math.prod(g.in_size) * math.prod(g.out_size)
        separable_adds = g.kernel[1] * g.span[0] * g.out_size[1] + g.kernel[0] * math.prod(g.out_size)
        self.use_gemm = entries <= GEMM_MAX_ENTRIES and entries <= GEMM_FACTOR * separable_adds
        self._matrix = None

    def _operator(self, xp, dtype):
        """The (H*W, OH*OW) matrix y_plane = x_plane @ M, made once per dtype/module."""
        m = self._matrix
        if m is None or m.dtype != dtype or backend.get_array_module(m) is not xp:
            dense = numpy.einsum("ah,bw->hwab", self.rows, self.cols).reshape(
                math.prod(self.geometry.in_size), math.prod(self.geometry.out_size))
            m = self._matrix = backend.to_device(dense.astype(dtype), xp)
        return m

    def _inverse_pool_size(self, xp, dtype):
        # Each output's divisor is the product of its row and column extents,
        # which is the reciprocal of the largest weight on each axis.
        inv = numpy.outer(self.rows.max(axis=1), self.cols.max(axis=1))
        return backend.to_device(inv.astype(dtype), xp)

    def forward(self, x, y, track=True):
        xp = backend.get_array_module(x)
        n, c = x.shape[:2]
        if self.use_gemm:
            xp.matmul(x.reshape(n * c, -1), self._operator(xp, x.dtype), out=y.reshape(n * c, -1))
            return
        self._separable_forward(xp, x, y)

    def backward(self, dy, dx, x=None):
        xp = backend.get_array_module(dy)
        n, c = dy.shape[:2]
        if self.use_gemm:
            xp.matmul(dy.reshape(n * c, -1), self._operator(xp, dy.dtype).T, out=dx.reshape(n * c, -1))
            return
        self._separable_backward(xp, dy, dx)

    # Separable sums for big planes: columns first into (NC, span_h, OW), then rows.
    def _column_view(self, xp, planes, j):
        g = self.geometry
        st = planes.strides
        shape = (planes.shape[0], g.span[0], g.out_size[1])
        return xp.lib.stride_tricks.as_strided(planes[:, :, j:], shape, (st[0], st[1], st[2] * g.stride[1]))

    def _row_view(self, xp, partial, i):
        g = self.geometry
        st = partial.strides
        shape = (partial.shape[0],) + g.out_size
        return xp.lib.stride_tricks.as_strided(partial[:, i:], shape, (st[0], st[1] * g.stride[0], st[2]))

    def _separable_forward(self, xp, x, y):
        g = self.geometry
        planes = self._padded_input(xp, self._planes(x), 0)
        partial = self.workspace.get("partial", (planes.shape[0], g.span[0], g.out_size[1]), x.dtype, xp)
        xp.copyto(partial, self._column_view(xp, planes, 0))
        for j in range(1, g.kernel[1]):
            partial += self._column_view(xp, planes, j)
        out = self._planes(y)
        xp.copyto(out, self._row_view(xp, partial, 0))
        for i in range(1, g.kernel[0]):
            out += self._row_view(xp, partial, i)
        out *= self._inverse_pool_size(xp, x.dtype)

    def _separable_backward(self, xp, dy, dx):
        g = self.geometry
        scaled = self.workspace.get("scaled", self._planes(dy).shape, dy.dtype, xp)
        xp.multiply(self._planes(dy), self._inverse_pool_size(xp, dy.dtype), out=scaled)
        partial = self.workspace.get("partial", (scaled.shape[0], g.span[0], g.out_size[1]), dy.dtype, xp)
        partial.fill(0)
        for i in range(g.kernel[0]):
            self._row_view(xp, partial, i)[...] += scaled
        dx_planes = self._planes(dx)
        buf = self._grad_buffer(xp, dx_planes)
        if buf is dx_planes and g.covers_exactly():
            buf.fill(0)
        for j in range(g.kernel[1]):
            self._column_view(xp, buf, j)[...] += partial
        self._crop_grad(buf, dx_planes)
