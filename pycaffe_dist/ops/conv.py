"""Convolution as im2col + one GEMM, in a batch-last layout, for any number of
spatial axes.

Why batch-last: numpy pays per inner loop, not per element, and im2col of an
(N, C, H, W) image has inner loops only as long as an output row (8 values
for LeNet's conv2). With the images transposed once to (C, H, W, N), the
columns of one kernel offset for a whole output row are a single contiguous
run of OW*N values, so im2col is a few hundred long copies, the GEMM writes
(O, OH, OW, N) in one call, and col2im is kernel-size many adds of long runs.
The price is a transposing copy of the input and of the output, both k^2
times smaller than the columns.

Column buffer layout: (C, *kernel, rows, *out[1:], N) flattened to
(C*prod(kernel), rows*prod(out[1:])*N); `rows` is a chunk of the first output
axis, chosen so the buffer stays under COLUMN_BUDGET elements.
"""
import itertools

import numpy

from .. import backend
from .layout import from_batch_last, to_batch_last
from .workspace import Workspace

# Most elements one column buffer may hold (128 MB of float32). Larger
# problems are processed in chunks of output rows; the columns of the last
# chunk only are kept for the backward pass.
COLUMN_BUDGET = 1 << 25


def conv_out_size(size, kernel, stride, pad, dilation):
    """Caffe's convolution output size: rounds down."""
    extent = dilation * (kernel - 1) + 1
    return (size + 2 * pad - extent) // stride + 1


class ConvGeometry:
    """Kernel, stride, pad and dilation per spatial axis (tuples of equal length)."""

    def __init__(self, kernel, stride, pad, dilation):
        self.kernel = tuple(int(k) for k in kernel)
        self.stride = tuple(int(s) for s in stride)
        self.pad = tuple(int(p) for p in pad)
        self.dilation = tuple(int(d) for d in dilation)
        self.pointwise = (all(k == 1 for k in self.kernel) and all(s == 1 for s in self.stride)
                          and all(p == 0 for p in self.pad))

    def out_shape(self, spatial):
        return tuple(conv_out_size(size, k, s, p, d) for size, k, s, p, d
                     in zip(spatial, self.kernel, self.stride, self.pad, self.dilation))

    def padded_shape(self, spatial):
        return tuple(size + 2 * p for size, p in zip(spatial, self.pad))

    def kernel_volume(self):
        return int(numpy.prod(self.kernel))


class Convolution:
    """y = conv(x, weight) + bias and its gradients, with reusable buffers.

    Shapes: x (N, C, *S), weight (O, C/group, *kernel), bias (O,),
    y (N, O, *out). Parameter gradients are *added* to the given diffs.
    """

    def __init__(self, geometry, group=1):
        self.geometry = geometry
        self.group = int(group)
        self.workspace = Workspace()
        self._xt_source = None     # the x whose batch-last copy is in "xt"
        self._col_chunk = None     # (x, r0, r1) whose columns are in "col"

    # -- shapes ----------------------------------------------------------------
    def _plan(self, channels, out, n):
        """Chunks [r0, r1) of the first output axis, and the column length of
        the longest one (the first), which sizes the flat buffers."""
        per_row = channels * self.geometry.kernel_volume() * int(numpy.prod(out[1:])) * n
        rows = max(1, min(out[0], COLUMN_BUDGET // max(1, per_row)))
        chunks = [(r0, min(out[0], r0 + rows)) for r0 in range(0, out[0], rows)]
        return chunks, rows * int(numpy.prod(out[1:])) * n

    def _buffer(self, name, rows, longest, length, dtype, xp):
        """A contiguous (rows, length) prefix of a flat buffer sized for the
        longest chunk, so a shorter last chunk reuses the same memory."""
        flat = self.workspace.get(name, (rows * longest,), dtype, xp)
        return flat[:rows * length].reshape(rows, length)

    # -- batch-last input and its columns -----------------------------------------
    def _input_batch_last(self, x):
        """x (N, C, *S) copied to the zero-padded buffer (C, *padded, N)."""
        xp = backend.get_array_module(x)
        n, c, spatial = x.shape[0], x.shape[1], x.shape[2:]
        padded = self.geometry.padded_shape(spatial)
        xt = self.workspace.get("xt", (c,) + padded + (n,), x.dtype, xp, fill=0)
        if self._xt_source is not x:
            interior = (slice(None),) + tuple(slice(p, p + s) for p, s in zip(self.geometry.pad, spatial))
            to_batch_last(x, xt[interior])
            self._xt_source = x
            self._col_chunk = None
        return xt

    def _window_view(self, buf, r0, r1, out, offset=None):
        """A strided view of the batch-last buffer: all kernel offsets
        (C, *kernel, rows, *out[1:], N), or one offset (C, rows, *out[1:], N)."""
        xp = backend.get_array_module(buf)
        g = self.geometry
        st = buf.strides
        start = [r0 * g.stride[0]] + [0] * (len(out) - 1)
        if offset is not None:
            start = [s + o * d for s, o, d in zip(start, offset, g.dilation)]
        base = buf[(slice(None),) + tuple(slice(s, None) for s in start)]
        spatial_st = st[1:-1]
        out_shape = (r1 - r0,) + tuple(out[1:])
        out_strides = tuple(s * stride for s, stride in zip(spatial_st, g.stride))
        shape = (buf.shape[0],) + out_shape + (buf.shape[-1],)
        strides = (st[0],) + out_strides + (st[-1],)
        if offset is None:
            shape = shape[:1] + g.kernel + shape[1:]
            strides = strides[:1] + tuple(s * d for s, d in zip(spatial_st, g.dilation)) + strides[1:]
        return xp.lib.stride_tricks.as_strided(base, shape, strides)

    def _columns(self, x, xt, r0, r1, out, longest):
        """The (C*K, L) column matrix of output rows [r0, r1)."""
        xp = backend.get_array_module(xt)
        c, n = xt.shape[0], xt.shape[-1]
        if self.geometry.pointwise:
            return xt[:, r0:r1].reshape(c, -1)
        length = (r1 - r0) * int(numpy.prod(out[1:])) * n
        col = self._buffer("col", c * self.geometry.kernel_volume(), longest, length, xt.dtype, xp)
        if self._col_chunk != (id(x), r0, r1):
            view = self._window_view(xt, r0, r1, out)
            xp.copyto(col.reshape(view.shape), view)
            self._col_chunk = (id(x), r0, r1)
        return col

    # -- GEMMs, grouped ------------------------------------------------------------
    def _grouped(self, a, rows):
        return a.reshape(self.group, rows // self.group, -1)

    def _gemm_forward(self, xp, weight, col, out):
        o = weight.shape[0]
        if self.group == 1:
            xp.matmul(weight.reshape(o, -1), col, out=out)
        else:
            xp.matmul(self._grouped(weight, o), self._grouped(col, col.shape[0]), out=self._grouped(out, o))

    def _gemm_weight_grad(self, xp, dyc, col, dweight):
        o = dweight.shape[0]
        if self.group == 1:
            grad = xp.matmul(dyc, col.T)
        else:
            grad = xp.matmul(self._grouped(dyc, o), self._grouped(col, col.shape[0]).transpose(0, 2, 1))
        dweight += grad.reshape(dweight.shape)

    def _gemm_data_grad(self, xp, weight, dyc, dcol):
        o = weight.shape[0]
        if self.group == 1:
            xp.matmul(weight.reshape(o, -1).T, dyc, out=dcol)
        else:
            w = self._grouped(weight, o).transpose(0, 2, 1)
            xp.matmul(w, self._grouped(dyc, o), out=self._grouped(dcol, dcol.shape[0]))

    # -- the op ----------------------------------------------------------------------
    def forward(self, x, weight, bias, y):
        """y = conv(x) + bias; bias may be None."""
        xp = backend.get_array_module(x)
        n, c = x.shape[:2]
        o = weight.shape[0]
        out = tuple(y.shape[2:])
        self._xt_source = None  # x's data may have changed since the last call
        xt = self._input_batch_last(x)
        chunks, longest = self._plan(c, out, n)
        for r0, r1 in chunks:
            col = self._columns(x, xt, r0, r1, out, longest)
            yt = self._buffer("yt", o, longest, col.shape[1], x.dtype, xp)
            self._gemm_forward(xp, weight, col, yt)
            dst = y[(slice(None), slice(None), slice(r0, r1))]
            from_batch_last(yt.reshape((o, r1 - r0) + out[1:] + (n,)), dst, bias)

    def backward(self, x, dy, weight, dweight=None, dbias=None, dx=None):
        """Add the weight/bias gradients into dweight/dbias and write dx
        (each only when given). Uses the columns kept by forward() when x
        is the array forward() last saw."""
        xp = backend.get_array_module(dy)
        n, o = dy.shape[:2]
        c = x.shape[1]
        out = tuple(dy.shape[2:])
        dyt = self.workspace.get("dyt", (o,) + out + (n,), dy.dtype, xp)
        to_batch_last(dy, dyt)
        if dbias is not None:
            dbias += dyt.reshape(o, -1).sum(axis=1)
        if dweight is None and dx is None:
            return
        xt = self._input_batch_last(x)
        padded = xt.shape[1:-1]
        if dx is not None:
            dxt = self.workspace.get("dxt", (c,) + padded + (n,), dx.dtype, xp)
            dxt.fill(0)
        chunks, longest = self._plan(c, out, n)
        for r0, r1 in chunks:
            dyc = dyt[:, r0:r1].reshape(o, -1)
            if dweight is not None:
                self._gemm_weight_grad(xp, dyc, self._columns(x, xt, r0, r1, out, longest), dweight)
            if dx is not None:
                dcol = self._buffer("col", c * self.geometry.kernel_volume(), longest, dyc.shape[1], dx.dtype, xp)
                self._col_chunk = None  # the buffer now holds column gradients
                self._gemm_data_grad(xp, weight, dyc, dcol)
                self._col2im(dcol, dxt, r0, r1, out)
        if dx is not None:
            spatial = x.shape[2:]
            interior = (slice(None),) + tuple(slice(p, p + s) for p, s in zip(self.geometry.pad, spatial))
            from_batch_last(dxt[interior], dx)

    def _col2im(self, dcol, dxt, r0, r1, out):
        """Add each kernel offset's column gradients into the padded dx."""
        g = self.geometry
        c, n = dxt.shape[0], dxt.shape[-1]
        blocks = dcol.reshape((c, g.kernel_volume(), r1 - r0) + tuple(out[1:]) + (n,))
        for k, offset in enumerate(itertools.product(*[range(size) for size in g.kernel])):
            dst = self._window_view(dxt, r0, r1, out, offset)
            dst += blocks[:, k]
