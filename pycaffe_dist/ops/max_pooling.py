"""2-D max pooling, Caffe's arithmetic, on pooling.TwoStage's phase split.

Max pooling lets only strictly greater values take over in each chain;
reducing rows first, that picks the first maximum in row-major order, as
Caffe's loop does. A tracked forward turns the per-offset wins into small
integer codes (the column that won per stage-1 element, then per output
the offset i * width + j in its window) and keeps one int32 per output: the
flat index of its maximum in the block's gradient planes. The backward pass
is then a zero fill and one numpy.add.at per block, which adds in output
order as Caffe's loop does (float32 gradients equal to the bit).
"""
import types

import numpy

from .. import backend
from . import kernels
from .pooling import TwoStage


class MaxPooling(TwoStage):
    """Max pooling. A tracked forward keeps, per output, where its window's
    first maximum lies: a flat index into its block's gradient planes
    (dx's own planes, or padded ones: see padded_grad). The backward pass is
    then one scatter-add per block in output order, the order Caffe's loop
    adds in."""

    def __init__(self, geometry):
        super().__init__(geometry)
        self._tracked = False
        g = geometry
        (h, w), (oh, ow), (sh, sw), (ph, pw) = g.in_size, g.out_size, g.stride, g.pad
        # A window's first element is where its maximum is taken to be until
        # a strictly greater one comes (all of a window at -inf: it stays).
        # Without padding that element is inside the input, and so is every
        # maximum; otherwise the gradient goes to planes that also hold the
        # padding and the positions windows start at, and is copied out.
        self.padded_grad = (ph, pw) != (0, 0) or (oh - 1) * sh >= h or (ow - 1) * sw >= w
        self.grad_shape = ((max(ph + h, (oh - 1) * sh + 1), max(pw + w, (ow - 1) * sw + 1))
                           if self.padded_grad else (h, w))
        # Offsets within a window (i * grad width + j) in the narrowest integers that hold them.
        largest = (g.kernel[0] - 1) * self.grad_shape[1] + g.kernel[1] - 1
        self.code_dtype = next(t for t in (numpy.int8, numpy.int16, numpy.int32) if largest <= numpy.iinfo(t).max)
        # Without padding, rounding up may add windows that start past the input: they hold none of
        # it, and give 0 with mask -1 and no gradient (Caffe: -FLT_MAX), from these rows and columns on.
        self.empty_from = (-(-(h + ph) // sh), -(-(w + pw) // sw))

    def _argmax(self, xp, nc):
        return self.workspace.get("argmax", (nc,) + self.geometry.out_size, numpy.int32, xp)

    def _base(self, xp, nb):
        """(nb, OH, OW): each window's first element as a flat index into
        nb gradient planes."""
        g = self.geometry
        (gh, gw), (sh, sw), (oh, ow) = self.grad_shape, g.stride, g.out_size
        if nb * gh * gw >= 2 ** 31:
            raise ValueError(f"max pooling: {nb} planes of {gh}x{gw} are too many for 32-bit indices")
        base = (numpy.arange(nb).reshape(-1, 1, 1) * (gh * gw) + numpy.arange(oh).reshape(1, -1, 1) * (sh * gw)
                + numpy.arange(ow).reshape(1, 1, -1) * sw)
        return backend.to_device(base.astype(numpy.int32), xp)

    def _plan(self, xp, nb, dtype, track):
        """The buffers and views a block of nb planes works in, made once
        (blocks run a few dozen short numpy calls: making views and looking
        buffers up each time cost as much as half the calls)."""
        key = (nb, numpy.dtype(dtype), track, xp)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._make_plan(xp, nb, dtype, track)
        return plan

    def _make_plan(self, xp, nb, dtype, track):
        g = self.geometry
        (kh, kw), (oh, ow), q = g.kernel, g.out_size, g.phase_cols
        plan = types.SimpleNamespace(source=None, result=None, wins1=None, wins2=None)
        size1 = nb * g.plane_size
        if not g.direct:
            # Padding positions keep -inf from here on; the input positions
            # are copied in per block.
            plan.source = xp.full((g.stride[1], size1 + g.slack), -numpy.inf, dtype)
            plan.copies = [(self._phase_view(plan.source, nb, r)[p, :, q0:q1, m0:m1], (slice(None), rows, cols))
                           for r, m0, m1, cols in g.col_ranges for p, q0, q1, rows in g.row_ranges]
            plan.stage1 = self._stage1_views(plan.source, nb)
        partial = xp.empty(size1 + g.partial_slack, dtype)
        plan.h, plan.stage2 = partial[:size1], self._stage2_views(partial, nb)
        if (g.result_rows, q) != (oh, ow):
            plan.result = xp.zeros((nb, g.result_rows, q), dtype)
        if track:
            cols = xp.empty(partial.shape, self.code_dtype)
            plan.cols, plan.cols2 = cols[:size1], self._stage2_views(cols, nb)
            # The first win per stage goes straight into the code (0 or 1)
            # where the code is a byte.
            plan.code_is_first_win = self.code_dtype == numpy.int8 and kw > 1
            first = [cols[:size1].view(numpy.bool_)] if plan.code_is_first_win else []
            plan.wins1 = first + list(xp.empty((kw - 1 - len(first), size1), numpy.bool_))
            plan.wins2 = xp.empty((kh - 1, nb, g.result_rows, q), numpy.bool_)
            plan.step1 = xp.empty(size1, self.code_dtype)
            plan.offset = xp.empty((nb, g.result_rows, q), self.code_dtype)
            plan.step2 = xp.empty_like(plan.offset)
            plan.base = self._base(xp, nb)
        return plan

    def forward(self, x, y, track=True, relu=False):
        """y = max over each window; with `track`, keep what backward needs;
        with `relu`, y = max(y, 0) too, block by block (an in-place ReLU
        layer after this one: Net fuses it)."""
        if kernels.on_gpu(x):   # CuPy: one kernel (ops/kernels.py)
            kernels.max_pool_forward(self, x, y)
            if relu:
                backend.get_array_module(y).maximum(y, 0, out=y)
            return
        xp = backend.get_array_module(x)
        g = self.geometry
        planes, out = self._planes(x), self._planes(y)
        nc = planes.shape[0]
        oh, ow = g.out_size
        argmax = self._argmax(xp, nc) if track else None

        def block_max(op, p0, p1, block):
            plan = op._plan(xp, p1 - p0, x.dtype, track)
            source = planes[p0:p1]
            if plan.source is None:
                stage1 = op._stage1_views(source.reshape(-1), p1 - p0)
            else:
                for phase, index in plan.copies:
                    phase[...] = source[index]
                stage1 = plan.stage1
            op._chain_max(xp, stage1, plan.h, plan.wins1)
            result = out[p0:p1] if plan.result is None else plan.result
            op._chain_max(xp, plan.stage2, result, plan.wins2)
            if plan.result is not None:
                out[p0:p1] = result[:, :oh, :ow]
            if relu:
                xp.maximum(out[p0:p1], 0, out=out[p0:p1])
            if track:
                op._place(xp, plan, argmax[p0:p1])
        # The argmax indices count from the start of their block: backward
        # goes by the same blocks.
        self._block = self._each_block(xp, nc, x.itemsize, block_max)
        self._tracked = track
        self._fill_empty(y, 0)

    def _fill_empty(self, out, value):
        rows, cols = self.empty_from
        out[..., rows:, :] = value
        out[..., cols:] = value

    @staticmethod
    def _chain_max(xp, views, out, wins):
        """out = max of views; with `wins`, wins[k-1] = views[k] beat
        everything before it."""
        if len(views) == 1:
            xp.copyto(out, views[0])
            return
        track = wins is not None
        if track:
            xp.greater(views[1], views[0], out=wins[0])
        xp.maximum(views[0], views[1], out=out)
        for k in range(2, len(views)):
            if track:
                xp.greater(views[k], out, out=wins[k - 1])
            xp.maximum(out, views[k], out=out)

    def _place(self, xp, plan, argmax):
        """argmax = the window's first element + the winner's offset in its
        window: i * grad width + j for kernel row i and the column j that won
        in the row it read."""
        g = self.geometry
        # Per stage-1 element, the last column k whose win is set (0 if
        # none): only a strictly greater value takes over.
        cols, wins1 = plan.cols, plan.wins1
        if not wins1:
            cols.fill(0)
        elif not plan.code_is_first_win:
            xp.copyto(cols, wins1[0])
        for k in range(2, len(wins1) + 1):
            xp.multiply(wins1[k - 1].view(numpy.int8), cols.dtype.type(k), out=plan.step1)
            xp.maximum(cols, plan.step1, out=cols)
        # Per output, the same down the kernel rows, taking the column that
        # won in the row.
        offset, step, gw = plan.offset, plan.step2, self.grad_shape[1]
        xp.copyto(offset, plan.cols2[0])
        flags = plan.wins2.view(numpy.int8)
        for i in range(1, len(plan.cols2)):
            xp.add(plan.cols2[i], offset.dtype.type(i * gw), out=step)
            step -= offset
            step *= flags[i - 1]
            offset += step
        xp.add(plan.base, offset[:, :g.out_size[0], :g.out_size[1]], out=argmax)

    def backward(self, dy, dx, x=None):
        """dx = dy routed to each window's first maximum. After an untracked
        forward, `x` is used to redo it with tracking."""
        if kernels.on_gpu(dy):   # CuPy: one kernel (ops/kernels.py)
            return kernels.max_pool_backward(self, dy, dx, x)
        xp = backend.get_array_module(dy)
        g = self.geometry
        if not self._tracked:
            if x is None:
                raise RuntimeError("max pooling backward needs a tracked forward first")
            self.forward(x, self.workspace.get("retrack", dy.shape, dy.dtype, xp), track=True)
        grad, dx_planes = self._planes(dy), self._planes(dx)
        nc = grad.shape[0]
        argmax = self._argmax(xp, nc)
        (h, w), (ph, pw) = g.in_size, g.pad
        direct = not self.padded_grad and dx_planes.flags.c_contiguous
        # A forward block's argmax indexes its own planes, so the backward
        # keeps the forward's blocks; but it runs in turn (add.at holds the
        # GIL), and the lanes' 4x blocks made its scatter 20% slower than
        # one-thread blocks (cifar10_quick pool1 at two threads, 3.9 ms
        # against 3.2): it walks each block in runs of one-thread size,
        # plane by plane in order as before, so the same bits.
        run = self._blocks(xp, nc, dy.itemsize)[1]

        def block_grad(op, p0, p1, block):
            nb = p1 - p0
            target = (dx_planes[p0:p1] if direct else
                      op.scratch.prefix("grad_planes", (nb,) + op.grad_shape, dy.dtype, xp))
            flat = target.reshape(-1)
            for q0 in range(0, nb, run):
                q1 = min(nb, q0 + run)
                target[q0:q1].fill(0)
                xp.add.at(flat, argmax[p0 + q0:p0 + q1].reshape(-1), grad[p0 + q0:p0 + q1].reshape(-1))
                if not direct:
                    dx_planes[p0 + q0:p0 + q1] = target[q0:q1, ph:ph + h, pw:pw + w]
        self._each_block(xp, nc, dy.itemsize, block_grad, self._block)

    def mask(self, out):
        """Caffe's mask top: each window's argmax as h * W + w in the unpadded
        plane. Needs a tracked forward."""
        if kernels.on_gpu(out):   # CuPy: kept by the forward kernel (ops/kernels.py)
            return kernels.max_pool_mask(self, out)
        xp = backend.get_array_module(out)
        g = self.geometry
        (gh, gw), (ph, pw) = self.grad_shape, g.pad
        nc = out.size // (g.out_size[0] * g.out_size[1])
        local = self._argmax(xp, nc) % (gh * gw)
        out.reshape(local.shape)[...] = (local // gw - ph) * g.in_size[1] + local % gw - pw
        self._fill_empty(out, -1)


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
