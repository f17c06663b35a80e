"""Caffe's im2col/col2im in its own layout, for the Im2col layer.

Columns are (N, C, *kernel, *out): the row index of Caffe's column matrix
is (c * kh + i) * kw + j and the column index the output position. im2col
is one strided copy from a zero-padded copy of the input; col2im adds one
kernel offset at a time, because windows overlap and a single add through
overlapping views would drop contributions.
"""
import itertools

from .. import backend
from . import kernels
from .workspace import Workspace


def window_view(padded, geometry, out, lead=2):
    """A strided view (*lead axes, *kernel, *out) of a padded (*lead axes,
    *padded spatial) array: element [.., k, o] is the input that kernel
    offset k sees at output position o. Elements repeat: only read it."""
    xp = backend.get_array_module(padded)
    g = geometry
    st = padded.strides
    spatial = st[lead:]
    shape = padded.shape[:lead] + tuple(g.kernel) + tuple(out)
    strides = (st[:lead] + tuple(s * d for s, d in zip(spatial, g.dilation))
               + tuple(s * t for s, t in zip(spatial, g.stride)))
    return xp.lib.stride_tricks.as_strided(padded, shape, strides)


def offset_view(padded, geometry, out, offset, lead=2):
    """The (*lead axes, *out) positions kernel offset `offset` reads, writable."""
    g = geometry
    index = (slice(None),) * lead + tuple(
        slice(k * d, k * d + (o - 1) * s + 1, s) for k, d, o, s in zip(offset, g.dilation, out, g.stride))
    return padded[index]


class Im2col:
    """x (N, C, *S) <-> columns (N, C, *kernel, *out), with a reused padded buffer."""

    def __init__(self, geometry):
        self.geometry = geometry
        self.workspace = Workspace()

    def _padded(self, name, x):
        g = self.geometry
        if not g.padded_input:
            return None
        xp = backend.get_array_module(x)
        shape = x.shape[:2] + g.padded_shape(x.shape[2:])
        return self.workspace.get(name, shape, x.dtype, xp, fill=0)

    def forward(self, x, col):
        """col = im2col(x); col has shape (N, C, *kernel, *out)."""
        if len(self.geometry.kernel) == 2 and kernels.on_gpu(x):   # CuPy: one kernel (ops/kernels.py)
            return kernels.im2col(self, x, col)
        xp = backend.get_array_module(x)
        g = self.geometry
        out = col.shape[2 + len(g.kernel):]
        padded = self._padded("input", x)
        if padded is None:
            padded = x
        else:   # the border stays zero from creation; only the interior is rewritten
            padded[(slice(None), slice(None)) + g.interior(x.shape[2:])] = x
        xp.copyto(col, window_view(padded, g, out))

    def backward(self, col, dx):
        """dx = col2im(col): every column entry added back where it was read."""
        if len(self.geometry.kernel) == 2 and kernels.on_gpu(col):   # CuPy: one kernel (ops/kernels.py)
            return kernels.col2im(self, col, dx)
        g = self.geometry
        out = col.shape[2 + len(g.kernel):]
        padded = self._padded("grad", dx)
        target = dx if padded is None else padded
        target.fill(0)
        for offset in itertools.product(*[range(k) for k in g.kernel]):
            offset_view(target, g, out, offset)[...] += col[(slice(None), slice(None)) + offset]
        if padded is not None:
            dx[...] = padded[(slice(None), slice(None)) + g.interior(dx.shape[2:])]
