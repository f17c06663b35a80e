"""Layers that move values around without arithmetic on them: Reshape, Slice,
Tile, BatchReindex, Filter, Parameter, Silence.

Where Caffe shares memory between a top and its bottom (Reshape, one-top
Slice), these copy, as Flatten does: a consumer working in place on the top
then cannot change the bottom under another reader.
"""
import numpy

from .base import Layer, register
from .common import canonical_axis, check_not_in_place, read_indices


def count_of(shape):
    return int(numpy.prod(shape, dtype=numpy.int64))


# -- Reshape ----------------------------------------------------------------------
@register
class Reshape(Layer):
    """Give the bottom's values a new shape.

    reshape_param.shape replaces axes axis..axis+num_axes-1 of the bottom
    (num_axes -1: to the last axis; a negative axis counts from the end, -1
    meaning after the last axis); 0 copies the bottom's dimension at that
    position, and one -1 is inferred from the count.
    """

    type = "Reshape"
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        check_not_in_place(self, bottom, top)
        p = self.param.reshape_param
        self.dims = [int(d) for d in p.shape.dim]
        if any(d < -1 for d in self.dims):
            raise self.error(f"reshape_param.shape {self.dims}: dimensions must be >= 0, "
                             "or -1 for the one to infer")
        if self.dims.count(-1) > 1:
            raise self.error(f"reshape_param.shape {self.dims} has more than one -1; "
                             "only one dimension can be inferred")
        if p.num_axes < -1:
            raise self.error(f"reshape_param.num_axes must be -1 or more, got {p.num_axes}")

    def _top_shape(self, shape):
        p = self.param.reshape_param
        ndim = len(shape)
        start = p.axis if p.axis >= 0 else ndim + p.axis + 1
        if not 0 <= start <= ndim:
            raise self.error(f"reshape_param.axis {p.axis} is out of range for bottom {shape}")
        end = ndim if p.num_axes == -1 else start + p.num_axes
        if end > ndim:
            raise self.error(f"axis {p.axis} with num_axes {p.num_axes} reaches past the "
                             f"{ndim} axes of bottom {shape}")
        middle = []
        for i, d in enumerate(self.dims):
            if d == 0:
                if start + i >= ndim:
                    raise self.error(f"shape dimension {i} is 0 (copy) but bottom {shape} "
                                     f"has no axis {start + i}")
                d = shape[start + i]
            middle.append(d)
        new = list(shape[:start]) + middle + list(shape[end:])
        if -1 in new:
            known = count_of([d for d in new if d != -1])
            total = count_of(shape)
            if known == 0 or total % known:
                raise self.error(f"cannot infer the -1 in {self.dims}: bottom {shape} has "
                                 f"{total} values, not a multiple of {known}")
            new[new.index(-1)] = total // known
        if count_of(new) != count_of(shape):
            raise self.error(f"shape {tuple(new)} holds {count_of(new)} values but bottom "
                             f"{shape} has {count_of(shape)}")
        return tuple(new)

    def reshape(self, bottom, top):
        top[0].reshape(self._top_shape(bottom[0].shape))

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data.reshape(top[0].shape)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff.reshape(bottom[0].shape)


# -- Slice ------------------------------------------------------------------------
@register
class Slice(Layer):
    """Cut the bottom along an axis: at slice_point (one fewer than the tops),
    or into equal parts."""

    type = "Slice"
    exact_num_bottom = 1
    min_top = 1

    def layer_setup(self, bottom, top):
        check_not_in_place(self, bottom, top)
        p = self.param.slice_param
        if p.HasField("axis") and p.HasField("slice_dim"):
            raise self.error("give slice_param either axis or the legacy slice_dim, not both")
        axis = p.slice_dim if p.HasField("slice_dim") else p.axis
        self.axis = canonical_axis(self, axis, len(bottom[0].shape))
        self.points = [int(k) for k in p.slice_point]
        if self.points and len(self.points) != len(top) - 1:
            raise self.error(f"{len(self.points)} slice_point values for {len(top)} tops; "
                             "give one fewer than the tops, or none for equal parts")

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        size = shape[self.axis]
        if self.points:
            bounds = [0] + self.points + [size]
            if any(b <= a for a, b in zip(bounds, bounds[1:])):
                raise self.error(f"slice_point {self.points} must increase strictly and stay "
                                 f"inside (0, {size}), the size of axis {self.axis}")
        else:
            if size % len(top):
                raise self.error(f"axis {self.axis} of size {size} does not split into "
                                 f"{len(top)} equal parts")
            bounds = [k * size // len(top) for k in range(len(top) + 1)]
        lead = (slice(None),) * self.axis
        self.pieces = [lead + (slice(a, b),) for a, b in zip(bounds, bounds[1:])]
        for t, (a, b) in zip(top, zip(bounds, bounds[1:])):
            t.reshape(shape[:self.axis] + (b - a,) + shape[self.axis + 1:])

    def forward(self, bottom, top):
        x = bottom[0].data
        for t, where in zip(top, self.pieces):
            t.data[...] = x[where]

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        for t, where in zip(top, self.pieces):
            dx[where] = t.diff


# -- Tile -------------------------------------------------------------------------
@register
class Tile(Layer):
    """Repeat the bottom `tiles` times along `axis` (the whole block of axes
    from axis on repeats, as numpy.tile does)."""

    type = "Tile"
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        check_not_in_place(self, bottom, top)
        p = self.param.tile_param
        self.axis = canonical_axis(self, p.axis, len(bottom[0].shape))
        if p.tiles <= 0:
            raise self.error(f"tile_param.tiles must be positive, got {p.tiles}")
        self.tiles = int(p.tiles)

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        self.dims = (count_of(shape[:self.axis]), count_of(shape[self.axis:]))
        top[0].reshape(shape[:self.axis] + (shape[self.axis] * self.tiles,) + shape[self.axis + 1:])

    def forward(self, bottom, top):
        outer, inner = self.dims
        top[0].data.reshape(outer, self.tiles, inner)[...] = bottom[0].data.reshape(outer, 1, inner)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            outer, inner = self.dims
            top[0].diff.reshape(outer, self.tiles, inner).sum(
                axis=1, out=bottom[0].diff.reshape(outer, inner))


# -- BatchReindex -----------------------------------------------------------------
@register
class BatchReindex(Layer):
    """top[i] = bottom[0][bottom[1][i]]: items picked (and repeated) by index."""

    type = "BatchReindex"
    exact_num_bottom = 2
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        check_not_in_place(self, bottom, top)

    def reshape(self, bottom, top):
        if len(bottom[1].shape) != 1:
            raise self.error(f"bottom[1] holds the indices and must have one axis, got "
                             f"shape {bottom[1].shape}")
        top[0].reshape(bottom[1].shape + bottom[0].shape[1:])

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def forward(self, bottom, top):
        self._index = read_indices(self, bottom[1], bottom[0].shape[0], "bottom[1] (an index)")
        self.xp.take(bottom[0].data, self._index, axis=0, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            raise self.error("cannot backpropagate to the indices (bottom[1])")
        if propagate_down[0]:
            dx = bottom[0].diff
            dx[...] = 0
            self.xp.add.at(dx, self._index, top[0].diff)


# -- Filter -----------------------------------------------------------------------
@register
class Filter(Layer):
    """Keep the items (axis 0) whose selector is nonzero.

    The last bottom is the selector (shape (N,) or N x 1 x ...); each other
    bottom has N items and gives one top. Backward fills the dropped items'
    diffs with zeros; the selector gets no gradient.
    """

    type = "Filter"
    min_bottom = 2
    min_top = 1

    def layer_setup(self, bottom, top):
        check_not_in_place(self, bottom, top)
        if len(top) != len(bottom) - 1:
            raise self.error(f"{len(bottom)} bottoms (the last one the selector) make "
                             f"{len(bottom) - 1} tops, got {len(top)}")
        # As Caffe: the first reshape (at setup, before any data) keeps every
        # item, so the layers above are set up with a full batch.
        self._setting_up = True
        self._selector_index = len(bottom) - 1

    def reshape(self, bottom, top):
        selector = bottom[-1]
        shape = selector.shape
        if not shape or any(d != 1 for d in shape[1:]):
            raise self.error(f"the selector (bottom[{len(bottom) - 1}]) must be N or N x 1 x ..., "
                             f"got shape {shape}")
        for i, b in enumerate(bottom[:-1]):
            if not b.shape or b.shape[0] != shape[0]:
                raise self.error(f"bottom[{i}] {b.shape} must have the selector's {shape[0]} items")
        if self._setting_up:
            self._setting_up = False
            self._index = self.xp.arange(shape[0])
        else:
            self._index = self.xp.flatnonzero(selector.data.reshape(-1))
        for t, b in zip(top, bottom):
            t.reshape((int(self._index.size),) + b.shape[1:])

    def allow_force_backward(self, bottom_index):
        return bottom_index != self._selector_index

    def forward(self, bottom, top):
        for t, b in zip(top, bottom):
            self.xp.take(b.data, self._index, axis=0, out=t.data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[-1]:
            raise self.error(f"cannot backpropagate to the selector (bottom[{len(bottom) - 1}])")
        for t, b, down in zip(top, bottom, propagate_down):
            if down:
                dx = b.diff
                dx[...] = 0
                dx[self._index] = t.diff


# -- Parameter --------------------------------------------------------------------
@register
class Parameter(Layer):
    """A learnable blob of parameter_param.shape, given as the top (zeros until
    trained or loaded, as in Caffe)."""

    type = "Parameter"
    exact_num_bottom = 0
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        if not self.blobs:
            self.blobs = [self.make_blob(tuple(self.param.parameter_param.shape.dim))]
        self.param_propagate_down = [True]

    def reshape(self, bottom, top):
        top[0].reshape(self.blobs[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data

    def backward(self, top, propagate_down, bottom):
        if self.param_propagate_down[0]:
            diff = self.blobs[0].diff
            diff += top[0].diff


# -- Silence ----------------------------------------------------------------------
@register
class Silence(Layer):
    """Consume blobs nobody else reads (so they are not net outputs); their
    diffs, when asked for, are zeros."""

    type = "Silence"
    min_bottom = 1
    exact_num_top = 0

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        for b, down in zip(bottom, propagate_down):
            if down:
                b.diff[...] = 0
