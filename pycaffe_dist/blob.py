"""Blob: a named N-D array with its gradient, as in Caffe."""
import os

import numpy

from . import backend

MAX_COUNT = 2 ** 31 - 1   # Caffe's Blob::Reshape refuses more; it also stops absurd prototxt sizes early


def _physical_memory():
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return float("inf")


class Blob:
    """Data and diff arrays of one shape.

    Learnable blobs are rebound by the Net to views into its flat parameter
    buffers (see `Net`), so their `data` and `diff` must be written in place
    (`blob.data[...] = x`), never reassigned, to keep the sharing intact.
    """

    def __init__(self, shape=(), dtype=numpy.float32, xp=None):
        self.xp = xp or backend.array_module()
        self.dtype = numpy.dtype(dtype)
        self._data = None
        self._diff = None
        self._shape = None
        self._diff_owes_zeros = False
        self.reshape(shape)

    # -- shape ---------------------------------------------------------------
    def reshape(self, *shape):
        """Change the shape; memory is kept when the element count does not change."""
        if len(shape) == 1 and not isinstance(shape[0], (int, numpy.integer)):
            shape = shape[0]
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ValueError("blob dimensions must be non-negative, got %s" % (shape,))
        if shape == self._shape:
            return
        count = 1
        for d in shape:                 # Python ints: a hostile shape must not wrap around
            count *= d
        if count > MAX_COUNT:
            raise ValueError("blob shape %s holds %d elements, above the limit of %d (2**31 - 1, as Caffe)"
                             % (" x ".join(map(str, shape)), count, MAX_COUNT))
        need = 2 * count * self.dtype.itemsize     # data and diff
        if self.xp is numpy and need > _physical_memory():
            raise ValueError("blob shape %s needs %.1f GiB for data and diff, more than this machine's "
                             "%.1f GiB of memory" % (" x ".join(map(str, shape)), need / 2**30,
                                                     _physical_memory() / 2**30))
        if self._data is not None and self._data.size == count:
            self._data = self._data.reshape(shape)
            self._diff = self._diff.reshape(shape)
        else:
            self._data = self.xp.zeros(shape, self.dtype)
            self._diff = self.xp.zeros(shape, self.dtype)
        self._shape = shape

    def reshape_like(self, other):
        self.reshape(other.shape)

    def bind(self, data, diff):
        """Make this blob's data and diff the given arrays (views into flat buffers)."""
        assert data.shape == diff.shape
        self._data, self._diff, self._shape = data, diff, tuple(data.shape)
        self.xp = backend.get_array_module(data)
        self._diff_owes_zeros = False

    @property
    def shape(self):
        return self._shape

    @property
    def count(self):
        return int(self._data.size)

    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value):
        self._data[...] = value

    @property
    def diff(self):
        if self._diff_owes_zeros:          # cleared by Net.clear_param_diffs(lazily=True)
            self._diff[...] = 0
            self._diff_owes_zeros = False
        return self._diff

    @diff.setter
    def diff(self, value):
        self._diff_owes_zeros = False
        self._diff[...] = value

    def clear_diff_lazily(self):
        """Make the diff read as zeros without writing it now: the zeros are
        written on the next read of `diff`, or not at all when a layer
        overwrites the whole diff first (diff_to_overwrite)."""
        self._diff_owes_zeros = True

    @property
    def diff_owes_zeros(self):
        return self._diff_owes_zeros

    def diff_to_overwrite(self):
        """The diff array for a caller that writes every element of it (and
        reads none): a pending lazy clear is dropped instead of written."""
        self._diff_owes_zeros = False
        return self._diff

    def _legacy(self, axis):
        if len(self._shape) > 4:
            raise ValueError("legacy accessor on a blob with %d axes" % len(self._shape))
        padded = tuple(self._shape) + (1,) * (4 - len(self._shape))  # Caffe pads at the end
        return padded[axis]

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

    def shape_string(self):
        return " ".join(str(d) for d in self._shape) + " (%d)" % self.count

    def __repr__(self):
        return "Blob(%s)" % (self.shape_string(),)
