"""ops.MaxPooling against Caffe's loops written out here in float64: the
output, the argmax mask and the gradient, with ties (values from a set of
three), padding, windows clipped by the round-up output size, windows that
hold no input at all, and offsets too large for int8; the backward pass adds
in Caffe's order (outputs in row-major order), so float32 gradients match
the loop to the bit."""
import itertools

import numpy
import pytest

from pycaffe_dist import ops
from pycaffe_dist.ops import average_pooling, pooling, threads
from pycaffe_dist.blob import Blob
from pycaffe_dist.gradient_check import check_gradient
from tests.layers.test_vision import F64, blob, caffe_pooled_size, distinct, make_layer, naive_pool

CASES = [
    # (shape, kernel, stride, pad)
    ((2, 3, 9, 9), (3, 3), (2, 2), (0, 0)),         # cifar10_quick's pool1, round-up: last window clipped
    ((1, 4, 8, 11), (3, 3), (2, 2), (1, 1)),
    ((2, 2, 7, 6), (2, 3), (3, 1), (1, 2)),
    ((1, 3, 10, 9), (1, 2), (4, 3), (0, 0)),        # the last window holds no input (starts past it)
    ((1, 2, 6, 6), (2, 2), (2, 2), (0, 0)),         # split-free (direct) geometry
    ((1, 2, 24, 40), (7, 7), (1, 1), (3, 3)),       # window offsets up to 6 * 46 + 6: int16
    ((2, 2, 5, 5), (5, 5), (5, 5), (2, 2)),
]


def caffe_max_pool(x, kernel, stride, pad):
    """Caffe's MaxPoolingLayer loops: y, the mask (h * W + w of the first
    maximum, -1 for a window without input) and a function giving dx for a
    dy, adding in the loop's order."""
    n, c, h, w = x.shape
    oh, ow = (caffe_pooled_size(s, k, st, p) for s, k, st, p in zip((h, w), kernel, stride, pad))
    y = numpy.full((n, c, oh, ow), -numpy.inf)
    mask = numpy.full((n, c, oh, ow), -1, numpy.int64)
    for b, ch, i, j in itertools.product(range(n), range(c), range(oh), range(ow)):
        hs, ws = i * stride[0] - pad[0], j * stride[1] - pad[1]
        for r in range(max(hs, 0), min(hs + kernel[0], h)):
            for s in range(max(ws, 0), min(ws + kernel[1], w)):
                if x[b, ch, r, s] > y[b, ch, i, j]:
                    y[b, ch, i, j], mask[b, ch, i, j] = x[b, ch, r, s], r * w + s

    def gradient(dy):
        dx = numpy.zeros(x.shape, dy.dtype)
        for b, ch, i, j in itertools.product(range(n), range(c), range(oh), range(ow)):
            if mask[b, ch, i, j] >= 0:
                dx[b, ch].reshape(-1)[mask[b, ch, i, j]] += dy[b, ch, i, j]
        return dx
    return y, mask, gradient


def pool_op(shape, kernel, stride, pad):
    h, w = shape[2:]
    out = tuple(ops.pooled_size(s, k, st, p) for s, k, st, p in zip((h, w), kernel, stride, pad))
    return ops.MaxPooling(ops.PoolGeometry(kernel, stride, pad, (h, w), out)), shape[:2] + out


@pytest.fixture(params=["one block", "one plane per block", "a shorter last block"])
def blocks(request, monkeypatch):
    """Sets the planes per block for an op's geometry, planes and dtype."""
    def set_blocks(geometry, planes, dtype):
        per_block = {"one block": planes, "one plane per block": 1}.get(request.param, planes // 2 + 1)
        monkeypatch.setattr(pooling, "PLANE_BLOCK_BYTES",
                            per_block * geometry.plane_size * geometry.stride[1] * numpy.dtype(dtype).itemsize)
    return set_blocks


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("shape, kernel, stride, pad", CASES)
def test_max_pooling_matches_caffe_loops_with_ties(shape, kernel, stride, pad, dtype, blocks):
    rng = numpy.random.default_rng(3)
    x = rng.integers(0, 3, shape).astype(dtype)         # ties in nearly every window
    op, out_shape = pool_op(shape, kernel, stride, pad)
    blocks(op.geometry, shape[0] * shape[1], dtype)
    y, mask, gradient = caffe_max_pool(x.astype(F64), kernel, stride, pad)
    got = numpy.empty(out_shape, dtype)
    for _ in range(2):                                  # the second time with the buffers of the first
        op.forward(x, got)
        numpy.testing.assert_array_equal(got[mask >= 0], y[mask >= 0])
        assert (got[mask < 0] == 0).all()        # a window past the input: 0 (Caffe: -FLT_MAX)
        got_mask = numpy.empty(out_shape)
        op.mask(got_mask)
        numpy.testing.assert_array_equal(got_mask, mask)
        dy = rng.standard_normal(out_shape).astype(dtype)
        dx = numpy.full(shape, numpy.nan, dtype)
        op.backward(dy, dx)
        numpy.testing.assert_array_equal(dx, gradient(dy))   # same sums in the same order


def test_a_window_of_negative_infinities_sends_its_gradient_nowhere_else():
    """With padding, a window whose inputs are all -inf keeps its first
    (padded) position: its gradient is dropped, as the old code did; Caffe
    has mask -1 there."""
    x = numpy.ones((1, 1, 5, 5))
    x[0, 0, :2, :2] = -numpy.inf
    op, out_shape = pool_op(x.shape, (3, 3), (2, 2), (1, 1))
    y = numpy.empty(out_shape)
    op.forward(x, y)
    assert y[0, 0, 0, 0] == -numpy.inf
    dx = numpy.empty_like(x)
    op.backward(numpy.ones(out_shape), dx)
    _, mask, gradient = caffe_max_pool(x, (3, 3), (2, 2), (1, 1))
    assert mask[0, 0, 0, 0] == -1
    numpy.testing.assert_array_equal(dx, gradient(numpy.ones(out_shape)))


@pytest.mark.parametrize("shape, kernel, stride, pad", [CASES[3], CASES[5]])
def test_max_pooling_gradients_of_the_new_edge_cases(shape, kernel, stride, pad):
    fields = "kernel_h: %d kernel_w: %d stride_h: %d stride_w: %d pad_h: %d pad_w: %d" % (kernel + stride + pad)
    layer = make_layer('name: "p" type: "Pooling" pooling_param { pool: MAX %s }' % fields)
    rng = numpy.random.default_rng(9)
    check_gradient(layer, [blob(distinct(rng, shape))], [Blob((), dtype=F64)], max_points=60)


@pytest.mark.parametrize("gemm", [False, True])
@pytest.mark.parametrize("shape, kernel, stride, pad", CASES)
def test_average_pooling_in_two_stages_matches_caffe_loops(shape, kernel, stride, pad, blocks, gemm):
    """The phase layout max pooling shares, through AVE's two stages (and the
    GEMM form). A window that starts past the input averages to 0 where
    Caffe's loop divides an empty sum by 0 (NaN) or by a negative size."""
    rng = numpy.random.default_rng(4)
    x = rng.standard_normal(shape)
    h, w = shape[2:]
    out = tuple(ops.pooled_size(s, k, st, p) for s, k, st, p in zip((h, w), kernel, stride, pad))
    op = average_pooling.AveragePooling(ops.PoolGeometry(kernel, stride, pad, (h, w), out))
    op.use_gemm = gemm
    blocks(op.geometry, shape[0] * shape[1], x.dtype)
    y = numpy.empty(shape[:2] + out)
    for _ in range(2):
        op.forward(x, y)
        with numpy.errstate(invalid="ignore"):
            expected = naive_pool(x, "AVE", kernel, stride, pad)[0]
        if shape == CASES[3][0]:
            assert numpy.isnan(expected[..., -1]).all() and (y[..., -1] == 0).all()   # 0 / 0 in Caffe
            assert (y[..., -1, :] == 0).all()                                      # 0 / -2 in Caffe
        numpy.testing.assert_allclose(y, numpy.nan_to_num(expected, nan=0.0), rtol=1e-12, atol=1e-12)
        x = rng.standard_normal(shape)


@pytest.mark.parametrize("pad", [(1, 1), (0, 0)])     # gradient planes of their own, dx's planes
def test_backward_goes_by_the_blocks_of_the_forward(pad, monkeypatch):
    """Lanes at once take bigger blocks; a backward run in turn must still
    read the argmax indices by the forward's blocks (walking each in runs
    of one-thread size: 4, 4, 4 planes, then 3)."""
    shape, kernel, stride = (3, 5, 9, 11), (3, 3), (2, 2)
    rng = numpy.random.default_rng(11)
    x = rng.integers(0, 4, shape).astype(numpy.float32)
    op, out_shape = pool_op(shape, kernel, stride, pad)
    monkeypatch.setattr(pooling, "PLANE_BLOCK_BYTES", op.geometry.plane_size * op.geometry.stride[1] * 4)
    monkeypatch.setattr(pooling, "LANE_BLOCK_SCALE", 3)
    monkeypatch.setattr(threads, "MEASURED", False)
    monkeypatch.setattr(threads, "count", lambda xp=None: 2)
    op.forward(x, numpy.empty(out_shape, numpy.float32))      # 2 lanes, blocks of 3 planes
    monkeypatch.setattr(pooling, "THREADED", False)           # in turn: blocks of 1 plane, were it not for the forward
    dy = rng.standard_normal(out_shape).astype(numpy.float32)
    dx = numpy.empty(shape, numpy.float32)
    op.backward(dy, dx)
    numpy.testing.assert_array_equal(dx, caffe_max_pool(x.astype(F64), kernel, stride, pad)[2](dy))


def caffe_ave_pool_backward(dy, shape, kernel, stride, pad):
    """Caffe's AVE backward loop: each window spreads dy / pool size over its input."""
    dx = numpy.zeros(shape)
    (h, w), (kh, kw), (sh, sw), (ph, pw) = shape[2:], kernel, stride, pad
    for i, j in itertools.product(range(dy.shape[2]), range(dy.shape[3])):
        h0, w0 = i * sh - ph, j * sw - pw
        h1, w1 = min(h0 + kh, h + ph), min(w0 + kw, w + pw)
        size = (h1 - h0) * (w1 - w0)
        h0, w0, h1, w1 = max(h0, 0), max(w0, 0), min(h1, h), min(w1, w)
        dx[:, :, h0:h1, w0:w1] += (dy[:, :, i, j] / size)[:, :, None, None]
    return dx


def test_average_pooling_gemm_split_over_threads_matches_caffe_loops(monkeypatch):
    """The GEMM form's rows cut over 1-3 lanes: Caffe's values, and the same
    bits again for the same thread count."""
    monkeypatch.setattr(average_pooling, "GEMM_SPLIT_FLOPS", 0)
    shape, kernel, stride, pad = (2, 5, 6, 7), (3, 3), (2, 2), (1, 1)
    rng = numpy.random.default_rng(12)
    x = rng.standard_normal(shape)
    out = tuple(ops.pooled_size(s, k, st, p) for s, k, st, p in zip(shape[2:], kernel, stride, pad))
    dy = rng.standard_normal(shape[:2] + out)
    expected = (naive_pool(x, "AVE", kernel, stride, pad)[0], caffe_ave_pool_backward(dy, shape, kernel, stride, pad))
    results = {}
    for count in (1, 2, 3, 2):
        monkeypatch.setattr(threads, "count", lambda xp=None, count=count: count)
        op = average_pooling.AveragePooling(ops.PoolGeometry(kernel, stride, pad, shape[2:], out))
        assert op.use_gemm
        y, dx = numpy.empty(shape[:2] + out), numpy.empty(shape)
        op.forward(x, y)
        op.backward(dy, dx)
        for got, want in zip((y, dx), expected):
            numpy.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=f"{count} threads")
        if count in results:
            for a, b in zip(results[count], (y, dx)):
                numpy.testing.assert_array_equal(a, b)
        results[count] = (y, dx)
