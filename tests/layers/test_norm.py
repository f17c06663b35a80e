"""BatchNorm: batch statistics, running averages, global statistics, gradients, in place."""
import numpy
import pytest

from pycaffe_dist.blob import Blob
from pycaffe_dist.gradient_check import check_gradient
from pycaffe_dist.layers import LayerError
from tests.layers.test_common import (assert_same_on_both_backends, blob_of, forward,
                                      make_layer, needs_gpu, random_input)

TRAIN, TEST = 0, 1
BN = 'name: "bn" type: "BatchNorm" batch_norm_param { %s }'


def reference_normalize(x, mean, variance, eps=1e-5):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x - mean.reshape(shape)) / numpy.sqrt(variance.reshape(shape) + eps)


def test_train_forward_uses_batch_statistics():
    x = random_input((4, 3, 2, 2)) * 3 + 1
    (y,) = forward(make_layer(BN % ""), [blob_of(x)], [Blob((), dtype=numpy.float64)])
    per_channel = x.transpose(1, 0, 2, 3).reshape(3, -1)
    mean, variance = per_channel.mean(axis=1), per_channel.var(axis=1)
    numpy.testing.assert_allclose(y, reference_normalize(x, mean, variance), rtol=1e-10)


def test_running_statistics_accumulate_and_serve_test_phase():
    layer = make_layer(BN % "moving_average_fraction: 0.5")
    batches = [random_input((2, 3, 2), seed=k) + k for k in range(2)]
    bottom, top = [blob_of(batches[0])], [Blob((), dtype=numpy.float64)]
    forward(layer, bottom, top)
    bottom[0].data[...] = batches[1]
    layer.forward(bottom, top)
    stats = [b.transpose(1, 0, 2).reshape(3, -1) for b in batches]
    m = stats[0].shape[1]
    mean_sum = 0.5 * stats[0].mean(axis=1) + stats[1].mean(axis=1)
    var_sum = m / (m - 1) * (0.5 * stats[0].var(axis=1) + stats[1].var(axis=1))
    numpy.testing.assert_allclose(layer.blobs[0].data, mean_sum, rtol=1e-12)
    numpy.testing.assert_allclose(layer.blobs[1].data, var_sum, rtol=1e-12)
    numpy.testing.assert_allclose(layer.blobs[2].data, [1.5])

    test_layer = make_layer(BN % "", phase=TEST)
    x = random_input((2, 3, 2), seed=9)
    test_bottom = [blob_of(x)]
    test_layer.setup(test_bottom, [Blob((), dtype=numpy.float64)])
    for mine, trained in zip(test_layer.blobs, layer.blobs):
        mine.data[...] = trained.data
    test_top = [Blob((), dtype=numpy.float64)]
    test_layer.reshape(test_bottom, test_top)
    test_layer.forward(test_bottom, test_top)
    expected = reference_normalize(x, mean_sum / 1.5, var_sum / 1.5)
    numpy.testing.assert_allclose(test_top[0].data, expected, rtol=1e-12)


def test_statistics_are_not_learned():
    layer = make_layer(BN % "")
    forward(layer, [blob_of(random_input((2, 3)))], [Blob((), dtype=numpy.float64)])
    assert [spec.lr_mult for spec in layer.param.param] == [0, 0, 0]
    with pytest.raises(LayerError, match="lr_mult"):
        make_layer('name: "bn" type: "BatchNorm" param { lr_mult: 1 }').setup(
            [blob_of(random_input((2, 3)))], [Blob((), dtype=numpy.float64)])


@pytest.mark.parametrize("params", ["", "use_global_stats: true"])
def test_gradient(params):
    layer = make_layer(BN % params)
    bottom = [blob_of(random_input((3, 2, 2)))]
    if "global" in params:
        layer.setup(bottom, [Blob((), dtype=numpy.float64)])
        layer.blobs[0].data[...] = [0.5, -1.0]
        layer.blobs[1].data[...] = [2.0, 0.5]
        layer.blobs[2].data[...] = 1.0
        check_gradient(layer, bottom, [Blob((), dtype=numpy.float64)], setup=False,
                       check_params=False)
    else:  # the statistics blobs carry no gradient
        check_gradient(layer, bottom, [Blob((), dtype=numpy.float64)], check_params=False)


def test_in_place_equals_separate_top():
    x, dy = random_input((4, 3, 2)), random_input((4, 3, 2), seed=1)
    results = []
    for in_place in (False, True):
        layer, bottom = make_layer(BN % ""), blob_of(x)
        top = bottom if in_place else Blob(x.shape, dtype=numpy.float64)
        forward(layer, [bottom], [top])
        top.diff[...] = dy
        layer.backward([top], [True], [bottom])
        results.append((top.data.copy(), bottom.diff.copy()))
    for separate, inplace in zip(*results):
        numpy.testing.assert_allclose(inplace, separate, rtol=1e-12)


@needs_gpu
@pytest.mark.parametrize("phase", [TRAIN, TEST])
def test_numpy_and_cupy_agree(phase):
    assert_same_on_both_backends(BN % "", [random_input((4, 3, 2))], phase=phase)
