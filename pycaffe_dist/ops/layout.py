"""Transposing copies between Caffe's (N, C, ...) layout and batch-last (C, ..., N).

A plain `copyto(dst, src.transpose(...))` of a few megabytes walks one side
with a large stride and thrashes the cache (6 ms for LeNet's conv1 output
here). Copying a few channels at a time keeps each block's source and
destination in L2, which is 5-10x faster on the CPU. On a GPU one copy is
best, so blocks there span everything.
"""
import numpy

from .. import backend

# Elements per block on the CPU: the block's two sides fit in L2 together.
BLOCK_ELEMENTS = 1 << 16


def _channels_per_block(xp, channels, per_channel):
    if xp is not numpy:
        return channels
    return max(1, min(channels, BLOCK_ELEMENTS // max(1, per_channel)))


def to_batch_last(src, dst):
    """dst[c, ..., n] = src[n, c, ...]; dst may be a strided (padded) view."""
    xp = backend.get_array_module(src)
    channels = src.shape[1]
    per_channel = src.size // max(1, channels)
    step = _channels_per_block(xp, channels, per_channel)
    for c0 in range(0, channels, step):
        block = src[:, c0:c0 + step]
        xp.copyto(dst[c0:c0 + step], xp.moveaxis(block, 0, -1))


def from_batch_last(src, dst, bias=None):
    """dst[n, c, ...] = src[c, ..., n] (+ bias[c]); src may be a strided view."""
    xp = backend.get_array_module(src)
    channels = src.shape[0]
    per_channel = src.size // max(1, channels)
    step = _channels_per_block(xp, channels, per_channel)
    spatial_ones = (1,) * (src.ndim - 2)
    for c0 in range(0, channels, step):
        block = xp.moveaxis(src[c0:c0 + step], -1, 0)
        if bias is None:
            xp.copyto(dst[:, c0:c0 + step], block)
        else:
            b = bias[c0:c0 + step].reshape((-1,) + spatial_ones)
            xp.add(block, b, out=dst[:, c0:c0 + step])
