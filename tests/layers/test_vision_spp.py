"""STOCHASTIC pooling and SPP: Caffe's loops written here as references,
sampling statistics, gradient routing, numeric gradients and errors."""
import itertools
import math

import numpy
import pytest

from pycaffe_dist import backend
from pycaffe_dist.blob import Blob
from pycaffe_dist.gradient_check import check_gradient
from pycaffe_dist.layers import LayerError
from pycaffe_dist.proto import caffe_pb2
from tests.layers.test_common import assert_same_on_both_backends, needs_gpu
from tests.layers.test_vision import F64, blob, caffe_pooled_size, distinct, make_layer, naive_pool, run


def windows_of(x, kernel, stride):
    """Caffe's stochastic-pooling windows (no padding, clipped at the far
    edges): per output position, the (row, column) list in loop order."""
    h, w = x.shape[2:]
    oh, ow = (caffe_pooled_size(s, k, st, 0) for s, k, st in zip((h, w), kernel, stride))
    for i, j in itertools.product(range(oh), range(ow)):
        rows = range(i * stride[0], min(i * stride[0] + kernel[0], h))
        cols = range(j * stride[1], min(j * stride[1] + kernel[1], w))
        yield (i, j), list(itertools.product(rows, cols))


def naive_stochastic_train(x, kernel, stride, uniform):
    """StoPoolForwardTrain: threshold u * sum, the first running sum that reaches it."""
    n, c = x.shape[:2]
    oh, ow = uniform.shape[2:]
    y, picked = numpy.zeros((n, c, oh, ow)), numpy.zeros((n, c, oh, ow, 2), int)
    for a, b in itertools.product(range(n), range(c)):
        for (i, j), cells in windows_of(x, kernel, stride):
            values = [x[a, b, r, s] for r, s in cells]
            threshold = uniform[a, b, i, j] * sum(values)
            running = 0.0
            for (r, s), v in zip(cells, values):
                running += v
                if running >= threshold:
                    y[a, b, i, j], picked[a, b, i, j] = v, (r, s)
                    break
    return y, picked


def naive_stochastic_test(x, kernel, stride):
    n, c = x.shape[:2]
    cells_per_window = list(windows_of(x, kernel, stride))
    oh, ow = cells_per_window[-1][0][0] + 1, cells_per_window[-1][0][1] + 1
    y = numpy.zeros((n, c, oh, ow))
    for (i, j), cells in cells_per_window:
        values = numpy.stack([x[:, :, r, s] for r, s in cells])
        total = values.sum(axis=0)
        y[:, :, i, j] = numpy.where(total > 0, (values ** 2).sum(axis=0) / numpy.where(total > 0, total, 1), 0)
    return y


def stochastic(fields, phase=caffe_pb2.TRAIN):
    return make_layer('name: "s" type: "Pooling" pooling_param { pool: STOCHASTIC %s }' % fields, phase)


STOCHASTIC_CASES = [
    ((2, 3, 7, 7), "kernel_size: 3 stride: 2", (3, 3), (2, 2)),      # overlapping, last window clipped
    ((1, 2, 6, 8), "kernel_size: 2 stride: 2", (2, 2), (2, 2)),
    ((2, 1, 5, 7), "kernel_h: 3 kernel_w: 2 stride_h: 1 stride_w: 3", (3, 2), (1, 3)),
]


@pytest.mark.parametrize("shape, fields, kernel, stride", STOCHASTIC_CASES)
def test_stochastic_pooling_train_samples_as_caffe_and_routes_the_gradient(shape, fields, kernel, stride):
    rng = numpy.random.default_rng(40)
    x = rng.random(shape)
    x[0, 0, :2, :2] = 0                       # an all-zero window takes its first element
    layer = stochastic(fields)
    bottom, top = [blob(x)], [Blob((), dtype=F64)]
    layer.setup(bottom, top)
    backend.set_random_seed(5)
    uniform = backend.rng.generator.random(top[0].shape, dtype=numpy.float32)
    backend.set_random_seed(5)
    layer.forward(bottom, top)
    y, picked = naive_stochastic_train(x, kernel, stride, uniform.astype(F64))
    numpy.testing.assert_array_equal(top[0].data, y)
    # Backward: each window's gradient lands on the element it sampled.
    dy = rng.standard_normal(y.shape)
    top[0].diff[...] = dy
    layer.backward(top, [True], bottom)
    expected = numpy.zeros(shape)
    for index in numpy.ndindex(*y.shape):
        r, s = picked[index]
        expected[index[0], index[1], r, s] += dy[index]
    numpy.testing.assert_allclose(bottom[0].diff, expected, rtol=1e-12, atol=1e-12)


def test_stochastic_pooling_samples_in_proportion_to_the_values():
    # 40000 copies of one 2x2 window with values 1, 2, 3, 4: each is taken
    # with probability value / 10.
    values = numpy.array([[1.0, 2.0], [3.0, 4.0]])
    x = numpy.broadcast_to(values, (200, 200, 2, 2)).copy()
    backend.set_random_seed(41)
    _, (top,) = run(stochastic("kernel_size: 2 stride: 2"), x)
    samples = top.data.ravel()
    for v in values.ravel():
        frequency = (samples == v).mean()
        p = v / values.sum()
        assert abs(frequency - p) < 5 * math.sqrt(p * (1 - p) / samples.size), (v, frequency, p)
    assert numpy.isin(samples, values).all()


@pytest.mark.parametrize("shape, fields, kernel, stride", STOCHASTIC_CASES)
def test_stochastic_pooling_test_phase_is_the_weighted_average(shape, fields, kernel, stride):
    rng = numpy.random.default_rng(42)
    x = rng.random(shape)
    x[0, 0, :3, :3] = 0                        # a zero sum gives 0, not a division by zero
    _, (top,) = run(stochastic(fields, caffe_pb2.TEST), x)
    numpy.testing.assert_allclose(top.data, naive_stochastic_test(x, kernel, stride), rtol=1e-12)
    layer = stochastic(fields, caffe_pb2.TEST)
    check_gradient(layer, [blob(rng.random(shape) + 0.1)], [Blob((), dtype=F64)], max_points=60)


def test_stochastic_pooling_refuses_padding():
    with pytest.raises(LayerError, match="STOCHASTIC"):
        run(stochastic("kernel_size: 3 stride: 2 pad: 1"), numpy.ones((1, 1, 5, 5)))


# -- SPP ----------------------------------------------------------------------------------
def naive_spp(x, height, method):
    """Caffe's SPP: level l pools with kernel ceil(H / 2^l), stride = kernel,
    pad (kernel * 2^l - H + 1) // 2; the levels flattened and concatenated."""
    n, c, h, w = x.shape
    parts = []
    for level in range(height):
        bins = 2 ** level
        kernel = (math.ceil(h / bins), math.ceil(w / bins))
        pad = ((kernel[0] * bins - h + 1) // 2, (kernel[1] * bins - w + 1) // 2)
        parts.append(naive_pool(x, method, kernel, kernel, pad)[0])
    if height == 1:
        return parts[0]
    return numpy.concatenate([p.reshape(n, -1) for p in parts], axis=1)


def spp(height, method, phase=caffe_pb2.TRAIN):
    return make_layer('name: "spp" type: "SPP" spp_param { pyramid_height: %d pool: %s }' % (height, method),
                      phase)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("height, shape", [(1, (2, 3, 5, 4)), (2, (2, 3, 6, 6)), (3, (2, 2, 13, 10)),
                                           (3, (1, 2, 8, 9))])
def test_spp_forward_matches_caffe(method, height, shape):
    rng = numpy.random.default_rng(43)
    x = distinct(rng, shape)
    _, (top,) = run(spp(height, method), x)
    expected = naive_spp(x, height, method)
    assert top.shape == expected.shape
    numpy.testing.assert_allclose(top.data, expected, rtol=1e-12, atol=1e-12)


def test_spp_output_sizes():
    # 13x13 conv5 of a 224 input with a 3-level pyramid: 1 + 4 + 16 bins per channel.
    _, (top,) = run(spp(3, "MAX"), numpy.zeros((2, 256, 13, 13)))
    assert top.shape == (2, 256 * 21)
    _, (top,) = run(spp(1, "AVE"), numpy.zeros((2, 4, 7, 5)))
    assert top.shape == (2, 4, 1, 1)


@pytest.mark.parametrize("method, phase", [("MAX", caffe_pb2.TRAIN), ("AVE", caffe_pb2.TRAIN),
                                           ("MAX", caffe_pb2.TEST)])
def test_spp_gradients(method, phase):
    rng = numpy.random.default_rng(44)
    check_gradient(spp(3, method, phase), [blob(distinct(rng, (2, 2, 9, 7)))], [Blob((), dtype=F64)],
                   max_points=80)


def test_spp_stochastic_test_phase_is_the_weighted_average():
    rng = numpy.random.default_rng(45)
    x = rng.random((2, 3, 8, 8))
    _, (top,) = run(spp(3, "STOCHASTIC", caffe_pb2.TEST), x)
    expected = [naive_stochastic_test(x, (8 // b, 8 // b), (8 // b, 8 // b)).reshape(2, -1) for b in (1, 2, 4)]
    numpy.testing.assert_allclose(top.data, numpy.concatenate(expected, axis=1), rtol=1e-12)


@pytest.mark.parametrize("text, shape, message", [
    ('spp_param { pyramid_height: 3 }', (1, 1, 3, 8), "too small for pyramid level 2"),
    ('spp_param { pyramid_height: 0 }', (1, 1, 8, 8), "pyramid_height"),
    ('spp_param { pyramid_height: 2 }', (1, 8, 8), "4 axes"),
])
def test_spp_errors_name_the_problem(text, shape, message):
    layer = make_layer('name: "spp" type: "SPP" %s' % text)
    with pytest.raises(LayerError, match=message) as info:
        run(layer, numpy.zeros(shape))
    assert "'spp'" in str(info.value)


@needs_gpu
@pytest.mark.parametrize("text, phase", [
    ('name: "s" type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 }', caffe_pb2.TRAIN),
    ('name: "s" type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 }', caffe_pb2.TEST),
    ('name: "spp" type: "SPP" spp_param { pyramid_height: 3 pool: MAX }', caffe_pb2.TRAIN),
])
def test_numpy_and_cupy_agree(text, phase):
    x = numpy.random.default_rng(46).random((2, 3, 9, 8))
    assert_same_on_both_backends(text, [x], phase=phase)
