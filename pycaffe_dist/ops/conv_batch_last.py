"""The batch-last column layout: (C, *padded, n) for a large chunk of images.

With the images as the fastest axis, one output row of one kernel offset is
a single run of OW*n values in the input and in the columns, so im2col is a
few thousand long copies and col2im a few thousand long adds, where the
per-image layouts make one loop per position or per row. The price is
columns far bigger than a cache (LeNet's conv2: 8 MB for its batch of 64),
so the GEMMs run slower, and transposing the input, output and their
gradients into and out of batch-last order (ops.layout, blocked to stay in
cache). It pays where col2im does: LeNet's conv2 and cifar10_quick's conv3
backward, the passes with short rows and no padding to turn the input
gradient into a convolution.
"""
from .. import backend
from .conv_columns import ChannelsFirst
from .layout import from_batch_last, to_batch_last


class BatchLast(ChannelsFirst):
    """Columns (g, K/g, positions * n), images last; the weights and their
    gradient's layout are ChannelsFirst's."""

    def forward_weights(self, weight, bias):
        """The plain weights: from_batch_last adds the bias as it moves y."""
        return self.weights(weight)

    def load(self, x, n0, n1, capacity, key=None):
        xp = backend.get_array_module(x)
        shape = (self.channels,) + self.padded + (capacity,)
        full = self.workspace.get(self.tag + "input", shape, x.dtype, xp, fill=0)
        buf = full[..., :n1 - n0]
        if key is None or key != self.loaded:
            to_batch_last(x[n0:n1], buf[(slice(None),) + self.interior])
            self.loaded, self.built = key, None
        return buf

    def build(self, buf, key=None):
        xp = backend.get_array_module(buf)
        g, cg = self.geometry, self.channels // self.group
        n = buf.shape[-1]
        st = buf.strides
        spatial = st[1:-1]
        shape = (self.group, cg) + g.kernel + self.out + (n,)
        strides = ((cg * st[0], st[0]) + tuple(s * d for s, d in zip(spatial, g.dilation))
                   + tuple(s * t for s, t in zip(spatial, g.stride)) + (st[-1],))
        count = n * self.positions
        col = self._flat("col", self.group * self.k_group * count, buf.dtype, xp)
        if key is None or key != self.built:
            xp.copyto(col.reshape(shape), xp.lib.stride_tricks.as_strided(buf, shape, strides))
            self.built = key
        return col.reshape(self.group, self.k_group, count)

    def forward(self, col, wmat, y, bias):
        xp = backend.get_array_module(col)
        g, og = self.group, self.outputs // self.group
        prod = self._flat("prod", g * og * col.shape[2], col.dtype, xp).reshape(g, og, col.shape[2])
        xp.matmul(wmat, col, out=prod)
        from_batch_last(prod.reshape((self.outputs,) + self.out + (y.shape[0],)), y, bias)

    def output_grad(self, dy):
        xp = backend.get_array_module(dy)
        count = dy.shape[0] * self.positions
        dyc = self._flat("dy", self.outputs * count, dy.dtype, xp)
        to_batch_last(dy, dyc.reshape((self.outputs,) + self.out + (dy.shape[0],)))
        return dyc.reshape(self.group, self.outputs // self.group, count)

    def weight_grad(self, col, dyc, acc):
        """acc (g, K/g, O/g) += col @ dyc^T (faster in OpenBLAS than dyc @ col^T)."""
        xp = backend.get_array_module(col)
        part = self.workspace.get(self.tag + "wpart", acc.shape, acc.dtype, xp)
        xp.matmul(col, dyc.transpose(0, 2, 1), out=part)
        acc += part

    def col2im(self, dyc, wmat, dx, capacity):
        """Each kernel offset's column gradients, (C, *out, n), added to the
        padded batch-last gradient: one run of OW*n per channel and row."""
        xp = backend.get_array_module(dyc)
        g = self.geometry
        n = dx.shape[0]
        count = n * self.positions
        dcol = self._flat("col", self.group * self.k_group * count, dyc.dtype, xp)
        dcol = dcol.reshape(self.group, self.k_group, count)
        self.built = None   # the column buffer now holds gradients
        xp.matmul(wmat.transpose(0, 2, 1), dyc, out=dcol)
        blocks = dcol.reshape((self.channels, g.kernel_volume()) + self.out + (n,))
        shape = (self.channels,) + self.padded + (capacity,)
        grad = self.workspace.get(self.tag + "grad", shape, dx.dtype, xp)[..., :n]
        grad.fill(0)
        for k, index in enumerate(self.offsets):
            grad[(slice(None),) + index] += blocks[:, k]
        from_batch_last(grad[(slice(None),) + self.interior], dx)
