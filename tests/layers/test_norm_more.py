"""MVN: forward against a loop over items and channels, gradients, in place, numpy vs cupy."""
import numpy
import pytest

from pycaffe_dist.blob import Blob
from pycaffe_dist.gradient_check import check_gradient
from tests.layers.test_common import (assert_same_on_both_backends, blob_of, forward, make_layer,
                                      needs_gpu, random_input)

MVN = 'name: "mvn" type: "MVN" mvn_param { %s }'
CONFIGS = ["", "normalize_variance: false", "across_channels: true",
           "across_channels: true normalize_variance: false", "eps: 0.001"]


def reference(x, normalize_variance=True, across_channels=False, eps=1e-9):
    """Per item (and per channel unless across_channels), by loops."""
    y = numpy.empty_like(x)
    groups = [(n,) for n in range(x.shape[0])] if across_channels else \
        [(n, c) for n in range(x.shape[0]) for c in range(x.shape[1])]
    for g in groups:
        values = x[g]
        centred = values - values.mean()
        if normalize_variance:
            centred = centred / (numpy.sqrt((centred ** 2).mean()) + eps)
        y[g] = centred
    return y


@pytest.mark.parametrize("params", CONFIGS)
def test_forward_matches_reference(params):
    x = random_input((2, 3, 4, 5)) * 3 + 1
    (y,) = forward(make_layer(MVN % params), [blob_of(x)], [Blob((), dtype=numpy.float64)])
    kwargs = {"normalize_variance": "normalize_variance: false" not in params,
              "across_channels": "across_channels: true" in params,
              "eps": float(numpy.float32(0.001)) if "eps" in params else float(numpy.float32(1e-9))}
    numpy.testing.assert_allclose(y, reference(x, **kwargs), rtol=1e-12, atol=1e-12)
    # Caffe's own check: zero mean and unit variance per group
    groups = y.reshape(2, -1) if kwargs["across_channels"] else y.reshape(6, -1)
    numpy.testing.assert_allclose(groups.mean(axis=1), 0, atol=1e-12)
    if kwargs["normalize_variance"] and "eps" not in params:
        numpy.testing.assert_allclose(groups.var(axis=1), 1, rtol=1e-7)


@pytest.mark.parametrize("params", CONFIGS[:4])
def test_gradient(params):
    x = random_input((2, 3, 2, 3), seed=1)
    check_gradient(make_layer(MVN % params), [blob_of(x)], [Blob((), dtype=numpy.float64)])


def test_two_axis_bottom_normalizes_each_item_across_its_values():
    x = random_input((3, 5))
    (y,) = forward(make_layer(MVN % "across_channels: true"), [blob_of(x)],
                   [Blob((), dtype=numpy.float64)])
    numpy.testing.assert_allclose(y, reference(x, across_channels=True), rtol=1e-12)


@pytest.mark.parametrize("params", CONFIGS[:3])
def test_in_place_equals_separate_top(params):
    x, dy = random_input((2, 3, 4)), random_input((2, 3, 4), seed=2)
    results = []
    for in_place in (False, True):
        layer, bottom = make_layer(MVN % params), blob_of(x)
        top = bottom if in_place else Blob((), dtype=numpy.float64)
        (y,) = forward(layer, [bottom], [top])
        top.diff[...] = dy
        layer.backward([top], [True], [bottom])
        results.append((y, bottom.diff.copy()))
    numpy.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-14)
    numpy.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-12)


@needs_gpu
@pytest.mark.parametrize("params", CONFIGS[:3])
def test_numpy_and_cupy_agree(params):
    assert_same_on_both_backends(MVN % params, [random_input((2, 3, 4, 5))])
