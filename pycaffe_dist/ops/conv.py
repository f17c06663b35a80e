"""Convolution as im2col + GEMM in chunks of images, any number of spatial axes.

Where the time went in the first version: whole-batch column matrices
(80 MB for cifar10_quick's conv2) run OpenBLAS at a third of its speed on
skinny products with 32 output channels, and col2im's overlapping adds cost
as much again. So:

* The batch is cut into chunks whose columns fit in L2 (COLUMN_BYTES); each
  chunk's columns are built, multiplied and consumed while still in cache.
  The chunks run on ops.threads' threads, one contiguous run each.
* Three column layouts (conv_columns.ChannelsLast and ChannelsFirst,
  conv_batch_last.BatchLast) trade the copies' inner loops against
  transposes and GEMM speed; conv_cost picks one per layer and shape.
* The input gradient of a stride-1 convolution is itself a convolution (of
  the padded output gradient with the flipped, transposed weights), which
  needs no col2im; conv_cost decides when that pays (same padding) and
  when col2im does ('valid' convolutions, which would compute 2.25x more).
* Backward visits the chunks in reverse, so the first chunk it needs is the
  one whose columns forward left in the buffer: a one-chunk layer builds its
  columns once per iteration.
* Where the input gradient is a channels-last convolution, its dy columns
  also give the weight gradient (SHARED_COLUMNS): x's columns are built
  once per step, in forward.
* The skinny products are cut into blocks that OpenBLAS multiplies without
  packing (ops.gemm); channels-last ones with few outputs write y directly
  and channels-first ones carry the bias as a row of ones in the columns
  (conv_columns).
"""
import functools
import math

import numpy

from .. import backend
from . import conv_cost, fourier, threads, winograd
from .conv_batch_last import BatchLast
from .conv_columns import ChannelsFirst, ChannelsLast  # noqa: F401  (ChannelsFirst: for tests and callers)
from .workspace import Workspace

# Column bytes per chunk on the CPU: about half of a 2 MB L2, so the columns
# and the GEMM's other operands stay in cache.
COLUMN_BYTES = 1 << 20

# With more than one lane (ops.threads), a chunk may hold this many times
# COLUMN_BYTES of columns: the lanes' numpy calls take turns at the GIL, and
# fewer, longer calls wait less (cifar10_quick's conv2 at two threads:
# 25.2/41.1 ms forward/backward with 1 MB chunks, 17.3/30.4 with 4 MB). At
# one thread bigger chunks measured no faster. Whole steps at two threads on
# a quiet machine (bench_step.py): cifar10_quick / cifar10_full 1.95 / 1.81
# of PyTorch's time at 1x, 1.81 / 1.73 at 2x, 1.77 / 1.76 at 4x; but 4x
# took cifar10_quick's peak memory past PyTorch's (149 MiB against 147;
# each layer keeps its columns per lane), 2x keeps it at 124.
LANE_COLUMN_SCALE = 2

# Backward of a stride-1 convolution whose input gradient is a channels-last
# convolution takes the weight gradient from that one's dy columns instead
# of rebuilding x's (False: rebuild, for comparisons in bench/bench_conv.py).
SHARED_COLUMNS = True


def _budget(columns, lanes):
    """Column bytes of one lane's chunk. Batch-last columns are far beyond a
    cache whatever their size (conv_batch_last), so their lanes share the
    one-thread budget: cifar10_quick's conv1 held 42 MB of them at two
    threads, 22 at one."""
    if isinstance(columns, BatchLast):
        return COLUMN_BYTES * conv_cost.BATCH_LAST_SCALE // max(lanes, 1)
    return COLUMN_BYTES * (LANE_COLUMN_SCALE if lanes > 1 else 1)


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

    def _fields(self):
        return self.kernel, self.stride, self.pad, self.dilation

    def __eq__(self, other):
        return isinstance(other, ConvGeometry) and self._fields() == other._fields()

    def __hash__(self):
        return hash(self._fields())

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

    def transpose(self):
        """The geometry of the convolution that computes this one's input
        gradient from its output gradient: stride 1, pad dilation*(k-1) - pad,
        flipped kernel. None when there is none (a stride above 1, or a pad
        beyond the kernel's reach)."""
        if any(s != 1 for s in self.stride):
            return None
        pad = tuple(d * (k - 1) - p for k, d, p in zip(self.kernel, self.dilation, self.pad))
        if min(pad) < 0:
            return None
        return ConvGeometry(self.kernel, self.stride, pad, self.dilation)


def _address(x):
    """What makes two array objects views of the same data: address, shape,
    strides (layers pass a fresh reshape of their blob every call)."""
    data = x.data
    pointer = data.ptr if hasattr(data, "ptr") else x.__array_interface__["data"][0]
    return pointer, x.shape, x.strides, x.dtype.str


class Convolution:
    """y = conv(x, weight) + bias and its gradients, with reusable buffers.

    Shapes: x (N, C, *S), weight (O, C/group, *kernel), bias (O,),
    y (N, O, *out). Parameter gradients are *added* to the given diffs.
    The chunks run on ops.threads' threads, each with its own columns
    objects (a "lane") and, for the weight gradient, its own accumulator.
    """

    def __init__(self, geometry, group=1):
        self.geometry = geometry
        self.group = int(group)
        self.workspace = Workspace()
        self.needs_dx = True       # learned from the backward calls
        self._learned = False
        self._lanes = {}
        self._plans = {}
        self._winograd = None
        self._fourier = None
        self._choices = threads.Choices()

    def expect_dx(self, needs_dx):
        """Whether backward will compute dx, told before the first forward
        (layers.vision.Convolution, from the Net): forward plans its columns
        for it."""
        if not self._learned:
            self.needs_dx = bool(needs_dx)

    def _learn(self, needs_dx):
        """Whether backward computes dx. Until the first backward says so,
        forward plans by expect_dx (or for dx); if that was wrong, what
        forward built for its plan goes (cifar10_quick's conv1, on the data,
        kept 22 MB of batch-last columns it never used again)."""
        if not self._learned and needs_dx != self.needs_dx:
            self.workspace.clear()
            self._lanes.clear()
            self._plans.clear()
            self._winograd = self._fourier = None
        self._learned = True
        self.needs_dx = needs_dx

    def _plan(self, x_shape, outputs, itemsize):
        """conv_cost's Plan for this input shape, worked out once."""
        key = (tuple(x_shape), outputs, itemsize, self.needs_dx)
        if key not in self._plans:
            self._plans[key] = conv_cost.plan(self.geometry, self.group, x_shape[1], outputs, x_shape[2:],
                                              x_shape[0], itemsize, COLUMN_BYTES, self.needs_dx)
        return self._plans[key]

    def _columns(self, role, lane, layout, geometry, channels, outputs, spatial):
        """Lane `lane`'s columns object for one pass ("forward" or
        "transpose") in one layout, kept while its shapes hold; its buffers
        are named after all three. (A Deconvolution alternates between two
        plans, its forward's and its weight gradient's, and keeps both.)"""
        key = (geometry, channels, outputs, tuple(spatial))
        kept = self._lanes.get((role, lane, layout))
        if kept is None or kept[0] != key:
            cols = layout(geometry, self.group, channels, outputs, spatial, self.workspace,
                          f"{role}{lane}{layout.__name__}:")
            kept = self._lanes[(role, lane, layout)] = (key, cols)
        return kept[1]

    @staticmethod
    def _chunks(xp, n, itemsize, lanes, *passes):
        """Image ranges whose columns (for every pass) fit the layouts'
        budgets, as many as a multiple of the lanes and of sizes within one
        image of each other, split into one contiguous run per lane; and the
        longest range's length. On a GPU, one chunk."""
        if xp is not numpy:
            return [[(0, n)]], n
        size = min(conv_cost.images_per_chunk(_budget(p, lanes), p.image_bytes(itemsize), n) for p in passes)
        count = -(-n // max(1, size))                   # chunks of at most `size` images...
        count = min(n, -(-count // lanes) * lanes)      # ...as many as a multiple of the lanes
        chunks = [(n * k // count, n * (k + 1) // count) for k in range(count)]
        return [run for run in threads.split(chunks, min(lanes, len(chunks))) if run], -(-n // count)

    def _transposed_weight(self, weight):
        """(C, O/g, *kernel) weights of the input-gradient convolution: per
        group, input and output channels swapped and the kernel flipped."""
        xp = backend.get_array_module(weight)
        g = self.group
        o, cg = weight.shape[:2]
        kernel = weight.shape[2:]
        flipped = weight.reshape((g, o // g, cg) + kernel).swapaxes(1, 2)[
            (Ellipsis,) + (slice(None, None, -1),) * len(kernel)]
        out = self.workspace.get("transposed_weight", (g * cg, o // g) + kernel, weight.dtype, xp)
        xp.copyto(out.reshape(flipped.shape), flipped)
        return out

    def _minimal_filtering(self, xp, x_shape, outputs):
        """The Winograd op when this convolution takes that path (on the
        CPU; see winograd.tile_size), else None."""
        if xp is not numpy:
            return None
        m = winograd.tile_size(self.geometry, self.group, x_shape[1], outputs, x_shape[2:])
        if m is None:
            return None
        if self._winograd is None or self._winograd.m != m:
            self._winograd = winograd.Winograd(self.geometry, self.group, m)
        return self._winograd

    def _fast_path(self, xp, x_shape, outputs):
        """The Fourier or the Winograd op when this convolution takes one of
        those paths (on the CPU; Fourier first where fourier.use_fourier
        says so, then winograd.tile_size), else None."""
        if xp is not numpy:
            return None
        if fourier.use_fourier(self.geometry, self.group, x_shape[1], outputs, x_shape[2:], x_shape[0],
                               self.needs_dx):
            if self._fourier is None:
                self._fourier = fourier.Fourier(self.geometry, self.group)
            return self._fourier
        return self._minimal_filtering(xp, x_shape, outputs)

    def forward(self, x, weight, bias, y, relu=False):
        """y = conv(x) + bias; bias may be None. With `relu`, y = max(y, 0)
        too, each lane's part while it is in cache (a ReLU layer in place
        after this one: Net fuses it)."""
        xp = backend.get_array_module(x)
        fast = self._fast_path(xp, x.shape, weight.shape[0])
        if fast is not None:
            return fast.forward(x, weight, bias, y, relu)
        c, o = x.shape[1], weight.shape[0]
        layout = self._plan(x.shape, o, x.itemsize).layout
        lanes = threads.count(xp)
        passes = [self._columns("forward", k, layout, self.geometry, c, o, x.shape[2:]) for k in range(lanes)]
        runs, capacity = self._chunks(xp, x.shape[0], x.itemsize, lanes, passes[0])
        wmat = passes[0].forward_weights(weight, bias)
        address = _address(x)

        def lane(cols, run):
            cols.loaded = cols.built = None   # x's data may have changed since the last call
            for n0, n1 in run:
                key = (address, n0, n1)
                cols.forward(cols.build(cols.load(x, n0, n1, capacity, key), key), wmat, y[n0:n1], bias)
                if relu:
                    xp.maximum(y[n0:n1], 0, out=y[n0:n1])
        threads.run([functools.partial(lane, cols, run) for cols, run in zip(passes, runs)], self._choices["forward"])

    def backward_data(self, dy, weight, dx):
        """dx = the transposed convolution of dy (Deconvolution's forward);
        dx only gives the input shape here, and is overwritten."""
        self.backward(dx, dy, weight, dx=dx)

    def backward(self, x, dy, weight, dweight=None, dbias=None, dx=None):
        """Add the weight/bias gradients into dweight/dbias and write dx (each
        only when given). Reuses forward's columns when x is the array
        forward() last saw; x must not have changed since."""
        xp = backend.get_array_module(dy)
        if dweight is not None or dx is not None:
            self._learn(dx is not None)
        fast = self._fast_path(xp, x.shape, weight.shape[0])
        if fast is not None:
            return fast.backward(x, dy, weight, dweight, dbias, dx)
        spatial_axes = tuple(range(2, dy.ndim))
        if dweight is None and dx is None:
            if dbias is not None:
                dbias += dy.sum(axis=(0,) + spatial_axes)
            return
        n, c = x.shape[:2]
        o = weight.shape[0]
        plan = self._plan(x.shape, o, dy.itemsize)
        by_convolution = dx is not None and plan.by_convolution
        col2im = dx is not None and not by_convolution
        # The weight gradient from the dy columns the input gradient builds
        # (ChannelsLast.transposed_weight_grad): x's columns are not rebuilt.
        shared = (SHARED_COLUMNS and by_convolution and dweight is not None
                  and plan.transpose_layout is ChannelsLast and conv_cost.shares_columns(self.group, c, o))
        lanes = threads.count(xp)
        forward = transpose = [None] * lanes
        if (dweight is not None and not shared) or col2im:
            forward = [self._columns("forward", k, plan.layout, self.geometry, c, o, x.shape[2:])
                       for k in range(lanes)]
        if by_convolution:
            geometry = self.geometry.transpose()
            transpose = [self._columns("transpose", k, plan.transpose_layout, geometry, o, c, dy.shape[2:])
                         for k in range(lanes)]
            twmat = transpose[0].weights(self._transposed_weight(weight))
        runs, capacity = self._chunks(xp, n, dy.itemsize, lanes, *[p[0] for p in (forward, transpose) if p[0]])
        wmat = forward[0].weights(weight) if col2im else None
        address = _address(x)

        def lane(index, cols, tcols, run):
            if dbias is not None:    # each lane its images' sum, added in lane order below
                dy[run[0][0]:run[-1][1]].sum(axis=(0,) + spatial_axes,
                                             out=self.workspace.get(f"dbias{index}", (o,), dy.dtype, xp))
            if shared:
                acc = tcols.transposed_accumulator(weight.dtype, xp)
                acc.fill(0)
            elif dweight is not None:
                acc = cols.accumulator(weight.dtype, xp)
                acc.fill(0)
            for n0, n1 in reversed(run):
                if cols is not None:
                    dyc = cols.output_grad(dy[n0:n1])
                if dweight is not None and not shared:
                    key = (address, n0, n1)
                    cols.weight_grad(cols.build(cols.load(x, n0, n1, capacity, key), key), dyc, acc)
                if by_convolution:
                    tcol = tcols.build(tcols.load(dy, n0, n1, capacity))
                    if shared:
                        tcols.transposed_weight_grad(tcol, x[n0:n1], acc, capacity)
                    tcols.forward(tcol, twmat, dx[n0:n1], None)
                elif col2im:
                    cols.col2im(dyc, wmat, dx[n0:n1], capacity)
        threads.run([functools.partial(lane, index, cols, tcols, run)
                     for index, (cols, tcols, run) in enumerate(zip(forward, transpose, runs))],
                    self._choices["backward", dweight is not None, dx is not None])
        if dbias is not None:
            for index in range(len(runs)):
                dbias += self.workspace.get(f"dbias{index}", (o,), dy.dtype, xp)
        if shared:
            acc = transpose[0].transposed_accumulator(weight.dtype, xp)
            for tcols in transpose[1:len(runs)]:
                acc += tcols.transposed_accumulator(weight.dtype, xp)
            transpose[0].add_transposed_weight_grad(acc, dweight)
        elif dweight is not None:
            # Lane by lane in a fixed order: the same thread count, the same sum.
            acc = forward[0].accumulator(weight.dtype, xp)
            for cols in forward[1:len(runs)]:
                acc += cols.accumulator(weight.dtype, xp)
            forward[0].add_weight_grad(acc, dweight)
