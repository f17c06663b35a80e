"""Two of the column layouts convolution-as-GEMM uses, for one chunk of
images (the third, BatchLast, is in conv_batch_last.py).

numpy pays per inner loop of a strided copy, and OpenBLAS is fastest when
the long axis of a skinny product (positions) is the row axis of a
row-major operand. A layout decides both the copy's inner runs and the GEMM's
orientation:

* ChannelsLast: the chunk is moved to (n, *padded, C) once; its columns are
  (n, *out, group, *kernel, C/group), a (positions, K) matrix per group whose
  rows are read as runs of kw*C values (one kernel row through every
  channel). The GEMM (P, K) @ (K, O/g) is OpenBLAS's good orientation. The
  price is transposing the input and the output (and their gradients), all
  in cache because a chunk is small. Best with many channels (conv2, conv3).
* ChannelsFirst: columns (group, C/group, *kernel, n, *out) straight from
  (n, C, *padded), and one GEMM per image writing its (O, positions) output
  in place: no transposes at all, but an inner run of the copy is one output
  row (OW values), so it only pays when C*kw is smaller than OW (a first
  layer on RGB or grey images).

Both give the weight gradient from the same columns and can scatter column
gradients back (col2im) for the convolutions whose input gradient is not
made as a convolution. Every buffer is sized for the largest chunk and
comes from the op's Workspace, so the steady state allocates nothing.
"""
import itertools
import math

import numpy

from .. import backend
from . import gemm

# ChannelsLast writes a product with at most this many outputs per group
# straight into y when its blocks are small-matrix products (cifar10_quick's
# conv2: 0.8x the time of a product buffer and a move; with 64 outputs, as
# in conv3, the blocks of 16 positions are slower than the move). 0: never.
DIRECT_OUTPUTS = 32

# ChannelsFirst adds the bias inside the forward GEMM (False: as a pass over
# y afterwards, for comparisons in bench/bench_conv.py).
FUSED_BIAS = True


class _Columns:
    """Buffers and shapes shared by the layouts for one geometry."""

    def __init__(self, geometry, group, channels, outputs, spatial, workspace, tag):
        self.geometry = geometry
        self.group = group
        self.channels, self.outputs = channels, outputs
        self.spatial = tuple(spatial)
        self.out = geometry.out_shape(spatial)
        self.positions = math.prod(self.out)
        self.k_group = channels // group * geometry.kernel_volume()
        self.workspace = workspace
        self.tag = tag
        self.loaded = self.built = None   # which chunk of which array is in the buffers
        # Index tuples and axis orders, worked out once: the chunk loops run
        # hundreds of times per step and Python's share of them adds up.
        dims = len(self.spatial)
        self.padded = geometry.padded_shape(self.spatial)
        self.interior = geometry.interior(self.spatial)
        self.offsets = [tuple(slice(o * d, o * d + (m - 1) * s + 1, s) for o, d, m, s
                              in zip(offset, geometry.dilation, self.out, geometry.stride))
                        for offset in itertools.product(*[range(size) for size in geometry.kernel])]
        self.to_last = (0,) + tuple(range(2, dims + 2)) + (1,)      # (n, C, *S) -> (n, *S, C)
        self.to_first = (0, dims + 1) + tuple(range(1, dims + 1))   # and back

    def image_bytes(self, itemsize):
        """Column bytes per image: what sizes a chunk."""
        return self.group * self.k_group * self.positions * itemsize

    def _buffer(self, name, shape, dtype, xp, capacity, fill=None):
        """A (capacity, ...) buffer whose first len-`shape[0]` rows serve a chunk."""
        full = self.workspace.get(self.tag + name, (capacity,) + tuple(shape[1:]), dtype, xp, fill=fill)
        return full[:shape[0]]

    def _flat(self, name, count, dtype, xp):
        return self.workspace.prefix(self.tag + name, (count,), dtype, xp)


class ChannelsLast(_Columns):
    """Columns (P, group, K/group) from a (n, *padded, C) copy of the chunk."""

    def forward_weights(self, weight, bias):
        """The weights forward() takes with this bias."""
        return self.weights(weight)

    def weights(self, weight):
        """(O, C/g, *kernel) -> (g, kernel*C/g, O/g), rows in the columns' order."""
        g, o = self.group, self.outputs
        w = weight.reshape(g, o // g, self.channels // g, -1)
        xp = backend.get_array_module(weight)
        mat = self.workspace.get(self.tag + "weights", (g, w.shape[3], w.shape[2], o // g), weight.dtype, xp)
        xp.copyto(mat, w.transpose(0, 3, 2, 1))
        return mat.reshape(g, self.k_group, o // g)

    def load(self, x, n0, n1, capacity, key=None):
        """Move images [n0, n1) of x (N, C, *S) into the padded channels-last buffer."""
        xp = backend.get_array_module(x)
        shape = (n1 - n0,) + self.padded + (self.channels,)
        buf = self._buffer("input", shape, x.dtype, xp, capacity, fill=0)
        if key is None or key != self.loaded:
            xp.copyto(buf[(slice(None),) + self.interior], x[n0:n1].transpose(self.to_last))
            self.loaded, self.built = key, None
        return buf

    def build(self, buf, key=None):
        """The chunk's (P, g, K/g) column matrix."""
        xp = backend.get_array_module(buf)
        g, cg = self.geometry, self.channels // self.group
        n = buf.shape[0]
        st = buf.strides
        spatial = st[1:-1]
        shape = ((n,) + self.out + (self.group,) + g.kernel + (cg,))
        strides = ((st[0],) + tuple(s * t for s, t in zip(spatial, g.stride)) + (cg * st[-1],)
                   + tuple(s * d for s, d in zip(spatial, g.dilation)) + (st[-1],))
        rows = n * self.positions
        col = self._flat("col", rows * self.group * self.k_group, buf.dtype, xp)
        if key is None or key != self.built:
            xp.copyto(col.reshape(shape), xp.lib.stride_tricks.as_strided(buf, shape, strides))
            self.built = key
        return col.reshape(rows, self.group, self.k_group)

    def forward(self, col, wmat, y, bias):
        """y (n, O, *out) = col @ wmat (+ bias)."""
        xp = backend.get_array_module(col)
        g, og = self.group, self.outputs // self.group
        n = y.shape[0]
        if xp is numpy and og <= DIRECT_OUTPUTS and gemm.block_rows(self.positions, self.k_group, og):
            # Blocks of positions straight into y (n, O, P), read as its
            # transpose: no product buffer and no move.
            dst = y.reshape(n, g, og, self.positions)
            gemm.matmul(wmat.transpose(0, 2, 1),
                        col.reshape(n, self.positions, g, self.k_group).transpose(0, 2, 3, 1), dst)
            if bias is not None:
                dst += bias.reshape(g, og, 1)
            return
        prod = self._flat("prod", g * col.shape[0] * og, col.dtype, xp).reshape(g, col.shape[0], og)
        gemm.matmul(col.transpose(1, 0, 2), wmat, prod)
        src = prod.reshape(g, n, self.positions, og).transpose(1, 0, 3, 2)
        dst = y.reshape(n, g, og, self.positions)
        if bias is None:
            xp.copyto(dst, src)
        else:
            xp.add(src, bias.reshape(g, og, 1), out=dst)

    def output_grad(self, dy):
        """dy (n, O, *out) as the (g, P, O/g) matrix the GEMMs take."""
        xp = backend.get_array_module(dy)
        g, og = self.group, self.outputs // self.group
        n = dy.shape[0]
        dyc = self._flat("dy", g * n * self.positions * og, dy.dtype, xp)
        xp.copyto(dyc.reshape(g, n, self.positions, og), dy.reshape(n, g, og, self.positions).transpose(1, 0, 3, 2))
        return dyc.reshape(g, n * self.positions, og)

    def weight_grad(self, col, dyc, acc):
        """acc (g, K/g, O/g) += col^T @ dyc."""
        xp = backend.get_array_module(col)
        part = self.workspace.get(self.tag + "wpart", acc.shape, acc.dtype, xp)
        gemm.matmul(col.transpose(1, 2, 0), dyc, part)
        acc += part

    def accumulator(self, dtype, xp):
        og = self.outputs // self.group
        return self.workspace.get(self.tag + "wacc", (self.group, self.k_group, og), dtype, xp)

    def add_weight_grad(self, acc, dweight):
        g, og, cg = self.group, self.outputs // self.group, self.channels // self.group
        dweight += acc.reshape(g, -1, cg, og).transpose(0, 3, 2, 1).reshape(dweight.shape)

    # -- as the input-gradient convolution (dy -> dx) of a stride-1 convolution x -> y --
    def transposed_weight_grad(self, col, x, acc, capacity):
        """acc (g, kernel * O/g, C/g) += col^T @ x, the weight gradient of
        the convolution x -> y that this (dy -> dx) one transposes, from the
        dy columns it just built: a column row is one input position q and
        holds dy at q - k + pad for every kernel offset k (flipped), which
        is what multiplies x at q in the weight gradient. So backward needs
        x only moved to channels-last (rows, C), not its columns rebuilt.
        Here self.channels is the forward's O and self.outputs its C."""
        xp = backend.get_array_module(col)
        n = x.shape[0]
        g, cg = self.group, self.outputs // self.group
        xl = self._buffer("xlast", (n,) + self.out + (self.outputs,), x.dtype, xp, capacity)
        xp.copyto(xl, x.transpose(self.to_last))
        part = self.workspace.get(self.tag + "wpart_t", acc.shape, acc.dtype, xp)
        gemm.matmul(col.transpose(1, 2, 0), xl.reshape(-1, g, cg).transpose(1, 0, 2), part)
        acc += part

    def transposed_accumulator(self, dtype, xp):
        return self.workspace.get(self.tag + "wacc_t", (self.group, self.k_group, self.outputs // self.group),
                                  dtype, xp)

    def add_transposed_weight_grad(self, acc, dweight):
        """dweight (O, C/g, *kernel) += acc, kernel flipped back."""
        g, kernel = self.group, self.geometry.kernel
        og, cg = self.channels // g, self.outputs // g
        blocks = acc.reshape((g,) + kernel + (og, cg))[(slice(None),) + (slice(None, None, -1),) * len(kernel)]
        order = (0, len(kernel) + 1, len(kernel) + 2) + tuple(range(1, len(kernel) + 1))
        dweight += blocks.transpose(order).reshape(dweight.shape)

    def col2im(self, dyc, wmat, dx, capacity):
        """dx (n, C, *S) = the input gradient through these columns (strided case).

        The column gradients come out of one batched GEMM per kernel offset,
        (kernel, P, C/g), so each offset's add reads whole rows of OW*C
        values instead of C-long pieces of the (P, K) matrix."""
        xp = backend.get_array_module(dyc)
        g, cg = self.geometry, self.channels // self.group
        n = dx.shape[0]
        rows, volume = n * self.positions, g.kernel_volume()
        dcol = self._flat("col", rows * self.group * self.k_group, dyc.dtype, xp)
        dcol = dcol.reshape(self.group, volume, rows, cg)
        self.built = None   # the column buffer now holds gradients
        per_offset = wmat.reshape(self.group, volume, cg, -1).transpose(0, 1, 3, 2)
        gemm.matmul(dyc[:, None], per_offset, dcol)
        shape = (n,) + self.padded + (self.channels,)
        grad = self._buffer("grad", shape, dx.dtype, xp, capacity)
        grad.fill(0)
        blocks = dcol.reshape((self.group, volume, n) + self.out + (cg,))
        order = tuple(range(1, len(self.out) + 2)) + (0, len(self.out) + 2)   # group next to C/g
        for k, index in enumerate(self.offsets):
            view = grad[(slice(None),) + index].reshape((n,) + self.out + (self.group, cg))
            view += blocks[:, k].transpose(order)
        xp.copyto(dx, grad[(slice(None),) + self.interior].transpose(self.to_first))


class ChannelsFirst(_Columns):
    """Columns (g, K/g, P) read straight from (n, C, *padded)."""

    def weights(self, weight):
        g = self.group
        return weight.reshape(g, self.outputs // g, self.k_group)

    def load(self, x, n0, n1, capacity, key=None):
        xp = backend.get_array_module(x)
        g = self.geometry
        if not g.padded_input:
            return x[n0:n1]
        shape = (n1 - n0, self.channels) + self.padded
        buf = self._buffer("input", shape, x.dtype, xp, capacity, fill=0)
        if key is None or key != self.loaded:
            buf[(slice(None), slice(None)) + self.interior] = x[n0:n1]
            self.loaded, self.built = key, None
        return buf

    def build(self, buf, key=None):
        xp = backend.get_array_module(buf)
        g, cg = self.geometry, self.channels // self.group
        n = buf.shape[0]
        st = buf.strides
        spatial = st[2:]
        shape = (self.group, cg) + g.kernel + (n,) + self.out
        strides = ((cg * st[1], st[1]) + tuple(s * d for s, d in zip(spatial, g.dilation)) + (st[0],)
                   + tuple(s * t for s, t in zip(spatial, g.stride)))
        count = n * self.positions
        # Each group's K/g rows are followed by a row of ones, which meets
        # the bias in forward_weights' last column: the bias add is part of
        # the GEMM instead of another pass over y.
        full = self._flat("col", self.group * (self.k_group + 1) * count, buf.dtype, xp)
        full = full.reshape(self.group, self.k_group + 1, count)
        col = full[:, :self.k_group]
        if key is None or key != self.built:
            xp.copyto(col.reshape(shape), xp.lib.stride_tricks.as_strided(buf, shape, strides))
            full[:, self.k_group] = 1
            self.built = key
        self.with_ones = full
        return col

    def forward_weights(self, weight, bias):
        """(g, O/g, K/g + 1): the weights and the bias as a last column."""
        if bias is None or not FUSED_BIAS:
            return self.weights(weight)
        xp = backend.get_array_module(weight)
        g, og, kg = self.group, self.outputs // self.group, self.k_group
        mat = self.workspace.get(self.tag + "wbias", (g, og, kg + 1), weight.dtype, xp)
        mat[..., :kg] = weight.reshape(g, og, kg)
        mat[..., kg] = bias.reshape(g, og)
        return mat

    def _per_image(self, col, n, rows=None):
        """The columns as (n, g, K/g, positions): one matrix per image
        (rows=K/g + 1: with the row of ones)."""
        if rows and rows > self.k_group:
            col = self.with_ones
        return col.reshape(self.group, col.shape[1], n, self.positions).transpose(2, 0, 1, 3)

    def forward(self, col, wmat, y, bias):
        """One GEMM per image straight into y[n], which is already (O,
        positions): no product buffer, no move to NCHW. With a bias, wmat
        is forward_weights' and col must be what build() returned."""
        xp = backend.get_array_module(col)
        n = y.shape[0]
        out = y.reshape(n, self.group, self.outputs // self.group, self.positions)
        xp.matmul(wmat, self._per_image(col, n, wmat.shape[-1]), out=out)
        if bias is not None and wmat.shape[-1] == self.k_group:
            out += bias.reshape(self.group, -1, 1)

    def output_grad(self, dy):
        """The GEMMs read dy (n, O, *out) where it is."""
        return dy

    def weight_grad(self, col, dy, acc):
        """acc (g, K/g, O/g) += sum over images of col[n] @ dy[n]^T."""
        xp = backend.get_array_module(col)
        n, g, og = dy.shape[0], self.group, self.outputs // self.group
        part = self.workspace.prefix(self.tag + "wpart", (n, g, self.k_group, og), acc.dtype, xp)
        xp.matmul(self._per_image(col, n), dy.reshape(n, g, og, self.positions).transpose(0, 1, 3, 2), out=part)
        total = self.workspace.get(self.tag + "wsum", acc.shape, acc.dtype, xp)
        part.sum(axis=0, out=total)
        acc += total

    def accumulator(self, dtype, xp):
        og = self.outputs // self.group
        return self.workspace.get(self.tag + "wacc", (self.group, self.k_group, og), dtype, xp)

    def add_weight_grad(self, acc, dweight):
        dweight += acc.transpose(0, 2, 1).reshape(dweight.shape)

    def col2im(self, dy, wmat, dx, capacity):
        xp = backend.get_array_module(dy)
        g, cg, og = self.geometry, self.channels // self.group, self.outputs // self.group
        n = dx.shape[0]
        count = n * self.positions
        dyc = self._flat("dy", self.outputs * count, dy.dtype, xp).reshape(self.group, og, n, self.positions)
        xp.copyto(dyc, dy.reshape(n, self.group, og, self.positions).transpose(1, 2, 0, 3))
        dyc = dyc.reshape(self.group, og, count)
        dcol = self._flat("col", self.group * self.k_group * count, dy.dtype, xp)
        dcol = dcol.reshape(self.group, self.k_group, count)
        self.built = None   # the column buffer now holds gradients
        xp.matmul(wmat.transpose(0, 2, 1), dyc, out=dcol)
        blocks = dcol.reshape((self.group, cg, g.kernel_volume(), n) + self.out)
        if g.padded_input:
            shape = (n, self.channels) + self.padded
            grad = self._buffer("grad", shape, dx.dtype, xp, capacity)
        else:
            grad = dx
        grad.fill(0)
        order = (2, 0, 1) + tuple(range(3, len(self.out) + 3))     # (g, C/g, n, *out) -> (n, g, C/g, *out)
        for k, index in enumerate(self.offsets):
            view = grad[(slice(None), slice(None)) + index].reshape((n, self.group, cg) + self.out)
            view += blocks[:, :, k].transpose(order)
        if grad is not dx:
            xp.copyto(dx, grad[(slice(None), slice(None)) + self.interior])
