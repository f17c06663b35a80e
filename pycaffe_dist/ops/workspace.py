"""Scratch arrays an op keeps from one iteration to the next.

Allocating a fresh multi-megabyte array every step costs page faults and
cache misses that show up in a numpy training step; an op asks its
Workspace for a named buffer and gets the same memory back while the shape
and dtype hold.
"""
from .. import backend


class Workspace:
    """Named buffers, reused while (shape, dtype, array module) do not change."""

    def __init__(self):
        self._arrays = {}

    def get(self, name, shape, dtype, xp, fill=None):
        """The buffer called `name`; a new one is made (and filled with
        `fill`, if given) only when the shape, dtype or module changed.

        Fill-on-creation is what padded buffers rely on: their borders are
        never written, so they keep the fill value across iterations.
        """
        shape = tuple(int(d) for d in shape)
        array = self._arrays.get(name)
        if (array is None or array.shape != shape or array.dtype != dtype
                or backend.get_array_module(array) is not xp):
            if fill is None:
                array = xp.empty(shape, dtype)
            else:
                array = xp.full(shape, fill, dtype)
            self._arrays[name] = array
        return array

    def prefix(self, name, shape, dtype, xp):
        """A contiguous array of `shape` at the start of a flat buffer that
        only grows, for sizes that vary (a shorter last block)."""
        count = 1
        for d in shape:
            count *= int(d)
        array = self._arrays.get(name)
        if (array is None or array.size < count or array.dtype != dtype
                or backend.get_array_module(array) is not xp):
            array = self._arrays[name] = xp.empty((count,), dtype)
        return array[:count].reshape(shape)

    def clear(self):
        self._arrays.clear()
