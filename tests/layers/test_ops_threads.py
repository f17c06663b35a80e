"""InnerProduct and LRN on several of the ops' threads: the same values as
one thread (to float rounding), checked against products written here."""
import numpy
import pytest

from pycaffe_dist.ops import inner_product, threads
from tests.layers.test_common import blob_of, make_layer, tops


def inner_product_iteration(transpose, x, dy, monkeypatch, count):
    monkeypatch.setattr(threads, "count", lambda xp=None, count=count: count)
    layer = make_layer('name: "ip" type: "InnerProduct" inner_product_param { num_output: 7 transpose: %s '
                       'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }'
                       % ("true" if transpose else "false"))
    from pycaffe_dist import backend
    backend.set_random_seed(3)
    bottom, top = [blob_of(x)], tops()
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    top[0].diff[...] = dy
    layer.backward(top, [True], bottom)
    layer.backward(top, [True], bottom)          # the weight gradient accumulates
    return layer, top[0].data.copy(), bottom[0].diff.copy(), layer.blobs[0].diff.copy()


@pytest.mark.parametrize("transpose", [False, True])
def test_inner_product_on_several_threads_matches_the_products(transpose, monkeypatch):
    monkeypatch.setattr(inner_product, "SPLIT_FLOPS", 0)           # split even tiny products
    monkeypatch.setattr(inner_product, "BLOCK_BYTES", 3 * 8 * 5)   # weight-gradient blocks of a few rows
    rng = numpy.random.default_rng(4)
    x = rng.standard_normal((6, 2, 5))                              # K = 10
    dy = rng.standard_normal((6, 7))
    results = {}
    for count in (1, 2, 3, 2):
        layer, y, dx, dw = inner_product_iteration(transpose, x, dy, monkeypatch, count)
        if count in results:                                        # same split, same bits
            for a, b in zip(results[count], (y, dx, dw)):
                numpy.testing.assert_array_equal(a, b)
        results[count] = (y, dx, dw)
    w = layer.blobs[0].data
    wn = w.T if transpose else w                                    # (N, K)
    flat = x.reshape(6, 10)
    expected = (flat @ wn.T + layer.blobs[1].data, (dy @ wn).reshape(x.shape), 2 * (dy.T @ flat))
    for count, got in results.items():
        dw = got[2].T if transpose else got[2]
        for a, b in zip(expected, got[:2] + (dw,)):
            numpy.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12, err_msg=f"{count} threads")


def lrn_reference(x, size, alpha, beta, k, across):
    """Caffe's LRN written out: a sum over the window of squares, zero padded."""
    pre = (size - 1) // 2
    n, c, h, w = x.shape
    if across:
        padded = numpy.zeros((n, c + size - 1, h, w))
        padded[:, pre:pre + c] = x * x
        window = sum(padded[:, t:t + c] for t in range(size))
        return x * (k + alpha / size * window) ** -beta
    padded = numpy.zeros((n, c, h + size - 1, w + size - 1))
    padded[:, :, pre:pre + h, pre:pre + w] = x * x
    window = sum(padded[:, :, i:i + h, j:j + w] for i in range(size) for j in range(size))
    return x * (1 + alpha / size ** 2 * window) ** -beta


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_lrn_on_several_threads_matches_one(region, monkeypatch):
    from pycaffe_dist.ops import lrn
    monkeypatch.setattr(lrn, "SPLIT_ELEMENTS", 0)
    rng = numpy.random.default_rng(5)
    x = rng.standard_normal((5, 6, 4, 3))
    dy = rng.standard_normal(x.shape)
    results = []
    # one run per thread, then runs cut into chunks of one and of two images (lrn.CHUNK_BYTES)
    for count, chunk in [(1, 1 << 40), (2, 1 << 40), (3, 1 << 40), (1, 1), (2, 2 * x[0].nbytes)]:
        monkeypatch.setattr(threads, "count", lambda xp=None, count=count: count)
        monkeypatch.setattr(lrn, "CHUNK_BYTES", chunk)
        layer = make_layer('name: "n" type: "LRN" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 '
                           'norm_region: %s }' % region)
        bottom, top = [blob_of(x)], tops()
        layer.setup(bottom, top)
        layer.reshape(bottom, top)
        layer.forward(bottom, top)
        top[0].diff[...] = dy
        layer.backward(top, [True], bottom)
        results.append((top[0].data.copy(), bottom[0].diff.copy()))
    numpy.testing.assert_allclose(results[0][0], lrn_reference(x, 3, 0.5, 0.75, 2.0, region == "ACROSS_CHANNELS"),
                                  rtol=1e-12)
    # the gradient of sum(y * dy), numerically, at a few points
    for index in [(0, 0, 0, 0), (2, 3, 1, 2), (4, 5, 3, 0)]:
        step = numpy.zeros_like(x)
        step[index] = 1e-6
        up = lrn_reference(x + step, 3, 0.5, 0.75, 2.0, region == "ACROSS_CHANNELS")
        down = lrn_reference(x - step, 3, 0.5, 0.75, 2.0, region == "ACROSS_CHANNELS")
        assert abs(((up - down) * dy).sum() / 2e-6 - results[0][1][index]) < 1e-6
    for got in results[1:]:         # every step is elementwise within an image: the same bits at any cut
        for a, b in zip(results[0], got):
            numpy.testing.assert_array_equal(a, b)


@pytest.mark.filterwarnings("ignore:invalid value encountered")
@pytest.mark.parametrize("slope", [0.0, 0.25])
@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("whole", [100, 1000])      # blocks of 70, or one block per lane
def test_relu_in_blocks_on_several_threads_equals_the_formula(slope, in_place, whole, monkeypatch):
    """ReLU's passes in blocks (a short last one) over 1-3 lanes, at once
    and in turn: the bits of the formula on whole arrays, whatever the cut."""
    monkeypatch.setattr(threads, "ELEMENTWISE_BLOCK", 70)
    monkeypatch.setattr(threads, "ELEMENTWISE_WHOLE", whole)
    monkeypatch.setattr(threads, "ELEMENTWISE_LANES", 100)
    rng = numpy.random.default_rng(5)
    x = rng.standard_normal((3, 4, 5, 6)).astype(numpy.float32)      # 360 elements: 6 blocks
    x[0, 0, 0, :3] = (0.0, -0.0, numpy.nan)
    dy = rng.standard_normal(x.shape).astype(numpy.float32)
    dy[0, 0, 1, :2] = (numpy.inf, -numpy.inf)
    s = numpy.float32(slope)
    slopes = (x > 0) * numpy.float32(1 - slope) + s
    expected_y = numpy.maximum(x, 0) if slope == 0 else x * slopes
    expected_dx = dy * (x > 0) if slope == 0 else dy * slopes
    param = 'name: "relu" type: "ReLU" relu_param { negative_slope: %g }' % slope
    for count, at_once in ((1, True), (2, True), (2, False), (3, True), (2, True)):
        monkeypatch.setattr(threads, "count", lambda xp=None, count=count: count)
        monkeypatch.setattr(threads.Choice, "parallel", lambda self, lanes, at_once=at_once: at_once)
        monkeypatch.setattr(threads.Choice, "record", lambda self, way, seconds: None)
        layer = make_layer(param)
        bottom = [blob_of(x)]
        top = bottom if in_place else tops()
        layer.setup(bottom, top)
        layer.reshape(bottom, top)
        layer.forward(bottom, top)
        numpy.testing.assert_array_equal(top[0].data, expected_y, err_msg=f"{count} threads")
        top[0].diff[...] = dy
        layer.backward(top, [True], bottom)
        numpy.testing.assert_array_equal(bottom[0].diff, expected_dx, err_msg=f"{count} threads")
