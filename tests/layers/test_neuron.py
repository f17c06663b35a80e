"""ReLU, Sigmoid, TanH, Dropout: forward against numpy formulas, gradients, in-place use."""
import numpy
import pytest

from pycaffe_dist import backend
from pycaffe_dist.blob import Blob
from pycaffe_dist.gradient_check import check_gradient
from pycaffe_dist.layers import LayerError
from tests.layers.test_common import assert_same_on_both_backends, blob_of, make_layer, needs_gpu

TRAIN, TEST = 0, 1


def random_input(shape=(2, 3, 4, 5), seed=0):
    return numpy.random.default_rng(seed).normal(size=shape)


def run_forward(layer, bottom, top):
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    return top[0].data.copy()


def forward_backward(text, x, dy, in_place, phase=TRAIN, seed=3):
    """(y, dx) from one forward and backward, the top either separate or the bottom."""
    layer = make_layer(text, phase)
    bottom = blob_of(x)
    top = bottom if in_place else Blob(x.shape, dtype=numpy.float64)
    backend.set_random_seed(seed)
    y = run_forward(layer, [bottom], [top])
    top.diff[...] = dy
    layer.backward([top], [True], [bottom])
    return y, bottom.diff.copy()


RELU = 'name: "relu" type: "ReLU"'
SLOPE = float(numpy.float32(0.1))  # the prototxt field is a float32
LEAKY = 'name: "relu" type: "ReLU" relu_param { negative_slope: 0.1 }'
SIGMOID = 'name: "sig" type: "Sigmoid"'
TANH = 'name: "tanh" type: "TanH"'
DROPOUT = 'name: "drop" type: "Dropout" dropout_param { dropout_ratio: 0.3 }'


# -- forward against formulas ----------------------------------------------------
@pytest.mark.parametrize("text, formula", [
    (RELU, lambda x: numpy.where(x > 0, x, 0.0)),
    (LEAKY, lambda x: numpy.where(x > 0, x, SLOPE * x)),
    (SIGMOID, lambda x: 1.0 / (1.0 + numpy.exp(-x))),
    (TANH, lambda x: (numpy.exp(x) - numpy.exp(-x)) / (numpy.exp(x) + numpy.exp(-x))),
])
def test_forward_matches_formula(text, formula):
    x = random_input()
    y = run_forward(make_layer(text), [blob_of(x)], [Blob(x.shape, dtype=numpy.float64)])
    numpy.testing.assert_allclose(y, formula(x), rtol=1e-12, atol=1e-14)


def test_sigmoid_saturates_without_overflow():
    x = numpy.array([-1000.0, -50.0, 0.0, 50.0, 1000.0])
    with numpy.errstate(all="raise"):
        y = run_forward(make_layer(SIGMOID), [blob_of(x)], [Blob(x.shape, dtype=numpy.float64)])
    numpy.testing.assert_allclose(y, [0.0, 1.9287498479639178e-22, 0.5, 1.0, 1.0], atol=1e-15)


def test_relu_backward_hand_case():
    x = numpy.array([[-2.0, -0.5, 0.0, 0.5, 3.0]])
    dy = numpy.array([[1.0, 2.0, 3.0, 4.0, 5.0]])
    _, dx = forward_backward(RELU, x, dy, in_place=False)
    numpy.testing.assert_array_equal(dx, [[0.0, 0.0, 0.0, 4.0, 5.0]])
    _, dx = forward_backward(LEAKY, x, dy, in_place=False)
    numpy.testing.assert_allclose(dx, [[SLOPE, 2 * SLOPE, 3 * SLOPE, 4.0, 5.0]])


# -- gradients ---------------------------------------------------------------------
@pytest.mark.parametrize("text, kink_range", [
    (RELU, 0.01), (LEAKY, 0.01), (SIGMOID, -1), (TANH, -1), (DROPOUT, -1)])
def test_gradient(text, kink_range):
    x = random_input((2, 3, 2, 2))
    check_gradient(make_layer(text), [blob_of(x)], [Blob(x.shape, dtype=numpy.float64)],
                   kink_range=kink_range)


# -- in place ----------------------------------------------------------------------
@pytest.mark.parametrize("text", [RELU, LEAKY, SIGMOID, TANH, DROPOUT])
def test_in_place_equals_separate_top(text):
    x = random_input(seed=1)
    dy = random_input(seed=2)
    y_sep, dx_sep = forward_backward(text, x, dy, in_place=False)
    y_inp, dx_inp = forward_backward(text, x, dy, in_place=True)
    numpy.testing.assert_allclose(y_inp, y_sep, rtol=1e-14)
    numpy.testing.assert_allclose(dx_inp, dx_sep, rtol=1e-14)


# -- Dropout -------------------------------------------------------------------------
@pytest.mark.parametrize("in_place", [False, True])
def test_dropout_test_phase_is_identity(in_place):
    x, dy = random_input(seed=4), random_input(seed=5)
    y, dx = forward_backward(DROPOUT, x, dy, in_place=in_place, phase=TEST)
    numpy.testing.assert_array_equal(y, x)
    numpy.testing.assert_array_equal(dx, dy)


def test_dropout_train_mask_statistics_and_scale():
    x = numpy.ones((100, 100, 10))
    dy = numpy.full(x.shape, 2.0)
    y, dx = forward_backward('name: "d" type: "Dropout" dropout_param { dropout_ratio: 0.25 }',
                             x, dy, in_place=False)
    kept = y != 0
    # 100000 Bernoulli draws: the dropped fraction is within ~7 sigma of 0.25
    assert abs(1.0 - kept.mean() - 0.25) < 0.01
    numpy.testing.assert_allclose(y[kept], 1.0 / 0.75)
    # backward passes the gradient through the same mask with the same scale
    numpy.testing.assert_array_equal(dx != 0, kept)
    numpy.testing.assert_allclose(dx[kept], 2.0 / 0.75)


def test_dropout_masks_follow_the_random_seed():
    x, dy = random_input(seed=6), random_input(seed=7)
    first, _ = forward_backward(DROPOUT, x, dy, in_place=False, seed=11)
    again, _ = forward_backward(DROPOUT, x, dy, in_place=False, seed=11)
    other, _ = forward_backward(DROPOUT, x, dy, in_place=False, seed=12)
    numpy.testing.assert_array_equal(first, again)
    assert (first != other).any()


def test_dropout_draws_a_new_mask_each_forward():
    layer = make_layer(DROPOUT)
    bottom, top = blob_of(numpy.ones((50, 50))), Blob((50, 50), dtype=numpy.float64)
    first = run_forward(layer, [bottom], [top])
    layer.forward([bottom], [top])
    assert (top.data != first).any()


def test_dropout_rejects_ratio_one():
    layer = make_layer('name: "d" type: "Dropout" dropout_param { dropout_ratio: 1 }')
    with pytest.raises(LayerError, match="dropout_ratio"):
        layer.setup([blob_of(numpy.ones(3))], [Blob((3,), dtype=numpy.float64)])


@needs_gpu
@pytest.mark.parametrize("text, phase", [
    (RELU, TRAIN), (LEAKY, TRAIN), (SIGMOID, TRAIN), (TANH, TRAIN), (DROPOUT, TRAIN),
    (DROPOUT, TEST)])
def test_numpy_and_cupy_agree(text, phase):
    assert_same_on_both_backends(text, [random_input()], phase=phase)
