"""GEMMs cut into products small enough for OpenBLAS's unpacked kernels.

OpenBLAS (0.3.16 on, SkylakeX and later kernels, as numpy's wheels ship
it) multiplies a product of at most SMALL_MNK = M*N*K multiply-adds with
kernels that read the operands where they are, without packing them into
blocks first. The convolutions' products are skinny (32-64 output channels
against 800-deep columns), and packing is most of their cost: measured on
a 2-core Xeon at one thread, (256, 800) @ (800, 32) runs at ~66 GFLOP/s and
the same rows as eight (32, 800) @ (800, 32) products at ~115. So a
product whose output rows (or columns) can be cut is cut into a batch of
blocks under the limit, one numpy matmul over the batch; the blocks are
views, nothing is copied, and each output element is still one dot
product over the whole K in the same order as before the cut.

Off numpy (CuPy) and where a block would be thinner than MIN_BLOCK the
product runs whole.
"""
import numpy

from .. import backend

SMALL_MNK = 100 ** 3      # OpenBLAS's limit for its small-matrix kernels
STEP = 16                 # blocks are multiples of this (AVX-512: 16 floats)
# Thinner blocks lose to the packed product: measured at one thread,
# 16-row blocks of (320, 800) @ (800, 64) ran at 93 GFLOP/s against 100
# whole, of (3025, 363) @ (363, 96) at 82 against 103; 32-row blocks of
# (256, 800) @ (800, 32) at 112 against 89.
MIN_BLOCK = 32
ENABLED = True


def block_rows(rows, k, n):
    """Rows per block for (rows, k) @ (k, n), or 0 to run it whole: a
    multiple of STEP under the limit and at least MIN_BLOCK, one that
    divides `rows` where there is one (a remainder costs one more call)."""
    if not ENABLED:
        return 0
    limit = SMALL_MNK // max(1, k * n) // STEP * STEP
    if limit < MIN_BLOCK or rows * k * n <= SMALL_MNK:
        return 0
    for size in range(limit, MIN_BLOCK - 1, -STEP):
        if rows % size == 0:
            return size
    return limit


def matmul(a, b, out):
    """out = a @ b (stacks broadcast as numpy's matmul does), cut along
    out's rows, or along its columns when those are the long axis, into
    products of at most SMALL_MNK multiply-adds on numpy."""
    xp = backend.get_array_module(a)
    if xp is not numpy:
        return xp.matmul(a, b, out=out)
    if b.shape[-1] > a.shape[-2]:    # cut the columns: out^T = b^T @ a^T
        _rows(b.swapaxes(-1, -2), a.swapaxes(-1, -2), out.swapaxes(-1, -2))
    else:
        _rows(a, b, out)
    return out


def _split(x, blocks, size):
    """x (..., blocks * size, k) as (..., blocks, size, k), a view."""
    return x.reshape(x.shape[:-2] + (blocks, size, x.shape[-1]), copy=False)


def _rows(a, b, out):
    rows, k = a.shape[-2:]
    size = block_rows(rows, k, b.shape[-1])
    if not size:
        numpy.matmul(a, b, out=out)
        return
    blocks = rows // size
    full = blocks * size
    if full < rows:
        numpy.matmul(a[..., full:, :], b, out=out[..., full:, :])
        a, out = a[..., :full, :], out[..., :full, :]
    numpy.matmul(_split(a, blocks, size), b[..., None, :, :], out=_split(out, blocks, size))
