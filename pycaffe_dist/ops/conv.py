"""Convolution as im2col + one GEMM, for any number of spatial axes.

numpy pays per inner loop, not per element, so what matters is how long the
contiguous runs of the im2col/col2im copies are. Two column layouts are used,
picked per problem by a small cost model:

* batch-middle: columns (C, *kernel, N, *out), read straight from the
  (N, C, *padded) input. Inner runs are one output row (OW values); the GEMM
  writes (O, N, *out), whose move to (N, O, *out) copies whole planes. Best
  when rows are long (LeNet's conv1: OW = 24) and col2im is rare.
* batch-last: the input transposed once to (C, *padded, N); columns
  (C, *kernel, *out, N). A kernel offset's columns for a whole output row are
  one run of OW*N values, so im2col and col2im are a few hundred long copies
  and adds. The price is transposing the input, output and their gradients,
  all kernel-size times smaller than the columns. Best for short rows
  (LeNet's conv2: OW = 8, where col2im is 3x faster this way).

The columns are computed in chunks of the first output axis when they would
exceed COLUMN_BUDGET elements; the last chunk's columns are kept for the
backward pass, so a single-chunk layer runs im2col once per iteration.
"""
import itertools
import math

from .. import backend
from .layout import from_batch_last, to_batch_last
from .workspace import Workspace

# Most elements one column buffer may hold (128 MB of float32).
COLUMN_BUDGET = 1 << 25

# Cost model (ns, measured on a 2-core Xeon with numpy 2): one inner loop of
# a strided copy/add, and one element of a blocked transpose (batch-last) or
# of a plane-wise move (batch-middle).
LOOP_NS = 8.0
TRANSPOSE_NS = 1.2
PLANE_MOVE_NS = 0.3


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
        self.padded_input = any(p > 0 for p in self.pad)

    def out_shape(self, spatial):
        return tuple(conv_out_size(size, k, s, p, d) for size, k, s, p, d
                     in zip(spatial, self.kernel, self.stride, self.pad, self.dilation))

    def in_shape(self, out):
        """The input size whose output is `out` with no remainder: what a
        Deconvolution produces, stride*(out-1) + dilation*(k-1) + 1 - 2*pad."""
        return tuple(s * (o - 1) + d * (k - 1) + 1 - 2 * p for o, k, s, p, d
                     in zip(out, self.kernel, self.stride, self.pad, self.dilation))

    def padded_shape(self, spatial):
        return tuple(size + 2 * p for size, p in zip(spatial, self.pad))

    def interior(self, spatial):
        """Slices of the padded spatial axes that hold the input."""
        return tuple(slice(p, p + s) for p, s in zip(self.pad, spatial))

    def kernel_volume(self):
        return math.prod(self.kernel)


def prefer_batch_last(geometry, n, c, o, spatial, out, needs_dx=True):
    """The cost model: inner loops of batch-middle im2col (and col2im) against
    the element transposes batch-last needs."""
    passes = 2 if needs_dx else 1
    loops = c * geometry.kernel_volume() * n * math.prod(out[:-1]) * passes
    in_count, out_count = n * c * math.prod(spatial), n * o * math.prod(out)
    middle = loops * LOOP_NS + 2 * out_count * PLANE_MOVE_NS
    if geometry.padded_input:
        middle += passes * in_count * PLANE_MOVE_NS
    last = (passes * in_count + 2 * out_count) * TRANSPOSE_NS
    return last < middle


def _address(x):
    """What makes two array objects views of the same data: address, shape,
    strides (layers pass a fresh reshape of their blob every call)."""
    data = x.data
    pointer = data.ptr if hasattr(data, "ptr") else x.__array_interface__["data"][0]
    return pointer, x.shape, x.strides, x.dtype.str


def _key(x, *rest):
    return (_address(x),) + rest


class Convolution:
    """y = conv(x, weight) + bias and its gradients, with reusable buffers.

    Shapes: x (N, C, *S), weight (O, C/group, *kernel), bias (O,),
    y (N, O, *out). Parameter gradients are *added* to the given diffs.
    """

    def __init__(self, geometry, group=1):
        self.geometry = geometry
        self.group = int(group)
        self.workspace = Workspace()
        self.batch_last = True
        self.needs_dx = True       # learned from the backward calls
        self._input_of = None      # key of the x whose padded copy is in "input"
        self._col_of = None        # key of the x and chunk whose columns are in "col"

    # -- chunks and flat buffers -----------------------------------------------------
    def _plan(self, c, out, n):
        """Chunks [r0, r1) of the first output axis, and the column length of
        the longest (the first), which sizes the flat buffers."""
        per_row = c * self.geometry.kernel_volume() * math.prod(out[1:]) * n
        rows = max(1, min(out[0], COLUMN_BUDGET // max(1, per_row)))
        chunks = [(r0, min(out[0], r0 + rows)) for r0 in range(0, out[0], rows)]
        return chunks, rows * math.prod(out[1:]) * n

    def _matrix(self, name, rows, longest, length, dtype, xp):
        """A contiguous (rows, length) prefix of a flat buffer sized for the
        longest chunk, so a shorter last chunk reuses the same memory."""
        flat = self.workspace.get(name, (rows * longest,), dtype, xp)
        return flat[:rows * length].reshape(rows, length)

    def _positions(self, n, r0, r1, out):
        """Shape of the column positions of a chunk, in this layout's order."""
        rows = (r1 - r0,) + tuple(out[1:])
        return rows + (n,) if self.batch_last else (n,) + rows

    # -- the padded input and its columns --------------------------------------------
    def _padded_input(self, x):
        """x with zero padding, in the current layout: (C, *padded, N) or
        (N, C, *padded); x itself when batch-middle needs no padding."""
        xp = backend.get_array_module(x)
        g = self.geometry
        if not self.batch_last and not g.padded_input:
            return x
        n, c, spatial = x.shape[0], x.shape[1], x.shape[2:]
        padded = g.padded_shape(spatial)
        shape = (c,) + padded + (n,) if self.batch_last else (n, c) + padded
        buf = self.workspace.get("input", shape, x.dtype, xp, fill=0)
        if self._input_of != _key(x, self.batch_last):
            if self.batch_last:
                to_batch_last(x, buf[(slice(None),) + g.interior(spatial)])
            else:
                buf[(slice(None), slice(None)) + g.interior(spatial)] = x
            self._input_of = _key(x, self.batch_last)
            self._col_of = None
        return buf

    def _window_view(self, buf, r0, r1, out, offset=None):
        """A strided view of a padded buffer: (C, *kernel, *positions) for all
        kernel offsets, or (C, *positions) for one."""
        xp = backend.get_array_module(buf)
        g = self.geometry
        if self.batch_last:
            channel_axis, batch_axis, spatial_axes = 0, buf.ndim - 1, range(1, buf.ndim - 1)
        else:
            batch_axis, channel_axis, spatial_axes = 0, 1, range(2, buf.ndim)
        st = buf.strides
        starts = [r0 * g.stride[0]] + [0] * (len(out) - 1)
        if offset is not None:
            starts = [s + o * d for s, o, d in zip(starts, offset, g.dilation)]
        index = [slice(None)] * buf.ndim
        for axis, start in zip(spatial_axes, starts):
            index[axis] = slice(start, None)
        spatial_st = [st[a] for a in spatial_axes]
        rows = [(r1 - r0,) + tuple(out[1:]), [s * stride for s, stride in zip(spatial_st, g.stride)]]
        positions = list(zip(*rows))
        batch = (buf.shape[batch_axis], st[batch_axis])
        positions = positions + [batch] if self.batch_last else [batch] + positions
        dims = [(buf.shape[channel_axis], st[channel_axis])]
        if offset is None:
            dims += [(k, s * d) for k, s, d in zip(g.kernel, spatial_st, g.dilation)]
        shape, strides = zip(*(dims + positions))
        return xp.lib.stride_tricks.as_strided(buf[tuple(index)], shape, strides)

    def _columns(self, x, buf, r0, r1, out, longest):
        """The (C*K, L) column matrix of output rows [r0, r1)."""
        xp = backend.get_array_module(buf)
        c, n = x.shape[1], x.shape[0]
        length = (r1 - r0) * math.prod(out[1:]) * n
        col = self._matrix("col", c * self.geometry.kernel_volume(), longest, length, buf.dtype, xp)
        if self._col_of != _key(x, r0, r1, self.batch_last):
            view = self._window_view(buf, r0, r1, out)
            xp.copyto(col.reshape(view.shape), view)
            self._col_of = _key(x, r0, r1, self.batch_last)
        return col

    # -- GEMMs, grouped ----------------------------------------------------------------
    def _grouped(self, a):
        return a.reshape(self.group, a.shape[0] // self.group, -1)

    def _gemm_forward(self, xp, weight, col, out):
        w = weight.reshape(weight.shape[0], -1)
        if self.group == 1:
            xp.matmul(w, col, out=out)
        else:
            xp.matmul(self._grouped(w), self._grouped(col), out=self._grouped(out))

    def _gemm_weight_grad(self, xp, dyc, col, dweight):
        # col @ dy^T (then transposed) runs faster in OpenBLAS than dy @ col^T:
        # the long axis L is the contraction either way, but this order has the
        # bigger operand as the row-major left matrix.
        if self.group == 1:
            grad = xp.matmul(col, dyc.T).T
        else:
            grad = xp.matmul(self._grouped(col), self._grouped(dyc).transpose(0, 2, 1)).transpose(0, 2, 1)
        dweight += grad.reshape(dweight.shape)

    def _gemm_data_grad(self, xp, weight, dyc, dcol):
        w = weight.reshape(weight.shape[0], -1)
        if self.group == 1:
            xp.matmul(w.T, dyc, out=dcol)
        else:
            xp.matmul(self._grouped(w).transpose(0, 2, 1), self._grouped(dyc), out=self._grouped(dcol))

    # -- moving outputs and their gradients between layouts ------------------------------
    def _write_output(self, xp, yt, y, r0, r1, out, bias):
        """The GEMM's (O, positions) result into y[:, :, r0:r1] (+ bias)."""
        n, o = y.shape[:2]
        block = yt.reshape((o,) + self._positions(n, r0, r1, out))
        dst = y[:, :, r0:r1]
        if self.batch_last:
            from_batch_last(block, dst, bias)
        elif bias is None:
            xp.copyto(dst, block.swapaxes(0, 1))
        else:
            xp.add(block.swapaxes(0, 1), bias.reshape((-1,) + (1,) * (y.ndim - 2)), out=dst)

    def _output_grad(self, xp, dy, r0, r1, out, longest):
        """dy[:, :, r0:r1] as the (O, positions) matrix the GEMMs take."""
        n, o = dy.shape[:2]
        length = (r1 - r0) * math.prod(out[1:]) * n
        dyc = self._matrix("dy", o, longest, length, dy.dtype, xp)
        block = dyc.reshape((o,) + self._positions(n, r0, r1, out))
        if self.batch_last:
            to_batch_last(dy[:, :, r0:r1], block)
        else:
            xp.copyto(block, dy[:, :, r0:r1].swapaxes(0, 1))
        return dyc

    def _input_grad_buffer(self, xp, x, dx):
        """A zeroed buffer in the padded layout for col2im, or dx itself."""
        g = self.geometry
        if not self.batch_last and not g.padded_input:
            dx.fill(0)
            return dx
        n, c, spatial = x.shape[0], x.shape[1], x.shape[2:]
        padded = g.padded_shape(spatial)
        shape = (c,) + padded + (n,) if self.batch_last else (n, c) + padded
        buf = self.workspace.get("input_grad", shape, dx.dtype, xp)
        buf.fill(0)
        return buf

    def _finish_input_grad(self, buf, dx):
        if buf is dx:
            return
        interior = self.geometry.interior(dx.shape[2:])
        if self.batch_last:
            from_batch_last(buf[(slice(None),) + interior], dx)
        else:
            dx[...] = buf[(slice(None), slice(None)) + interior]

    def _col2im(self, dcol, buf, r0, r1, out, n):
        """Add each kernel offset's column gradients into the padded gradient."""
        g = self.geometry
        blocks = dcol.reshape((dcol.shape[0] // g.kernel_volume(), g.kernel_volume())
                              + self._positions(n, r0, r1, out))
        for k, offset in enumerate(itertools.product(*[range(size) for size in g.kernel])):
            view = self._window_view(buf, r0, r1, out, offset)
            view += blocks[:, k]

    # -- the op ----------------------------------------------------------------------------
    def forward(self, x, weight, bias, y):
        """y = conv(x) + bias; bias may be None."""
        xp = backend.get_array_module(x)
        n, c = x.shape[:2]
        o = weight.shape[0]
        out = tuple(y.shape[2:])
        self.batch_last = prefer_batch_last(self.geometry, n, c, o, x.shape[2:], out, self.needs_dx)
        self._input_of = self._col_of = None  # x's data may have changed since the last call
        buf = self._padded_input(x)
        chunks, longest = self._plan(c, out, n)
        for r0, r1 in chunks:
            col = self._columns(x, buf, r0, r1, out, longest)
            yt = self._matrix("y", o, longest, col.shape[1], x.dtype, xp)
            self._gemm_forward(xp, weight, col, yt)
            self._write_output(xp, yt, y, r0, r1, out, bias)

    def backward_data(self, dy, weight, dx):
        """dx = the transposed convolution of dy (Deconvolution's forward);
        dx only gives the input shape here, and is overwritten."""
        self.backward(dx, dy, weight, dx=dx)

    def backward(self, x, dy, weight, dweight=None, dbias=None, dx=None):
        """Add the weight/bias gradients into dweight/dbias and write dx (each
        only when given). Reuses forward's columns when x is the array
        forward() last saw; x must not have changed since."""
        xp = backend.get_array_module(dy)
        self.needs_dx = dx is not None
        if dweight is None and dbias is None and dx is None:
            return
        n, c = x.shape[:2]
        out = tuple(dy.shape[2:])
        buf = self._padded_input(x) if dweight is not None else None
        grad_buf = self._input_grad_buffer(xp, x, dx) if dx is not None else None
        chunks, longest = self._plan(c, out, n)
        for r0, r1 in chunks:
            dyc = self._output_grad(xp, dy, r0, r1, out, longest)
            if dbias is not None:
                dbias += dyc.sum(axis=1)
            if dweight is not None:
                self._gemm_weight_grad(xp, dyc, self._columns(x, buf, r0, r1, out, longest), dweight)
            if dx is not None:
                dcol = self._matrix("col", c * self.geometry.kernel_volume(), longest, dyc.shape[1], dx.dtype, xp)
                self._col_of = None  # the buffer now holds column gradients
                self._gemm_data_grad(xp, weight, dyc, dcol)
                self._col2im(dcol, grad_buf, r0, r1, out, n)
        if dx is not None:
            self._finish_input_grad(grad_buf, dx)
