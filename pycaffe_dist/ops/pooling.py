"""2-D max and average pooling over (N, C, H, W) arrays, Caffe's arithmetic.

numpy pays per inner loop, and a strided loop cannot use SIMD: an op over
(NC, OH, OW) windows runs NC*OH loops of only OW values, and a stride-2 view
runs several times slower than a contiguous one. The first pooling code spent
its time there, not in arithmetic. So the input is first split into stride
phases, and windows are then reduced in two stages of contiguous slices:

  phases: padded row q*s_h + p lives in row phase p at position q, and column
      m*s_w + r in column phase r at m. Buffer: (s_w, s_h, planes, Hq, Q), one
      strided copy of the input (and one back for the gradient).
  stage 1 (along rows): h = reduce over j < kw of column phase j % s_w shifted
      by j // s_w: kw - 1 ops on whole flat arrays. Outputs that straddle two
      rows (Q - OW per row) are garbage and never read.
  stage 2 (down columns): y = reduce over i < kh of h's row phase i % s_h
      shifted by i // s_h rows: kh - 1 ops on flat slices over all planes
      (row phases come first in the buffer); outputs in the rows the shift
      carries past a plane's end are garbage too.

Max pooling (max_pooling.py) reduces with maxima, average pooling
(average_pooling.py) with sums.
"""
import copy
import functools
import time

import numpy

from . import threads
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
# per 256 KB block, had its two lanes queue for the GIL: on two idle cores
# they ran slower than one thread (cifar10_quick pool1 forward/backward 9.5-10.1 /
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
            blocks, block = self._blocks(xp, nc, itemsize, LANE_BLOCK_SCALE if at_once else 1,
                                         lanes if at_once else 1)
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

    def _blocks(self, xp, nc, itemsize, scale=1, lanes=1):
        """Blocks of at most `scale` times PLANE_BLOCK_BYTES of input, as
        many as a multiple of `lanes` and of nearly equal size, so that each
        lane gets the same share: blocks of the largest size with the rest
        at the end left cifar10_quick's pool1 at 1808 planes against 1392 on
        two lanes (LeNet's pool1 910 against 370), the first lane finishing
        last every time."""
        g = self.geometry
        if xp is not numpy:
            return [(0, nc)], nc
        largest = max(1, scale * PLANE_BLOCK_BYTES // (g.plane_size * g.stride[1] * itemsize))
        count = -(-nc // largest)
        count = min(nc, -(-count // lanes) * lanes)
        size = -(-nc // count)
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
