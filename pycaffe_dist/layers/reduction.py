"""Reductions over trailing axes: Reduction (SUM, ASUM, SUMSQ, MEAN) and ArgMax."""
import numpy

from ..proto.caffe_pb2 import ReductionParameter
from .base import Layer, register
from .common import canonical_axis, check_not_in_place, scratch, split_shape

SUM, ASUM, SUMSQ, MEAN = (ReductionParameter.SUM, ReductionParameter.ASUM,
                          ReductionParameter.SUMSQ, ReductionParameter.MEAN)


@register
class Reduction(Layer):
    """coeff * (sum, sum of |x|, sum of x^2, or mean) over the axes from `axis`
    on; the top keeps the axes before it (a scalar for axis 0)."""

    type = "Reduction"
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        check_not_in_place(self, bottom, top)
        p = self.param.reduction_param
        if p.operation not in (SUM, ASUM, SUMSQ, MEAN):
            raise self.error(f"unknown reduction_param.operation {p.operation}")
        self.operation = p.operation
        self.coeff = float(p.coeff)
        self.axis = canonical_axis(self, p.axis, len(bottom[0].shape))

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        self.dims = (int(numpy.prod(shape[:self.axis], dtype=numpy.int64)),
                     int(numpy.prod(shape[self.axis:], dtype=numpy.int64)))
        top[0].reshape(shape[:self.axis])
        # MEAN is the SUM scaled by 1 / dim, as in Caffe
        self.scale = self.coeff / max(self.dims[1], 1) if self.operation == MEAN else self.coeff

    def forward(self, bottom, top):
        xp = self.xp
        x = bottom[0].data.reshape(self.dims)
        y = top[0].data.reshape(self.dims[0])
        if self.operation in (ASUM, SUMSQ):
            term = scratch(self, "_term", self.dims, x.dtype)
            if self.operation == ASUM:
                xp.abs(x, out=term)
            else:
                xp.multiply(x, x, out=term)
            x = term
        x.sum(axis=1, out=y)
        if self.scale != 1:
            y *= y.dtype.type(self.scale)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        x = bottom[0].data.reshape(self.dims)
        dx = bottom[0].diff.reshape(self.dims)
        dy = top[0].diff.reshape(self.dims[0], 1)
        cast = dx.dtype.type
        if self.operation == ASUM:
            xp.sign(x, out=dx)
            dx *= dy
        elif self.operation == SUMSQ:
            xp.multiply(x, dy, out=dx)
            dx *= cast(2)
        else:
            dx[...] = dy
        if self.scale != 1:
            dx *= cast(self.scale)


@register
class ArgMax(Layer):
    """The indices (and with out_max_val the values) of the top_k largest values.

    With argmax_param.axis: along that axis, the top has top_k there and holds
    values when out_max_val, else indices. Without: over each item's flattened
    values, the top is N x (1 or 2) x top_k (x 1 ...), indices first, as Caffe.
    Ties go to the larger index, as Caffe's sort of (value, index) pairs does.
    No gradient.
    """

    type = "ArgMax"
    exact_num_bottom = 1
    exact_num_top = 1
    allow_backward = False

    def layer_setup(self, bottom, top):
        check_not_in_place(self, bottom, top)
        p = self.param.argmax_param
        self.out_max_val = bool(p.out_max_val)
        self.top_k = int(p.top_k)
        self.axis = (canonical_axis(self, p.axis, len(bottom[0].shape))
                     if p.HasField("axis") else None)

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if self.axis is not None:
            self.dims = split_shape(shape, self.axis)
            top_shape = shape[:self.axis] + (self.top_k,) + shape[self.axis + 1:]
        else:
            num = shape[0] if shape else 1
            self.dims = (num, bottom[0].count // max(num, 1), 1)
            top_shape = [num, 2 if self.out_max_val else 1, self.top_k] + [1] * (len(shape) - 3)
        if not 1 <= self.top_k <= self.dims[1]:
            raise self.error(f"top_k {self.top_k} must be between 1 and the {self.dims[1]} "
                             "values it picks from")
        top[0].reshape(top_shape)

    def forward(self, bottom, top):
        xp = self.xp
        x = bottom[0].data.reshape(self.dims)
        # A stable ascending sort, reversed: descending, equal values by
        # descending index.
        order = xp.argsort(x, axis=1, kind="stable")[:, ::-1][:, :self.top_k]
        values = xp.take_along_axis(x, order, axis=1)
        outer, _, inner = self.dims
        if self.axis is not None:
            top[0].data.reshape(outer, self.top_k, inner)[...] = values if self.out_max_val else order
        elif self.out_max_val:
            y = top[0].data.reshape(outer, 2, self.top_k)
            y[:, 0] = order[..., 0]
            y[:, 1] = values[..., 0]
        else:
            top[0].data.reshape(outer, self.top_k)[...] = order[..., 0]
