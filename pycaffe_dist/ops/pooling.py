"""2-D max and average pooling over (N, C, H, W) arrays, Caffe's arithmetic.

numpy pays per inner loop: an op over (NC, OH, OW) windows runs NC*OH loops
of only OW values, and that overhead, not the arithmetic, dominated the first
pooling code. So windows are reduced in two stages:

  stage 1 (along rows): h[t] = reduce over j < kw of src[s_w * t + j], where t
      runs over the whole padded input flattened, each row padded to a
      multiple of s_w. That is one strided 1-D loop per offset. The few
      outputs per row that straddle two rows are garbage and never read.
  stage 2 (down columns): y[oh, ow] = reduce over i < kh of h[s_h * oh + i, ow],
      (NC, OH, OW) views, kh - 1 ops.

Max pooling keeps, per stage and offset, where a strictly greater value took
over. Reducing rows first and letting only strictly greater values win picks
the first maximum in row-major order, as Caffe's loop does, and the backward
pass routes the gradient back through the two chains with a multiply and a
subtract per offset.

Average pooling is linear: for small planes it is one GEMM with a (H*W, OH*OW)
matrix of window weights 1/pool_size (Caffe's pool size counts padding up to
H + pad); bigger planes use the same two stages with sums.
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
    """Kernel, stride and pad as (h, w) pairs, with the input and output sizes,
    and the layout of the two-stage computation."""

    def __init__(self, kernel, stride, pad, in_size, out_size):
        self.kernel, self.stride, self.pad = tuple(kernel), tuple(stride), tuple(pad)
        self.in_size, self.out_size = tuple(in_size), tuple(out_size)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.pad
        (h, w), (oh, ow) = self.in_size, self.out_size
        span_h = (oh - 1) * sh + kh                 # padded rows the windows touch
        span_w = (ow - 1) * sw + kw
        self.row_outputs = -(-span_w // sw)          # stage-1 outputs per row, >= OW
        row = self.row_outputs * sw
        # The input itself is the stage-1 source when no padding is needed,
        # its rows are already a multiple of the stride and no window reads
        # past the array's end.
        self.direct = (ph == 0 and pw == 0 and span_h <= h and w == row and kw <= sw)
        self.rows = h if self.direct else span_h     # rows of the stage-1 source
        self.row_length = row
        self.slack = max(0, kw - sw)                 # garbage outputs read past the end
        # Input rows/columns the windows reach; the rest is never read.
        self.extent = (min(h, span_h - ph), min(w, row - pw))

    def overlaps(self, axis):
        return self.stride[axis] < self.kernel[axis]

    def exact_cover(self):
        """Every input element lies in exactly one window."""
        return self.direct and self.kernel == self.stride and self.out_size[0] * self.stride[0] == self.in_size[0]


class _TwoStage:
    """Buffers and strided views shared by max and average pooling."""

    def __init__(self, geometry):
        self.geometry = geometry
        self.workspace = Workspace()

    @staticmethod
    def _planes(x):
        n, c, h, w = x.shape
        return x.reshape(n * c, h, w)

    def _stage1_count(self, nc):
        return nc * self.geometry.rows * self.geometry.row_outputs

    def _source(self, xp, planes, fill):
        """The flattened stage-1 source: the input itself, or a copy of it in
        a buffer padded with `fill` (fill happens once, at creation; only the
        interior is rewritten)."""
        g = self.geometry
        if g.direct:
            return planes.reshape(-1)
        nc = planes.shape[0]
        size = nc * g.rows * g.row_length
        flat = self.workspace.get("source", (size + g.slack,), planes.dtype, xp, fill=fill)
        self._interior(flat, nc)[...] = planes[:, :g.extent[0], :g.extent[1]]
        return flat

    def _interior(self, flat, nc):
        g = self.geometry
        buf = flat[:nc * g.rows * g.row_length].reshape(nc, g.rows, g.row_length)
        return buf[:, g.pad[0]:g.pad[0] + g.extent[0], g.pad[1]:g.pad[1] + g.extent[1]]

    def _stage1_views(self, xp, flat, nc):
        """One 1-D view per kernel column j: element t is source[s_w * t + j]."""
        g = self.geometry
        count = self._stage1_count(nc)
        step = flat.strides[0] * g.stride[1]
        return [xp.lib.stride_tricks.as_strided(flat[j:], (count,), (step,)) for j in range(g.kernel[1])]

    def _stage2_views(self, xp, partial):
        """One (NC, OH, OW) view of the stage-1 result per kernel row i."""
        g = self.geometry
        st = partial.strides
        shape = (partial.shape[0],) + g.out_size
        strides = (st[0], st[1] * g.stride[0], st[2])
        return [xp.lib.stride_tricks.as_strided(partial[:, i:], shape, strides) for i in range(g.kernel[0])]

    def _partial(self, xp, nc, dtype, name="partial"):
        g = self.geometry
        return self.workspace.get(name, (nc, g.rows, g.row_outputs), dtype, xp)

    def _grad_source(self, xp, dx_planes):
        """Where stage-1 gradients land, zeroed: dx itself when the input was
        the source (and nothing needs zeroing if every element gets written)."""
        g = self.geometry
        if g.direct:
            if not (g.exact_cover() and not g.overlaps(1)):
                dx_planes.fill(0)
            return dx_planes.reshape(-1)
        nc = dx_planes.shape[0]
        flat = self.workspace.get("grad_source", (nc * g.rows * g.row_length + g.slack,), dx_planes.dtype, xp)
        flat.fill(0)
        return flat

    def _crop(self, flat, dx_planes):
        g = self.geometry
        if g.direct:
            return
        if g.extent != g.in_size:
            dx_planes.fill(0)
        dx_planes[:, :g.extent[0], :g.extent[1]] = self._interior(flat, dx_planes.shape[0])


class MaxPooling(_TwoStage):
    """Max pooling; a tracked forward remembers where each maximum came from."""

    def __init__(self, geometry):
        super().__init__(geometry)
        self._tracked = False

    def forward(self, x, y, track=True):
        """y = max over each window; with `track`, keep what backward needs."""
        xp = backend.get_array_module(x)
        g = self.geometry
        planes = self._planes(x)
        nc = planes.shape[0]
        views = self._stage1_views(xp, self._source(xp, planes, -numpy.inf), nc)
        partial = self._partial(xp, nc, x.dtype)
        wins1 = self.workspace.get("wins1", (g.kernel[1] - 1, self._stage1_count(nc)), numpy.bool_, xp)
        self._chain_max(xp, views, partial.reshape(-1), wins1, track)
        out = self._planes(y)
        wins2 = self.workspace.get("wins2", (g.kernel[0] - 1,) + out.shape, numpy.bool_, xp)
        self._chain_max(xp, self._stage2_views(xp, partial), out, wins2, track)
        self._tracked = track

    @staticmethod
    def _chain_max(xp, views, out, wins, track):
        """out = max of views; wins[k-1] = views[k] beat everything before it."""
        if len(views) == 1:
            xp.copyto(out, views[0])
            return
        if track:
            xp.greater(views[1], views[0], out=wins[0])
        xp.maximum(views[0], views[1], out=out)
        for k in range(2, len(views)):
            if track:
                xp.greater(views[k], out, out=wins[k - 1])
            xp.maximum(out, views[k], out=out)

    def backward(self, dy, dx, x=None):
        """dx = dy routed to each window's first maximum. After an untracked
        forward, `x` is used to redo it with tracking."""
        xp = backend.get_array_module(dy)
        g = self.geometry
        if not self._tracked:
            if x is None:
                raise RuntimeError("max pooling backward needs a tracked forward first")
            self.forward(x, self.workspace.get("retrack", dy.shape, dy.dtype, xp), track=True)
        grad = self._planes(dy)
        nc = grad.shape[0]
        partial_grad = self._partial(xp, nc, dy.dtype, "partial_grad")
        partial_grad.fill(0)
        wins2 = self.workspace.get("wins2", (g.kernel[0] - 1,) + grad.shape, numpy.bool_, xp)
        self._chain_backward(xp, grad, self._stage2_views(xp, partial_grad), wins2, g.overlaps(0), "s2")
        dx_planes = self._planes(dx)
        flat = self._grad_source(xp, dx_planes)
        wins1 = self.workspace.get("wins1", (g.kernel[1] - 1, self._stage1_count(nc)), numpy.bool_, xp)
        self._chain_backward(xp, partial_grad.reshape(-1), self._stage1_views(xp, flat, nc), wins1,
                             g.overlaps(1), "s1")
        self._crop(flat, dx_planes)

    def _chain_backward(self, xp, grad, views, wins, overlapping, tag):
        """Undo _chain_max: views[k] (+)= the part of grad views[k] won."""
        if len(views) == 1:
            if overlapping:
                views[0][...] += grad
            else:
                xp.copyto(views[0], grad)
            return
        rest = self.workspace.get(tag + "_rest", grad.shape, grad.dtype, xp)
        taken = self.workspace.get(tag + "_taken", grad.shape, grad.dtype, xp)
        remaining = grad
        for k in range(len(views) - 1, 0, -1):
            if overlapping:
                xp.multiply(remaining, wins[k - 1], out=taken)
                views[k] += taken
            else:
                xp.multiply(remaining, wins[k - 1], out=views[k])
                taken = views[k]
            xp.subtract(remaining, taken, out=rest)
            remaining = rest
        if overlapping:
            views[0] += remaining
        else:
            xp.copyto(views[0], remaining)

    def mask(self, out):
        """Caffe's mask top: each window's argmax as h * W + w in the unpadded
        plane. Needs a tracked forward."""
        xp = backend.get_array_module(out)
        g = self.geometry
        (kh, kw), (sh, sw), (ph, pw) = g.kernel, g.stride, g.pad
        oh, ow = g.out_size
        nc = out.size // (oh * ow)
        # Winning row per window, then the winning column within that row.
        wins2 = self.workspace.get("wins2", (kh - 1, nc, oh, ow), numpy.bool_, xp)
        row = self._last_true(xp, wins2, (nc, oh, ow))
        wins1 = self.workspace.get("wins1", (kw - 1, self._stage1_count(nc)), numpy.bool_, xp)
        col = self._last_true(xp, wins1, (nc, g.rows, g.row_outputs))[:, :, :ow]
        rows = row + (xp.arange(oh) * sh).reshape(1, oh, 1)
        col = xp.take_along_axis(col, rows, axis=1)
        h = rows - ph
        w = col + (xp.arange(ow) * sw - pw).reshape(1, 1, ow)
        out.reshape(nc, oh, ow)[...] = h * g.in_size[1] + w

    @staticmethod
    def _last_true(xp, wins, shape):
        """Per element, the last k whose wins[k-1] is set (0 if none): the winner."""
        winner = xp.zeros(shape, numpy.int64)
        for k in range(1, wins.shape[0] + 1):
            winner = xp.maximum(winner, wins[k - 1].reshape(shape) * k)
        return winner


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
        weights[o, max(start, 0):min(end, size)] = 1.0 / (end - start)
    return weights


class AveragePooling(_TwoStage):
    """Average pooling with Caffe's divisor (padding counts, the overhang past it does not)."""

    def __init__(self, geometry):
        super().__init__(geometry)
        g = geometry
        self.rows = _average_weights(g.in_size[0], g.kernel[0], g.stride[0], g.pad[0], g.out_size[0])
        self.cols = _average_weights(g.in_size[1], g.kernel[1], g.stride[1], g.pad[1], g.out_size[1])
        entries = math.prod(g.in_size) * math.prod(g.out_size)
        separable_adds = g.kernel[1] * g.rows * g.row_outputs + g.kernel[0] * math.prod(g.out_size)
        self.use_gemm = entries <= GEMM_MAX_ENTRIES and entries <= GEMM_FACTOR * separable_adds
        self._cache = {}

    def _constant(self, name, xp, dtype, make):
        key = (name, numpy.dtype(dtype), xp)
        if key not in self._cache:
            self._cache[key] = backend.to_device(make().astype(dtype), xp)
        return self._cache[key]

    def _operator(self, xp, dtype):
        """The (H*W, OH*OW) matrix with y_plane = x_plane @ M."""
        g = self.geometry
        return self._constant("operator", xp, dtype, lambda: numpy.einsum(
            "ah,bw->hwab", self.rows, self.cols).reshape(math.prod(g.in_size), math.prod(g.out_size)))

    def _inverse_pool_size(self, xp, dtype):
        # A window's weight on either axis is 1/extent, so the largest weight
        # in each row of the per-axis matrices gives the divisor's factors.
        return self._constant("inverse", xp, dtype, lambda: numpy.outer(self.rows.max(axis=1),
                                                                        self.cols.max(axis=1)))

    def forward(self, x, y, track=True):
        xp = backend.get_array_module(x)
        n, c = x.shape[:2]
        if self.use_gemm:
            xp.matmul(x.reshape(n * c, -1), self._operator(xp, x.dtype), out=y.reshape(n * c, -1))
            return
        planes = self._planes(x)
        nc = planes.shape[0]
        partial = self._partial(xp, nc, x.dtype)
        self._sum(xp, self._stage1_views(xp, self._source(xp, planes, 0), nc), partial.reshape(-1))
        out = self._planes(y)
        self._sum(xp, self._stage2_views(xp, partial), out)
        out *= self._inverse_pool_size(xp, x.dtype)

    @staticmethod
    def _sum(xp, views, out):
        xp.copyto(out, views[0])
        for v in views[1:]:
            out += v

    def backward(self, dy, dx, x=None):
        xp = backend.get_array_module(dy)
        n, c = dy.shape[:2]
        if self.use_gemm:
            xp.matmul(dy.reshape(n * c, -1), self._operator(xp, dy.dtype).T, out=dx.reshape(n * c, -1))
            return
        g = self.geometry
        grad = self.workspace.get("scaled", self._planes(dy).shape, dy.dtype, xp)
        xp.multiply(self._planes(dy), self._inverse_pool_size(xp, dy.dtype), out=grad)
        nc = grad.shape[0]
        partial_grad = self._partial(xp, nc, dy.dtype, "partial_grad")
        partial_grad.fill(0)
        for view in self._stage2_views(xp, partial_grad):
            view += grad
        dx_planes = self._planes(dx)
        flat = self._grad_source(xp, dx_planes)
        if g.direct and g.exact_cover():
            flat.fill(0)       # sums below add, they never assign
        for view in self._stage1_views(xp, flat, nc):
            view += partial_grad.reshape(-1)
        self._crop(flat, dx_planes)
