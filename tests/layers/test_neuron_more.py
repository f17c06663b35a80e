"""PReLU, ELU, AbsVal, BNLL, Threshold, Clip, Swish, Power, Exp, Log, Bias, Scale:
forward against formulas, gradients, in-place use, numpy vs cupy."""
import math

import numpy
import pytest

from pycaffe_dist import backend
from pycaffe_dist.blob import Blob
from pycaffe_dist.gradient_check import check_gradient
from pycaffe_dist.layers import LayerError
from tests.layers.test_common import assert_same_on_both_backends, needs_gpu
from tests.layers.test_neuron import blob_of, forward_backward, make_layer, random_input, run_forward


def f32(value):
    """A prototxt float field holds the float32 nearest the written value."""
    return float(numpy.float32(value))


def away_from(x, points, gap=0.05):
    """x with values near any of `points` pushed `gap` away (numeric gradients
    straddling a kink are meaningless)."""
    x = x.copy()
    for p in points:
        near = numpy.abs(x - p) < gap
        x[near] = p + numpy.where(x[near] >= p, gap, -gap)
    return x


def sigmoid(x):
    return 1.0 / (1.0 + numpy.exp(-x))


PRELU = 'name: "p" type: "PReLU"'
ELU = 'name: "e" type: "ELU" elu_param { alpha: 0.5 }'
ABSVAL = 'name: "a" type: "AbsVal"'
BNLL = 'name: "b" type: "BNLL"'
THRESHOLD = 'name: "t" type: "Threshold" threshold_param { threshold: 0.3 }'
CLIP = 'name: "c" type: "Clip" clip_param { min: -1 max: 0.5 }'
SWISH = 'name: "s" type: "Swish" swish_param { beta: 1.5 }'
POWER = 'name: "p" type: "Power" power_param { power: %s scale: %s shift: %s }'
EXP = 'name: "e" type: "Exp" exp_param { base: %s scale: %s shift: %s }'
LOG = 'name: "l" type: "Log" log_param { base: %s scale: %s shift: %s }'


# -- forward against formulas ----------------------------------------------------
@pytest.mark.parametrize("text, formula, x", [
    (PRELU, lambda x: numpy.where(x > 0, x, 0.25 * x), None),
    (ELU, lambda x: numpy.where(x > 0, x, 0.5 * (numpy.exp(x) - 1)), None),
    (ABSVAL, numpy.abs, None),
    (BNLL, lambda x: numpy.log(1 + numpy.exp(x)), None),
    (THRESHOLD, lambda x: (x > f32(0.3)).astype(float), None),
    (CLIP, lambda x: numpy.minimum(numpy.maximum(x, -1.0), 0.5), None),
    (SWISH, lambda x: x / (1 + numpy.exp(-1.5 * x)), None),
    (POWER % (2, 1, 0), lambda x: x * x, None),
    (POWER % (0.37, 0.83, 2.4), lambda x: (f32(2.4) + f32(0.83) * x) ** f32(0.37),
     numpy.random.default_rng(1).uniform(-2.5, 3, (2, 3, 4))),
    (POWER % (0, 0.83, -2.4), lambda x: numpy.ones_like(x), None),
    (POWER % (1, 0.83, -2.4), lambda x: f32(0.83) * x - f32(2.4), None),
    (POWER % (3, 0, 2), lambda x: numpy.full_like(x, 8.0), None),
    (EXP % (-1, 1, 0), numpy.exp, None),
    (EXP % (2, 0.5, 1.5), lambda x: 2.0 ** (1.5 + 0.5 * x), None),
    (LOG % (-1, 1, 0), numpy.log, numpy.random.default_rng(2).uniform(0.1, 3, (2, 3, 4))),
    (LOG % (10, f32(0.5), 3), lambda x: numpy.log10(3 + f32(0.5) * x), None),
])
def test_forward_matches_formula(text, formula, x):
    x = random_input((2, 3, 4)) if x is None else x
    y = run_forward(make_layer(text), [blob_of(x)], [Blob(x.shape, dtype=numpy.float64)])
    numpy.testing.assert_allclose(y, formula(x), rtol=1e-12, atol=1e-14)


def test_bnll_and_elu_do_not_overflow():
    x = numpy.array([-1000.0, -40.0, 0.0, 40.0, 1000.0])
    with numpy.errstate(over="raise", invalid="raise", divide="raise"):
        y = run_forward(make_layer(BNLL), [blob_of(x)], [Blob(x.shape, dtype=numpy.float64)])
        numpy.testing.assert_allclose(y, [0.0, math.exp(-40.0), math.log(2), 40.0, 1000.0])
        _, dx = forward_backward(BNLL, x, numpy.ones_like(x), in_place=True)
        numpy.testing.assert_allclose(dx, [0.0, math.exp(-40.0), 0.5, 1.0, 1.0], atol=1e-17)
        y = run_forward(make_layer(ELU), [blob_of(x)], [Blob(x.shape, dtype=numpy.float64)])
        numpy.testing.assert_allclose(y, [-0.5, -0.5, 0.0, 40.0, 1000.0])


def test_exp_and_log_reject_bad_bases():
    for text in (EXP % (-2, 1, 0), EXP % (0, 1, 0), LOG % (-3, 1, 0), LOG % (1, 1, 0)):
        with pytest.raises(LayerError, match="base"):
            make_layer(text).setup([blob_of(numpy.ones(3))], [Blob((3,), dtype=numpy.float64)])


def test_clip_rejects_min_above_max():
    with pytest.raises(LayerError, match="min"):
        make_layer('name: "c" type: "Clip" clip_param { min: 1 max: 0 }').setup(
            [blob_of(numpy.ones(3))], [Blob((3,), dtype=numpy.float64)])


def test_absval_refuses_in_place():
    bottom = blob_of(numpy.ones(3))
    with pytest.raises(LayerError, match="in place"):
        make_layer(ABSVAL).setup([bottom], [bottom])


def test_threshold_has_no_gradient():
    assert not make_layer(THRESHOLD).allow_backward


# -- gradients ---------------------------------------------------------------------
@pytest.mark.parametrize("text, x, kink_range", [
    (ELU, random_input((2, 3, 2, 2)), 0.01),
    (ABSVAL, random_input((2, 3, 2, 2)), 0.01),
    (BNLL, random_input((2, 3, 2, 2)), -1),
    (CLIP, away_from(random_input((2, 3, 2, 2)), [-1.0, 0.5]), -1),
    (SWISH, random_input((2, 3, 2, 2)), -1),
    (POWER % (2, 0.83, -2.4), random_input((2, 3, 2)), -1),
    (POWER % (0.37, 0.83, 2.4), numpy.random.default_rng(3).uniform(-2, 3, (2, 3, 2)), -1),
    (POWER % (-2, 0.83, 2.4), numpy.random.default_rng(4).uniform(-2, 3, (2, 3, 2)), -1),
    (POWER % (1, 0.83, -2.4), random_input((2, 3, 2)), -1),
    (POWER % (0, 0.83, 2.4), random_input((2, 3, 2)), -1),
    (POWER % (3, 0, 2.4), random_input((2, 3, 2)), -1),
    (EXP % (-1, 1, 0), random_input((2, 3, 2)), -1),
    (EXP % (2, 0.5, 1.5), random_input((2, 3, 2)), -1),
    (LOG % (-1, 1, 0), numpy.random.default_rng(5).uniform(0.5, 3, (2, 3, 2)), -1),
    (LOG % (2, 0.5, 3), random_input((2, 3, 2)), -1),
])
def test_gradient(text, x, kink_range):
    check_gradient(make_layer(text), [blob_of(x)], [Blob(x.shape, dtype=numpy.float64)],
                   kink_range=kink_range)


# -- in place ----------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    PRELU, ELU, BNLL, THRESHOLD, CLIP, SWISH, POWER % (2, 0.83, -0.5), POWER % (1, 2, 1),
    EXP % (2, 0.5, 1.5), LOG % (-1, 0.5, 4)])
def test_in_place_equals_separate_top(text):
    x = away_from(random_input((2, 3, 4, 5), seed=1), [-1.0, 0.5])
    x = away_from(x, [0.0])
    dy = random_input((2, 3, 4, 5), seed=2)
    layer_sep, layer_inp = make_layer(text), make_layer(text)
    results = []
    for layer, in_place in ((layer_sep, False), (layer_inp, True)):
        bottom = blob_of(x)
        top = bottom if in_place else Blob(x.shape, dtype=numpy.float64)
        y = run_forward(layer, [bottom], [top])
        if layer.allow_backward:
            top.diff[...] = dy
            layer.backward([top], [True], [bottom])
        results.append((y, bottom.diff.copy(), [b.diff.copy() for b in layer.blobs]))
    (y_sep, dx_sep, params_sep), (y_inp, dx_inp, params_inp) = results
    numpy.testing.assert_allclose(y_inp, y_sep, rtol=1e-14)
    numpy.testing.assert_allclose(dx_inp, dx_sep, rtol=1e-14)
    for a, b in zip(params_inp, params_sep):
        numpy.testing.assert_allclose(a, b, rtol=1e-12)


# -- PReLU ---------------------------------------------------------------------------
PRELU_FILLED = 'name: "p" type: "PReLU" prelu_param { %s filler { type: "uniform" min: 0.1 max: 0.9 } }'


@pytest.mark.parametrize("shared", [False, True])
def test_prelu_learned_slopes(shared):
    layer = make_layer(PRELU_FILLED % ("channel_shared: true" if shared else ""))
    x = random_input((2, 3, 4))
    y = run_forward(layer, [blob_of(x)], [Blob(x.shape, dtype=numpy.float64)])
    slopes = layer.blobs[0].data
    assert slopes.shape == (() if shared else (3,))   # Caffe's shapes
    assert 0.1 <= slopes.min() and slopes.max() <= 0.9
    a = slopes.reshape(1, -1, 1)
    numpy.testing.assert_allclose(y, numpy.where(x > 0, x, a * x))


@pytest.mark.parametrize("shared", [False, True])
def test_prelu_gradient_with_slopes(shared):
    x = random_input((2, 3, 2, 2), seed=3)
    check_gradient(make_layer(PRELU_FILLED % ("channel_shared: true" if shared else "")),
                   [blob_of(x)], [Blob(x.shape, dtype=numpy.float64)], kink_range=0.01)


def test_prelu_slope_gradient_accumulates_and_matches_a_sum():
    layer = make_layer(PRELU)
    x, dy = random_input((2, 3, 4)), random_input((2, 3, 4), seed=1)
    bottom, top = blob_of(x), Blob(x.shape, dtype=numpy.float64)
    run_forward(layer, [bottom], [top])
    top.diff[...] = dy
    layer.backward([top], [False], [bottom])
    layer.backward([top], [False], [bottom])
    expected = [sum(dy[n, c, k] * x[n, c, k] for n in range(2) for k in range(4) if x[n, c, k] <= 0)
                for c in range(3)]
    numpy.testing.assert_allclose(layer.blobs[0].diff, 2 * numpy.array(expected))


def test_prelu_needs_channels():
    with pytest.raises(LayerError, match="at least 2 axes"):
        make_layer(PRELU).setup([blob_of(numpy.ones(3))], [Blob((3,), dtype=numpy.float64)])


# -- Bias and Scale --------------------------------------------------------------------
GAUSS = 'filler { type: "gaussian" std: 1 }'
BIAS = 'name: "b" type: "Bias" bias_param { %s ' + GAUSS + ' }'
SCALE = 'name: "s" type: "Scale" scale_param { %s ' + GAUSS + ' }'
SCALE_BIAS = ('name: "s" type: "Scale" scale_param { %s bias_term: true ' + GAUSS
              + ' bias_filler { type: "gaussian" std: 1 } }')
X_SHAPE = (2, 3, 4, 5)

# (parameters, operand shape, how it lines up with X_SHAPE for numpy broadcasting)
GEOMETRIES = [
    ("", (3,), (1, 3, 1, 1)),
    ("axis: 2 num_axes: 2", (4, 5), (1, 1, 4, 5)),
    ("axis: -2 num_axes: -1", (4, 5), (1, 1, 4, 5)),
    ("axis: 0 num_axes: -1", X_SHAPE, X_SHAPE),
    ("num_axes: 0", (), (1, 1, 1, 1)),
]


@pytest.mark.parametrize("params, shape, aligned", GEOMETRIES)
def test_bias_and_scale_learned_operand_forward(params, shape, aligned):
    x = random_input(X_SHAPE)
    bias, scale, both = make_layer(BIAS % params), make_layer(SCALE % params), make_layer(SCALE_BIAS % params)
    y_bias = run_forward(bias, [blob_of(x)], [Blob((), dtype=numpy.float64)])
    y_scale = run_forward(scale, [blob_of(x)], [Blob((), dtype=numpy.float64)])
    y_both = run_forward(both, [blob_of(x)], [Blob((), dtype=numpy.float64)])
    assert bias.blobs[0].shape == shape and scale.blobs[0].shape == shape
    assert [b.shape for b in both.blobs] == [shape, shape]
    numpy.testing.assert_allclose(y_bias, x + bias.blobs[0].data.reshape(aligned))
    numpy.testing.assert_allclose(y_scale, x * scale.blobs[0].data.reshape(aligned))
    s, b = (blob.data.reshape(aligned) for blob in both.blobs)
    numpy.testing.assert_allclose(y_both, x * s + b)


def test_scale_filler_defaults_to_one():
    layer = make_layer('name: "s" type: "Scale" scale_param { bias_term: true }')
    x = random_input(X_SHAPE)
    y = run_forward(layer, [blob_of(x)], [Blob((), dtype=numpy.float64)])
    numpy.testing.assert_array_equal(layer.blobs[0].data, numpy.ones(3))
    numpy.testing.assert_array_equal(layer.blobs[1].data, numpy.zeros(3))
    numpy.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("params, operand_shape, aligned", [
    ("", (3, 4), (1, 3, 4, 1)),
    ("axis: 0", (2, 3), (2, 3, 1, 1)),
    ("axis: 1", (), (1, 1, 1, 1)),   # a scalar ignores axis
    ("axis: -1", (5,), (1, 1, 1, 5)),
])
@pytest.mark.parametrize("kind", ["Bias", "Scale"])
def test_second_bottom_operand(kind, params, operand_shape, aligned):
    x, operand = random_input(X_SHAPE), random_input(operand_shape, seed=1)
    key = "bias_param" if kind == "Bias" else "scale_param"
    layer = make_layer(f'name: "l" type: "{kind}" {key} {{ {params} }}')
    y = run_forward(layer, [blob_of(x), blob_of(operand)], [Blob((), dtype=numpy.float64)])
    assert layer.blobs == []
    op = operand.reshape(aligned)
    numpy.testing.assert_allclose(y, x + op if kind == "Bias" else x * op)
    check_gradient(layer, [blob_of(x), blob_of(operand)], [Blob((), dtype=numpy.float64)],
                   max_points=40, setup=False)


@pytest.mark.parametrize("text", [BIAS, SCALE, SCALE_BIAS])
@pytest.mark.parametrize("params", ["", "axis: 2 num_axes: 2", "num_axes: 0"])
def test_learned_operand_gradient(text, params):
    x = random_input((2, 3, 4, 5), seed=4)
    check_gradient(make_layer(text % params), [blob_of(x)], [Blob((), dtype=numpy.float64)],
                   max_points=30)


def test_scale_with_bias_and_second_bottom_keeps_the_bias_as_blob_zero():
    layer = make_layer('name: "s" type: "Scale" scale_param { axis: 0 bias_term: true '
                       'bias_filler { type: "constant" value: 2 } }')
    x, s = random_input((2, 3, 4)), random_input((2, 3), seed=1)
    y = run_forward(layer, [blob_of(x), blob_of(s)], [Blob((), dtype=numpy.float64)])
    assert [b.shape for b in layer.blobs] == [(2, 3)]
    numpy.testing.assert_allclose(y, x * s[:, :, None] + 2)
    check_gradient(layer, [blob_of(x), blob_of(s)], [Blob((), dtype=numpy.float64)], setup=False)


@pytest.mark.parametrize("text", [BIAS % "", SCALE_BIAS % ""])
def test_bias_and_scale_in_place(text):
    x, dy = random_input((2, 3, 4)), random_input((2, 3, 4), seed=1)
    sep, inp = make_layer(text), make_layer(text)
    grads = []
    for layer, in_place in ((sep, False), (inp, True)):
        bottom = blob_of(x)
        top = bottom if in_place else Blob((), dtype=numpy.float64)
        backend.set_random_seed(5)   # the same filled operand for both
        y = run_forward(layer, [bottom], [top])
        top.diff[...] = dy
        layer.backward([top], [True], [bottom])
        grads.append((y, bottom.diff.copy(), [b.diff.copy() for b in layer.blobs]))
    numpy.testing.assert_allclose(grads[1][0], grads[0][0])
    numpy.testing.assert_allclose(grads[1][1], grads[0][1])
    for a, b in zip(grads[1][2], grads[0][2]):
        numpy.testing.assert_allclose(a, b)


def test_scale_parameter_gradients_accumulate():
    layer = make_layer(SCALE_BIAS % "")
    x, dy = random_input((2, 3, 4)), random_input((2, 3, 4), seed=1)
    bottom, top = blob_of(x), Blob((), dtype=numpy.float64)
    run_forward(layer, [bottom], [top])
    top.diff[...] = dy
    layer.backward([top], [False], [bottom])
    layer.backward([top], [False], [bottom])
    numpy.testing.assert_allclose(layer.blobs[0].diff, 2 * (dy * x).sum(axis=(0, 2)))
    numpy.testing.assert_allclose(layer.blobs[1].diff, 2 * dy.sum(axis=(0, 2)))


@pytest.mark.parametrize("kind", ["Bias", "Scale"])
def test_operand_shape_mismatch_is_named(kind):
    layer = make_layer(f'name: "l" type: "{kind}"')
    with pytest.raises(LayerError, match=r"does not match bottom\[0\]"):
        layer.setup([blob_of(numpy.ones((2, 3, 4))), blob_of(numpy.ones((4,)))],
                    [Blob((), dtype=numpy.float64)])
    layer = make_layer(f'name: "l" type: "{kind}" {kind.lower()}_param {{ axis: 2 num_axes: 2 }}')
    with pytest.raises(LayerError, match="reaches past"):
        layer.setup([blob_of(numpy.ones((2, 3, 4)))], [Blob((), dtype=numpy.float64)])


# -- numpy vs cupy -------------------------------------------------------------------
@needs_gpu
@pytest.mark.parametrize("text, bottoms", [
    (PRELU_FILLED % "", [(2, 3, 4)]), (ELU, [(2, 3, 4)]), (ABSVAL, [(2, 3, 4)]),
    (BNLL, [(2, 3, 4)]), (THRESHOLD, [(2, 3, 4)]), (CLIP, [(2, 3, 4)]), (SWISH, [(2, 3, 4)]),
    (POWER % (2, 0.83, -2.4), [(2, 3, 4)]), (EXP % (2, 0.5, 1.5), [(2, 3, 4)]),
    (SCALE_BIAS % "", [(2, 3, 4)]), (BIAS % "axis: 2 num_axes: 1", [(2, 3, 4)]),
    ('name: "s" type: "Scale"', [(2, 3, 4), (2, 3)]),
])
def test_numpy_and_cupy_agree(text, bottoms):
    assert_same_on_both_backends(text, [random_input(s, seed=i) for i, s in enumerate(bottoms)])


@needs_gpu
def test_log_numpy_and_cupy_agree():
    assert_same_on_both_backends(LOG % (2, 0.5, 3), [numpy.abs(random_input((2, 3, 4)))])
