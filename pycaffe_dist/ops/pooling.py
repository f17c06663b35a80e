"""2-D max and average pooling over (N, C, H, W) arrays, Caffe's arithmetic.

numpy pays per inner loop, and a strided loop cannot use SIMD: an op over
(NC, OH, OW) windows runs NC*OH loops of only OW values, and a stride-2 view
runs several times slower than a contiguous one. The first pooling code spent
its time there, not in arithmetic. So the input is first split into stride
phases, and windows are then reduced in two stages of contiguous slices:

  phases: padded row q*s_h + p lives in row phase p at position q, and column
      m*s_w + r in column phase r at m. Buffer: (s_w, planes, s_h, Hq, Q), one
      strided copy of the input (and one back for the gradient).
  stage 1 (along rows): h = reduce over j < kw of column phase j % s_w shifted
      by j // s_w: kw - 1 ops on whole flat arrays. Outputs that straddle two
      rows (Q - OW per row) are garbage and never read.
  stage 2 (down columns): y = reduce over i < kh of h's row phase i % s_h
      shifted by i // s_h rows: kh - 1 ops on (planes, OH*Q) slices.

Max pooling lets only strictly greater values take over in each chain;
reducing rows first, that picks the first maximum in row-major order, as
Caffe's loop does. A tracked forward turns the per-offset wins into small
integer codes (the column that won per stage-1 element, then per output
the offset i * width + j in its window) and keeps one int32 per output: the
flat index of its maximum in the block's gradient planes. The backward pass
is then a zero fill and one numpy.add.at per block, which adds in output
order as Caffe's loop does (float32 gradients equal to the bit).

Average pooling (average_pooling.py) uses the same two stages with sums.
"""
import copy
import functools
import time
import types

import numpy

from .. import backend
from . import kernels, threads
from .workspace import Workspace

# Input bytes per block of planes on the CPU (see TwoStage).
PLANE_BLOCK_BYTES = 1 << 18


def pooled_size(size, kernel, stride, pad, ceil_mode=True):
    """Caffe's pooling output size: rounded up (or down with round_mode FLOOR),
    then the last window dropped if it would start inside the bottom padding."""
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _phase_ranges(size, kernel, stride, pad, out):
    """For one axis: phase length, and per phase p the (p, q0, q1, input
    slice) whose positions q0..q1 hold input elements; padded index
    q * stride + p is input index q * stride + p - pad."""
    length = out + (kernel - 1) // stride
    ranges = []
    for p in range(stride):
        q0 = max(0, -(-(pad - p) // stride))
        q1 = min(length, -(-(size + pad - p) // stride))
        if q1 > q0:
            start = q0 * stride + p - pad
            ranges.append((p, q0, q1, slice(start, start + (q1 - q0 - 1) * stride + 1, stride)))
    return length, ranges


class PoolGeometry:
    """Kernel, stride and pad as (h, w) pairs, the input and output sizes, and
    the phase layout of the two-stage computation."""

    def __init__(self, kernel, stride, pad, in_size, out_size):
        self.kernel, self.stride, self.pad = tuple(kernel), tuple(stride), tuple(pad)
        self.in_size, self.out_size = tuple(in_size), tuple(out_size)
        (kh, kw), (sh, sw) = self.kernel, self.stride
        self.phase_rows, self.row_ranges = _phase_ranges(in_size[0], kh, sh, pad[0], out_size[0])
        self.phase_cols, self.col_ranges = _phase_ranges(in_size[1], kw, sw, pad[1], out_size[1])
        # Elements a shifted column phase reads past its end (garbage outputs only).
        self.slack = (kw - 1) // sw
        covered = [sum(q1 - q0 for _, q0, q1, _ in r) for r in (self.row_ranges, self.col_ranges)]
        self.covers_input = tuple(covered) == self.in_size
        # Direct: the input itself serves as the column phases (1-D views with
        # stride s_w) and rows stay in their natural order: no copy in or out.
        # Possible without padding, when rows are whole multiples of the stride
        # and windows do not overlap along a row. Splitting the phases costs
        # more strided row loops than it saves there (LeNet's 2x2 pooling).
        self.direct = (pad == (0, 0) and kw <= sw and in_size[1] == sw * self.phase_cols
                       and (out_size[0] - 1) * sh + kh <= in_size[0])
        self.row_phases = 1 if self.direct else sh
        if self.direct:
            self.phase_rows = in_size[0]
        self.plane_size = self.row_phases * self.phase_rows * self.phase_cols   # one plane of h
        # Stage 2 reads each row phase of h as one flat slice over all planes,
        # shifted by i // s_h rows, so its results come with the garbage rows
        # of that shift too ((planes, result_rows, Q)), and its last slice
        # reads partial_slack elements past the end of h. Direct geometries
        # keep their rows in order and step through them (no garbage rows).
        self.result_rows = out_size[0] if self.direct else self.phase_rows
        self.partial_slack = 0 if self.direct else (kh - 1) // sh * self.phase_cols


# Pooling's blocks are split over the ops' threads only where that measures
# faster (ops.threads.Choice). The first code, a dozen short numpy passes
# per 256 KB block, had its two lanes queue for the GIL: on two idle cores they ran slower
# than one thread (cifar10_quick pool1 forward/backward 9.5-10.1 /
# 14.6-15.3 ms on one thread, 13.8-14.1 / 21.9-22.2 ms on two). Bigger
# blocks for the lanes (LANE_BLOCK_SCALE) measured slower still (best of
# 12 at load 4.5, pool1 at two threads: 6.8/10.1 ms with 256 KB blocks,
# 7.8/14.6 with 1 MB, 9.8/19.9 with 2 MB; 6.8/11.6 on one thread).
# With a plan per block and int8 codes, max pooling's forward runs about 26
# numpy calls per block and its lanes overlap once blocks are 1 MB (scale
# 4; paired medians at once / in turn at two threads, load ~2.5,
# cifar10_quick pool1 and CaffeNet pool1/pool2/pool5: x0.82/0.77/0.82/0.89
# at scale 4, x0.98/0.94/0.95/1.04 at 2, x0.83/0.80/0.97/0.87 at 8). Its
# backward is numpy.add.at, which holds the GIL: the Choice keeps it on
# the calling thread. AVE's two stages (big planes) at scale 4: x0.76-0.85
# on CaffeNet's shapes, x1.15 on cifar10_quick pool1's, for the Choice to settle.
# False: always on the calling thread.
THREADED = True
LANE_BLOCK_SCALE = 4


class TwoStage:
    """Phase buffers and slices shared by max and average pooling.

    The planes go in blocks of PLANE_BLOCK_BYTES of input, so a block's
    buffers stay in cache through the dozen ops that touch them (on a GPU one
    block holds everything). The blocks may be split over ops.threads'
    threads; each thread works through a copy of the op that shares its
    geometry and `workspace` (the masks: every block writes its own planes
    of them) but has its own `scratch` buffers.
    """

    def __init__(self, geometry):
        self.geometry = geometry
        self.workspace = Workspace()
        self.scratch = Workspace()
        self._copies = []
        self._choices = threads.Choices()
        self._plans = {}

    def _each_block(self, xp, nc, itemsize, body, block=None):
        """body(op, p0, p1, block) for every block [p0, p1) of planes, where
        `block` is the longest block's length (given, or chosen here; it is
        returned) and `op` the thread's copy.

        A block's result does not depend on which block or thread it is
        in, so the Choice here is between the one-thread way (this op,
        PLANE_BLOCK_BYTES blocks) and the lanes at once (copies of the op,
        blocks LANE_BLOCK_SCALE times larger); each keeps its own buffers."""
        lanes = threads.count(xp) if THREADED else 1
        choice = self._choices[body.__name__] if lanes > 1 else None
        at_once = choice is not None and (not threads.MEASURED or choice.parallel(lanes))
        if block is None:
            blocks, block = self._blocks(xp, nc, itemsize, LANE_BLOCK_SCALE if at_once else 1)
        else:
            blocks = [(p0, min(nc, p0 + block)) for p0 in range(0, nc, block)]
        ops = [self]
        if at_once:
            while len(self._copies) < lanes:
                lane = copy.copy(self)
                lane.scratch, lane._copies, lane._choices, lane._plans = Workspace(), [], threads.Choices(), {}
                self._copies.append(lane)
            ops = self._copies[:min(lanes, len(blocks))]

        def work(op, run):
            for p0, p1 in run:
                body(op, p0, p1, block)
        start = time.perf_counter()
        threads.run([functools.partial(work, op, run) for op, run in zip(ops, threads.split(blocks, len(ops)))])
        if choice is not None and threads.MEASURED:
            choice.record(at_once, time.perf_counter() - start)
        return block

    @staticmethod
    def _planes(x):
        n, c, h, w = x.shape
        return x.reshape(n * c, h, w)

    def _blocks(self, xp, nc, itemsize, scale=1):
        g = self.geometry
        if xp is not numpy:
            return [(0, nc)], nc
        size = max(1, scale * PLANE_BLOCK_BYTES // (g.plane_size * g.stride[1] * itemsize))
        return [(p0, min(nc, p0 + size)) for p0 in range(0, nc, size)], min(nc, size)

    def _phase_buffer(self, xp, name, block, dtype, fill=None):
        """(s_w, block * plane_size + slack): one flat row per column phase."""
        g = self.geometry
        return self.scratch.get(name, (g.stride[1], block * g.plane_size + g.slack), dtype, xp, fill=fill)

    def _phase_view(self, buf, nb, column_phase):
        """(s_h, nb, Hq, Q): row phases outermost, so that stage 1 leaves each
        row phase of h contiguous over all planes."""
        g = self.geometry
        return buf[column_phase, :nb * g.plane_size].reshape(g.row_phases, nb, g.phase_rows, g.phase_cols)

    def _split(self, xp, planes, block, fill):
        """Copy a block of input planes into its phase buffer, padded with
        `fill` (filled once, at creation; only the input positions are
        rewritten). Direct geometries use the planes themselves."""
        g = self.geometry
        if g.direct:
            return planes.reshape(-1)
        nb = planes.shape[0]
        # Where the padding lies depends on the number of planes (row phases
        # come first): a shorter last block keeps a buffer of its own.
        buf = self._phase_buffer(xp, "source" if nb == block else "source_last", nb, planes.dtype, fill)
        for r, m0, m1, cols in g.col_ranges:
            phase = self._phase_view(buf, nb, r)
            for p, q0, q1, rows in g.row_ranges:
                phase[p, :, q0:q1, m0:m1] = planes[:, rows, cols]
        return buf

    def _merge(self, buf, dx_planes):
        """The inverse of _split: gradients from the phase buffer into dx."""
        g = self.geometry
        if g.direct:
            return
        nb = dx_planes.shape[0]
        if not g.covers_input:
            dx_planes.fill(0)
        for r, m0, m1, cols in g.col_ranges:
            phase = self._phase_view(buf, nb, r)
            for p, q0, q1, rows in g.row_ranges:
                dx_planes[:, rows, cols] = phase[p, :, q0:q1, m0:m1]

    def _stage1_views(self, buf, nb):
        """Per kernel column j: column phase j % s_w, shifted by j // s_w."""
        g = self.geometry
        if g.direct:
            return [buf[j::g.stride[1]] for j in range(g.kernel[1])]
        count = nb * g.plane_size
        return [buf[j % g.stride[1], j // g.stride[1]:j // g.stride[1] + count] for j in range(g.kernel[1])]

    def _stage2_views(self, partial, nb):
        """Per kernel row i, (nb, result_rows, Q): row phase i % s_h of h (or
        of anything laid out as h, from _partial), shifted by i // s_h rows."""
        g = self.geometry
        (oh, sh), q = (g.out_size[0], g.stride[0]), g.phase_cols
        if g.direct:
            rows = partial[:nb * g.plane_size].reshape(nb, g.phase_rows, q)
            return [rows[:, i:i + (oh - 1) * sh + 1:sh] for i in range(g.kernel[0])]
        count = nb * g.phase_rows * q
        return [partial[i % sh * count + i // sh * q:][:count].reshape(nb, g.phase_rows, q) for i in range(g.kernel[0])]

    def _partial(self, xp, nb, dtype, name="partial"):
        """Flat: h (nb * plane_size, stage 1's result) and partial_slack more."""
        g = self.geometry
        return self.scratch.prefix(name, (nb * g.plane_size + g.partial_slack,), dtype, xp)

    def _grad_buffer(self, xp, dx_planes, block):
        """Where stage-1 gradients are added up, zeroed. Direct geometries
        write dx itself."""
        g = self.geometry
        if g.direct:
            dx_planes.fill(0)
            return dx_planes.reshape(-1)
        buf = self._phase_buffer(xp, "grad_source", block, dx_planes.dtype)
        buf.fill(0)
        return buf

    def _partial_grad(self, xp, nb, dtype):
        """The gradient of the stage-1 result (laid out as _partial), zeroed."""
        partial = self._partial(xp, nb, dtype, "partial_grad")
        partial.fill(0)
        return partial

    def _wide(self, xp, block, nb, dtype, name):
        """(nb, result_rows, Q): outputs with the garbage rows and columns
        the stages leave, kept zero (set once, never written)."""
        g = self.geometry
        return self.scratch.get(name, (block, g.result_rows, g.phase_cols), dtype, xp, fill=0)[:nb]


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

    def forward(self, x, y, track=True):
        """y = max over each window; with `track`, keep what backward needs."""
        if kernels.on_gpu(x):   # CuPy: one kernel (ops/kernels.py)
            return kernels.max_pool_forward(self, x, y)
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
            if track:
                op._place(xp, plan, argmax[p0:p1])
        # The argmax indices count from the start of their block: backward
        # goes by the same blocks.
        self._block = self._each_block(xp, nc, x.itemsize, block_max)
        self._tracked = track

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

        def block_grad(op, p0, p1, block):
            nb = p1 - p0
            target = (dx_planes[p0:p1] if direct else
                      op.scratch.prefix("grad_planes", (nb,) + op.grad_shape, dy.dtype, xp))
            target.fill(0)
            xp.add.at(target.reshape(-1), argmax[p0:p1].reshape(-1), grad[p0:p1].reshape(-1))
            if not direct:
                dx_planes[p0:p1] = target[:, ph:ph + h, pw:pw + w]
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
