"""Fillers: the statistics Caffe's filler tests check, computed from the formulas."""
import math

import numpy
import pytest
from google.protobuf import text_format

from pycaffe_dist import backend
from pycaffe_dist.filler import fill
from pycaffe_dist.proto import caffe_pb2


def filled(text, shape, seed=3):
    backend.set_random_seed(seed)
    param = text_format.Parse(text, caffe_pb2.FillerParameter())
    return fill(numpy.zeros(shape, numpy.float64), param)


def test_constant_default_is_zero_and_value_is_used():
    assert (filled("", (2, 3)) == 0).all()
    assert (filled('type: "constant" value: 2.5', (2, 3)) == 2.5).all()


def test_uniform_stays_in_range_with_the_right_mean():
    x = filled('type: "uniform" min: -2 max: 3', (200, 100))
    assert x.min() >= -2 and x.max() <= 3
    assert x.mean() == pytest.approx(0.5, abs=0.05)
    assert x.var() == pytest.approx(25 / 12.0, rel=0.05)


def test_gaussian_mean_and_std():
    x = filled('type: "gaussian" mean: 1 std: 0.5', (200, 100))
    assert x.mean() == pytest.approx(1.0, abs=0.02)
    assert x.std() == pytest.approx(0.5, rel=0.03)


def test_sparse_gaussian_keeps_sparse_over_num_outputs():
    x = filled('type: "gaussian" std: 1 sparse: 5', (20, 400))
    # Each weight survives with probability sparse / num_outputs = 5 / 20.
    assert (x != 0).mean() == pytest.approx(0.25, abs=0.02)


def test_positive_unitball_rows_sum_to_one():
    x = filled('type: "positive_unitball"', (7, 3, 2, 2))
    assert (x >= 0).all()
    numpy.testing.assert_allclose(x.reshape(7, -1).sum(axis=1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("norm,n", [("FAN_IN", 3 * 5 * 5), ("FAN_OUT", 40 * 5 * 5),
                                    ("AVERAGE", (3 * 25 + 40 * 25) / 2.0)])
def test_xavier_bounds_and_variance(norm, n):
    x = filled('type: "xavier" variance_norm: %s' % norm, (40, 3, 5, 5))
    bound = math.sqrt(3.0 / n)
    assert x.min() >= -bound and x.max() <= bound
    assert x.var() == pytest.approx(bound ** 2 / 3, rel=0.1)


@pytest.mark.parametrize("norm,n", [("FAN_IN", 30 * 9), ("FAN_OUT", 60 * 9)])
def test_msra_std(norm, n):
    x = filled('type: "msra" variance_norm: %s' % norm, (60, 30, 3, 3))
    assert x.mean() == pytest.approx(0.0, abs=0.01)
    assert x.std() == pytest.approx(math.sqrt(2.0 / n), rel=0.03)


def test_bilinear_is_the_upsampling_kernel():
    x = filled('type: "bilinear"', (2, 1, 4, 4))
    # Factor-2 upsampling kernel: 1-D weights [0.25, 0.75, 0.75, 0.25], outer product.
    w = numpy.array([0.25, 0.75, 0.75, 0.25])
    numpy.testing.assert_allclose(x[1, 0], numpy.outer(w, w))
    x3 = filled('type: "bilinear"', (1, 1, 3, 3))
    w3 = numpy.array([0.5, 1.0, 0.5])
    numpy.testing.assert_allclose(x3[0, 0], numpy.outer(w3, w3))


def test_same_seed_same_values_and_unknown_type_is_named():
    a = filled('type: "gaussian"', (5, 5), seed=7)
    b = filled('type: "gaussian"', (5, 5), seed=7)
    assert numpy.array_equal(a, b)
    with pytest.raises(ValueError, match="unknown filler type 'gausian'"):
        filled('type: "gausian"', (2, 2))
