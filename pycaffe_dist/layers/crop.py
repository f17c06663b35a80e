"""Crop: cut the first bottom to the shape of the second (FCN's alignment layer)."""
from .base import Layer, register
from .common import canonical_axis


@register
class Crop(Layer):
    """Caffe's Crop: axes from crop_param.axis (default 2) on take the second
    bottom's size, starting at `offset` (none: 0; one: every cropped axis;
    else one per cropped axis); earlier axes are kept whole. The second
    bottom only gives the shape and gets no gradient."""

    type = "Crop"
    exact_num_bottom = 2
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.crop_param
        ndim = len(bottom[0].shape)
        self.axis = canonical_axis(self, p.axis, ndim)
        cropped = ndim - self.axis
        offsets = [int(v) for v in p.offset]
        if len(offsets) > 1 and len(offsets) != cropped:
            raise self.error(f"crop_param has {len(offsets)} offsets for {cropped} cropped axes "
                             f"(axis {self.axis} on); give 0, 1 or {cropped}")
        self.offsets = offsets * cropped if len(offsets) == 1 else offsets or [0] * cropped

    def reshape(self, bottom, top):
        shape, reference = tuple(bottom[0].shape), tuple(bottom[1].shape)
        if len(shape) != len(reference):
            raise self.error(f"bottoms need the same number of axes, got {shape} and {reference}")
        out = list(shape)
        self.window = [slice(None)] * self.axis
        for i, offset in enumerate(self.offsets, self.axis):
            if shape[i] - offset < reference[i]:
                raise self.error(f"axis {i}: offset {offset} + size {reference[i]} runs past the "
                                 f"bottom's {shape[i]}")
            out[i] = reference[i]
            self.window.append(slice(offset, offset + reference[i]))
        self.window = tuple(self.window)
        top[0].reshape(out)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data[self.window]

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            dx = bottom[0].diff
            dx.fill(0)
            dx[self.window] = top[0].diff

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0
