"""Crop: Caffe's axis and offset rules, the gradient, and the errors."""
import numpy
import pytest

from pycaffe_dist.blob import Blob
from pycaffe_dist.gradient_check import check_gradient
from pycaffe_dist.layers import LayerError
from tests.layers.test_vision import F64, blob, make_layer, run


def crop(fields=""):
    return make_layer('name: "crop" type: "Crop" crop_param { %s }' % fields)


@pytest.mark.parametrize("fields, window", [
    ("", (slice(None), slice(None), slice(0, 3), slice(0, 2))),                      # axis 2, offset 0
    ("offset: 1", (slice(None), slice(None), slice(1, 4), slice(1, 3))),             # one offset for all
    ("offset: 2 offset: 3", (slice(None), slice(None), slice(2, 5), slice(3, 5))),   # one per axis
    ("axis: 1 offset: 1 offset: 0 offset: 2", (slice(None), slice(1, 3), slice(0, 3), slice(2, 4))),
    ("axis: -1 offset: 4", (slice(None), slice(None), slice(None), slice(4, 6))),
    ("axis: 0 offset: 0 offset: 1 offset: 1 offset: 1", (slice(0, 1), slice(1, 3), slice(1, 4), slice(1, 3))),
])
def test_crop_takes_the_reference_size_from_the_offsets(fields, window):
    rng = numpy.random.default_rng(30)
    x = rng.standard_normal((2, 4, 6, 7))
    reference = numpy.zeros((1, 2, 3, 2))
    _, (top,) = run(crop(fields), x, reference)
    expected = x[window]
    assert top.shape == expected.shape
    numpy.testing.assert_array_equal(top.data, expected)


def test_crop_gradient_goes_to_the_window_only():
    rng = numpy.random.default_rng(31)
    layer = crop("offset: 1 offset: 2")
    bottom = [blob(rng.standard_normal((2, 3, 5, 6))), blob(numpy.zeros((2, 3, 2, 3)))]
    check_gradient(layer, bottom, [Blob((), dtype=F64)], check_bottom=[0])
    top = [Blob((), dtype=F64)]
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    top[0].diff[...] = 1
    bottom[0].diff[...] = 5
    layer.backward(top, [True, False], bottom)
    expected = numpy.zeros((2, 3, 5, 6))
    expected[:, :, 1:3, 2:5] = 1
    numpy.testing.assert_array_equal(bottom[0].diff, expected)
    assert not layer.allow_force_backward(1)


@pytest.mark.parametrize("fields, reference, message", [
    ("offset: 1 offset: 2 offset: 3", (1, 1, 2, 2), "3 offsets for 2 cropped axes"),
    ("offset: 4", (1, 1, 2, 2), "axis 2: offset 4"),
    ("", (1, 1, 6, 2), "runs past"),
    ("axis: 4", (1, 1, 2, 2), "out of range"),
    ("", (1, 1, 2), "same number of axes"),
])
def test_crop_errors_name_the_problem(fields, reference, message):
    layer = crop(fields)
    with pytest.raises(LayerError, match=message) as info:
        run(layer, numpy.zeros((1, 1, 5, 5)), numpy.zeros(reference))
    assert "'crop'" in str(info.value)
