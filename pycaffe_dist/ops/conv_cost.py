"""Which column layout a convolution uses, and how its input gradient is
made: a cost model in nanoseconds per image.

Each layout costs a number of strided-copy inner loops (what numpy pays per
call, whatever the run length), copied or added elements, elements moved
between NCHW and its own order, and GEMM flops at the rate its orientation
and matrix size get from OpenBLAS. One training step builds the forward
columns twice (forward, then the weight gradient) and then makes the input
gradient either by col2im in the same layout or as the transposed
convolution in whichever layout suits that.
"""
import collections
import math

from .conv_batch_last import BatchLast
from .conv_columns import ChannelsFirst, ChannelsLast

# Fitted to per-pass timings of LeNet's and cifar10_quick's convolutions on
# a 2-core Xeon (Sapphire Rapids) with numpy 2 and OpenBLAS: one inner loop
# of a strided copy; one element copied or added in cache; one element moved
# to or from channels-last/batch-last; one GEMM flop with (positions, K) @
# (K, O) columns in cache, with (O, K) @ (K, positions) (OpenBLAS is slower
# that way round when O is small), and with batch-last columns bigger than
# the cache. ChannelsLast's col2im multiplies one narrow GEMM per kernel
# offset, at about half the rate of its big one.
LOOP_NS = 8.0
COPY_NS = 0.3
TRANSPOSE_NS = 1.0
FLOP_NS = {ChannelsLast: 1 / 100, ChannelsFirst: 1 / 70, BatchLast: 1 / 80}
COL2IM_FLOP_NS = {**FLOP_NS, ChannelsLast: 1 / 50}

# conv.SHARED_COLUMNS only where C/g and O/g are at most this.
SHARED_MAX_CHANNELS = 64

# A batch-last chunk may hold this many times conv.COLUMN_BYTES of columns.
BATCH_LAST_SCALE = 16

Plan = collections.namedtuple("Plan", "layout by_convolution transpose_layout")


class _Costs:
    """One pass (x -> y) of one geometry, ns per image, for each layout."""

    def __init__(self, geometry, group, channels, outputs, spatial, batch_last_images):
        out = geometry.out_shape(spatial)
        positions, volume = math.prod(out), geometry.kernel_volume()
        rows = math.prod(out[:-1])
        merged = group == 1 and geometry.dilation[-1] == 1
        # Inner loops of one im2col (and of col2im's adds) per layout.
        batch_runs = rows if geometry.stride[-1] == 1 else positions
        self.loops = {ChannelsFirst: channels * volume * rows,
                      ChannelsLast: positions * (math.prod(geometry.kernel[:-1]) if merged else volume * group),
                      BatchLast: channels * volume * batch_runs / batch_last_images}
        self.add_loops = {**self.loops, ChannelsLast: positions * volume * group}
        self.copies = positions * channels * volume * COPY_NS
        self.flops = 2 * positions * outputs * channels // group * volume
        moved = (channels * math.prod(spatial) + outputs * positions) * TRANSPOSE_NS
        self.moves = {ChannelsFirst: 0.0, ChannelsLast: moved, BatchLast: moved}

    def im2col_gemm(self, layout):
        """Columns, their GEMM, and moving the input in and the output out."""
        return (self.loops[layout] * LOOP_NS + self.copies + self.flops * FLOP_NS[layout]
                + self.moves[layout])

    def col2im(self, layout):
        """The GEMM into column gradients and their adds into the input gradient."""
        return self.flops * COL2IM_FLOP_NS[layout] + self.add_loops[layout] * LOOP_NS + self.copies


def shares_columns(group, channels, outputs):
    """Whether backward takes the weight gradient from the input gradient's
    channels-last dy columns (conv.SHARED_COLUMNS): a GEMM (kernel * O/g,
    rows) @ (rows, C/g) in place of (kernel * C/g, rows) @ (rows, O/g), for
    not building x's columns again. Only for narrow layers, where the
    columns cost as much as the packing-bound GEMMs (cifar10_quick's conv2
    and conv3: 0.80x and 0.90x backward); with CaffeNet's conv2 (C/g 48,
    O/g 128) the narrower product ran at 115 GFLOP/s against 152."""
    cg, og = channels // group, outputs // group
    return cg <= SHARED_MAX_CHANNELS and og <= SHARED_MAX_CHANNELS and 2 * cg >= og


def images_per_chunk(budget, image_bytes, batch):
    return max(1, min(batch, budget // max(1, image_bytes)))


def plan(geometry, group, channels, outputs, spatial, batch, itemsize, column_bytes, needs_dx=True):
    """The Plan of a training step: the forward columns' layout, whether the
    input gradient is the transposed convolution, and that one's layout."""
    image_bytes = channels * geometry.kernel_volume() * math.prod(geometry.out_shape(spatial)) * itemsize
    images = images_per_chunk(column_bytes * BATCH_LAST_SCALE, image_bytes, batch)
    costs = _Costs(geometry, group, channels, outputs, spatial, images)
    # Forward and weight gradient each build the columns and run a GEMM.
    step = {layout: 2 * costs.im2col_gemm(layout) for layout in FLOP_NS}
    if not needs_dx:
        return Plan(min(step, key=step.get), False, None)
    options = {(layout, False, None): step[layout] + costs.col2im(layout) for layout in FLOP_NS}
    transpose = geometry.transpose()
    if transpose is not None:
        out = geometry.out_shape(spatial)
        t_images = images_per_chunk(column_bytes * BATCH_LAST_SCALE,
                                    outputs * geometry.kernel_volume() * math.prod(spatial) * itemsize, batch)
        t_costs = _Costs(transpose, group, outputs, channels, out, t_images)
        t_layout = min(FLOP_NS, key=t_costs.im2col_gemm)
        for layout in FLOP_NS:
            options[(layout, True, t_layout)] = step[layout] + t_costs.im2col_gemm(t_layout)
        # Or channels-last dy columns that also give the weight gradient
        # (conv.SHARED_COLUMNS): the forward's columns are built once, the
        # weight GEMM is as big as the input gradient's, and x moves to
        # channels-last.
        shared = (t_costs.im2col_gemm(ChannelsLast) + t_costs.flops * FLOP_NS[ChannelsLast]
                  + channels * math.prod(spatial) * TRANSPOSE_NS)
        for layout in FLOP_NS if shares_columns(group, channels, outputs) else ():
            options[(layout, True, ChannelsLast)] = min(options.get((layout, True, ChannelsLast), math.inf),
                                                        step[layout] / 2 + shared)
    return Plan(*min(options, key=options.get))
