"""InnerProduct, Flatten, Concat, Split, Eltwise, Softmax: forward references and gradients."""
import numpy
import pytest
from google.protobuf import text_format

from pycaffe_dist import backend
from pycaffe_dist.blob import Blob
from pycaffe_dist.gradient_check import check_gradient
from pycaffe_dist.layers import LayerError, layer_class
from pycaffe_dist.proto import caffe_pb2


def make_layer(text, phase=0):
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    layer = layer_class(param.type)(param, phase)
    layer.dtype = numpy.float64
    return layer


def blob_of(values):
    values = numpy.asarray(values, dtype=numpy.float64)
    blob = Blob(values.shape, dtype=numpy.float64)
    blob.data[...] = values
    return blob


def tops(n=1):
    return [Blob((), dtype=numpy.float64) for _ in range(n)]


def random_input(shape, seed=0):
    return numpy.random.default_rng(seed).normal(size=shape)


def forward(layer, bottom, top):
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    return [t.data.copy() for t in top]


def run_on_backend(xp, text, bottom_values, phase=0, n_tops=1, propagate=None, seed=7):
    """One forward and backward of a layer on `xp` arrays; every top, bottom diff
    and parameter diff returned as numpy arrays. Top diffs are the top data, as
    in the gradient checker, and randomness is seeded the same way each call."""
    layer = make_layer(text, phase)
    layer.xp = xp
    bottom = []
    for values in bottom_values:
        blob = Blob(values.shape, dtype=numpy.float64, xp=xp)
        blob.data[...] = xp.asarray(values)
        bottom.append(blob)
    top = [Blob((), dtype=numpy.float64, xp=xp) for _ in range(n_tops)]
    backend.set_random_seed(seed)
    forward(layer, bottom, top)
    for t in top:
        t.diff[...] = t.data
    if layer.allow_backward:
        layer.backward(top, propagate or [True] * len(bottom), bottom)
    blobs = top + bottom + list(layer.blobs)
    return [backend.to_host(b.data if k < len(top) else b.diff) for k, b in enumerate(blobs)]


def assert_same_on_both_backends(text, bottom_values, **kwargs):
    on_cpu = run_on_backend(numpy, text, bottom_values, **kwargs)
    on_gpu = run_on_backend(backend.cupy, text, bottom_values, **kwargs)
    for cpu, gpu in zip(on_cpu, on_gpu):
        numpy.testing.assert_allclose(gpu, cpu, rtol=1e-10, atol=1e-12)


needs_gpu = pytest.mark.skipif(not backend.cupy_available, reason="needs a GPU with cupy")


@needs_gpu
@pytest.mark.parametrize("text, shapes", [
    ('name: "ip" type: "InnerProduct" inner_product_param { num_output: 3 '
     'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }', [(4, 2, 3)]),
    ('name: "ip" type: "InnerProduct" inner_product_param { num_output: 3 transpose: true '
     'weight_filler { type: "gaussian" } }', [(4, 5)]),
    ('name: "f" type: "Flatten"', [(2, 3, 4)]),
    ('name: "c" type: "Concat"', [(2, 3, 4), (2, 1, 4)]),
    ('name: "s" type: "Split"', [(2, 3)]),
    ('name: "e" type: "Eltwise" eltwise_param { operation: SUM coeff: 2 coeff: -1 }',
     [(2, 3), (2, 3)]),
    ('name: "e" type: "Eltwise" eltwise_param { operation: PROD }', [(2, 3), (2, 3)]),
    ('name: "e" type: "Eltwise" eltwise_param { operation: MAX }', [(2, 3), (2, 3)]),
    ('name: "sm" type: "Softmax" softmax_param { axis: 2 }', [(2, 3, 4)]),
])
def test_numpy_and_cupy_agree(text, shapes):
    values = [random_input(shape, seed=k) for k, shape in enumerate(shapes)]
    assert_same_on_both_backends(text, values, n_tops=2 if "Split" in text else 1)


# -- InnerProduct ----------------------------------------------------------------
IP = ('name: "ip" type: "InnerProduct" inner_product_param { num_output: 4 %s '
      'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 } }')


@pytest.mark.parametrize("extra, x_shape, w_shape, lead", [
    ("", (3, 2, 2, 2), (4, 8), (3,)),
    ("transpose: true", (3, 2, 2, 2), (8, 4), (3,)),
    ("axis: 2", (2, 3, 5), (4, 5), (2, 3)),
    ("axis: -1 transpose: true", (2, 3, 5), (5, 4), (2, 3)),
])
def test_inner_product_forward(extra, x_shape, w_shape, lead):
    layer = make_layer(IP % extra)
    x = random_input(x_shape)
    (y,) = forward(layer, [blob_of(x)], tops())
    w, b = layer.blobs[0].data, layer.blobs[1].data
    assert w.shape == w_shape
    w_nk = w.T if "transpose" in extra else w
    m = int(numpy.prod(lead))
    k = x.size // m
    flat = x.reshape(m, k)
    expected = numpy.array([[sum(flat[i, j] * w_nk[o, j] for j in range(k)) + b[o]
                             for o in range(4)] for i in range(m)])
    assert y.shape == lead + (4,)
    numpy.testing.assert_allclose(y.reshape(m, 4), expected, rtol=1e-12)


def test_inner_product_hand_case_without_bias():
    layer = make_layer('name: "ip" type: "InnerProduct" '
                       'inner_product_param { num_output: 2 bias_term: false }')
    bottom, top = [blob_of([[1.0, 2.0, 3.0]])], tops()
    layer.setup(bottom, top)
    assert len(layer.blobs) == 1
    layer.blobs[0].data[...] = [[1.0, 0.0, -1.0], [0.5, 0.5, 0.5]]
    layer.forward(bottom, top)
    numpy.testing.assert_allclose(top[0].data, [[-2.0, 3.0]])


@pytest.mark.parametrize("extra", ["", "transpose: true", "axis: 2", "bias_term: false"])
def test_inner_product_gradient(extra):
    shape = (2, 3, 4) if "axis" in extra else (2, 3, 2)
    check_gradient(make_layer(IP % extra), [blob_of(random_input(shape))], tops())


def test_inner_product_parameter_diffs_accumulate():
    layer = make_layer(IP % "")
    bottom, top = [blob_of(random_input((3, 5)))], tops()
    forward(layer, bottom, top)
    top[0].diff[...] = random_input(top[0].shape, seed=1)
    layer.backward(top, [True], bottom)
    once = [b.diff.copy() for b in layer.blobs]
    layer.backward(top, [True], bottom)
    for blob, first in zip(layer.blobs, once):
        numpy.testing.assert_allclose(blob.diff, 2 * first)
    layer.param_propagate_down = [False, False]
    layer.backward(top, [True], bottom)
    for blob, first in zip(layer.blobs, once):
        numpy.testing.assert_allclose(blob.diff, 2 * first)


def test_inner_product_rejects_a_changed_input_size():
    layer = make_layer(IP % "")
    forward(layer, [blob_of(random_input((2, 6)))], tops())
    with pytest.raises(LayerError, match="7 inputs"):
        layer.reshape([blob_of(random_input((2, 7)))], tops())


# -- Flatten ----------------------------------------------------------------------
@pytest.mark.parametrize("params, expected", [
    ("", (2, 60)), ("axis: 2", (2, 3, 20)), ("axis: 1 end_axis: 2", (2, 12, 5)),
    ("axis: 0 end_axis: -2", (24, 5))])
def test_flatten_shapes_and_values(params, expected):
    x = random_input((2, 3, 4, 5))
    (y,) = forward(make_layer('name: "f" type: "Flatten" flatten_param { %s }' % params),
                   [blob_of(x)], tops())
    assert y.shape == expected
    numpy.testing.assert_array_equal(y.reshape(-1), x.reshape(-1))


def test_flatten_gradient_and_no_in_place():
    x = blob_of(random_input((2, 3, 2)))
    check_gradient(make_layer('name: "f" type: "Flatten"'), [x], tops())
    with pytest.raises(LayerError, match="in place"):
        make_layer('name: "f" type: "Flatten"').setup([x], [x])


# -- Concat -----------------------------------------------------------------------
def test_concat_axis_0_and_1():
    a, b = numpy.arange(6.0).reshape(1, 2, 3), 10 + numpy.arange(12.0).reshape(2, 2, 3)
    (y,) = forward(make_layer('name: "c" type: "Concat" concat_param { axis: 0 }'),
                   [blob_of(a), blob_of(b)], tops())
    assert y.shape == (3, 2, 3)
    numpy.testing.assert_array_equal(y[0], a[0])
    numpy.testing.assert_array_equal(y[1:], b)

    c = 100 + numpy.arange(9.0).reshape(1, 3, 3)
    (y,) = forward(make_layer('name: "c" type: "Concat"'), [blob_of(a), blob_of(c)], tops())
    assert y.shape == (1, 5, 3)
    numpy.testing.assert_array_equal(y[0, :2], a[0])
    numpy.testing.assert_array_equal(y[0, 2:], c[0])


def test_concat_legacy_concat_dim_and_backward_slices():
    a, b = random_input((2, 3, 2)), random_input((2, 3, 1), seed=1)
    layer = make_layer('name: "c" type: "Concat" concat_param { concat_dim: 2 }')
    bottom, top = [blob_of(a), blob_of(b)], tops()
    (y,) = forward(layer, bottom, top)
    numpy.testing.assert_array_equal(y, numpy.concatenate([a, b], axis=2))
    top[0].diff[...] = numpy.arange(y.size).reshape(y.shape)
    layer.backward(top, [True, True], bottom)
    numpy.testing.assert_array_equal(bottom[0].diff, top[0].diff[:, :, :2])
    numpy.testing.assert_array_equal(bottom[1].diff, top[0].diff[:, :, 2:])


def test_concat_gradient():
    bottom = [blob_of(random_input((2, k, 3), seed=k)) for k in (1, 2, 3)]
    check_gradient(make_layer('name: "c" type: "Concat"'), bottom, tops())


def test_concat_shape_mismatch_names_the_bottom():
    bottom = [blob_of(numpy.zeros((2, 3, 4))), blob_of(numpy.zeros((2, 3, 4))),
              blob_of(numpy.zeros((2, 5, 5)))]
    with pytest.raises(LayerError, match=r"bottom\[2\]"):
        make_layer('name: "c" type: "Concat"').setup(bottom, tops())


# -- Split ------------------------------------------------------------------------
def test_split_copies_forward_and_sums_backward():
    x = random_input((2, 3))
    layer, bottom, top = make_layer('name: "s" type: "Split"'), [blob_of(x)], tops(3)
    outputs = forward(layer, bottom, top)
    for y in outputs:
        numpy.testing.assert_array_equal(y, x)
    for k, t in enumerate(top):
        t.diff[...] = (k + 1) * numpy.ones(x.shape)
    layer.backward(top, [True], bottom)
    numpy.testing.assert_array_equal(bottom[0].diff, 6 * numpy.ones(x.shape))


def test_split_gradient():
    check_gradient(make_layer('name: "s" type: "Split"'), [blob_of(random_input((2, 3)))], tops(2))


# -- Eltwise ----------------------------------------------------------------------
def eltwise(op, extra=""):
    return make_layer('name: "e" type: "Eltwise" eltwise_param { operation: %s %s }' % (op, extra))


def eltwise_inputs(n=3, shape=(2, 3, 2)):
    return [random_input(shape, seed=k) for k in range(n)]


def test_eltwise_sum_with_coefficients():
    xs = eltwise_inputs()
    (y,) = forward(eltwise("SUM", "coeff: 1 coeff: -0.5 coeff: 2"), [blob_of(x) for x in xs],
                   tops())
    numpy.testing.assert_allclose(y, xs[0] - 0.5 * xs[1] + 2 * xs[2], rtol=1e-12)


def test_eltwise_prod_and_max():
    xs = eltwise_inputs()
    (y,) = forward(eltwise("PROD"), [blob_of(x) for x in xs], tops())
    numpy.testing.assert_allclose(y, xs[0] * xs[1] * xs[2], rtol=1e-12)
    layer = eltwise("MAX")
    bottom, top = [blob_of(x) for x in xs], tops()
    (y,) = forward(layer, bottom, top)
    numpy.testing.assert_array_equal(y, numpy.maximum(numpy.maximum(xs[0], xs[1]), xs[2]))
    top[0].diff[...] = 1.0
    layer.backward(top, [True] * 3, bottom)
    winner = numpy.argmax(numpy.stack(xs), axis=0)
    for k in range(3):
        numpy.testing.assert_array_equal(bottom[k].diff, (winner == k).astype(float))


def test_eltwise_max_tie_goes_to_the_first_bottom():
    layer, bottom, top = eltwise("MAX"), [blob_of([1.0, 2.0]), blob_of([1.0, 3.0])], tops()
    forward(layer, bottom, top)
    top[0].diff[...] = 1.0
    layer.backward(top, [True, True], bottom)
    numpy.testing.assert_array_equal(bottom[0].diff, [1.0, 0.0])
    numpy.testing.assert_array_equal(bottom[1].diff, [0.0, 1.0])


@pytest.mark.parametrize("op, extra, kink_range", [
    ("SUM", "", -1), ("SUM", "coeff: 1.5 coeff: -2 coeff: 0.5", -1), ("PROD", "", -1),
    ("PROD", "stable_prod_grad: false", -1), ("MAX", "", -1)])
def test_eltwise_gradient(op, extra, kink_range):
    # well separated inputs keep MAX away from ties and PROD away from zero
    xs = [x + 3.0 * k for k, x in enumerate(eltwise_inputs())]
    if op == "PROD":
        xs = [numpy.abs(x) + 0.5 for x in xs]
    check_gradient(eltwise(op, extra), [blob_of(x) for x in xs], tops(), kink_range=kink_range)


def test_eltwise_errors():
    with pytest.raises(LayerError, match="coeff"):
        eltwise("SUM", "coeff: 1").setup([blob_of([1.0]), blob_of([2.0])], tops())
    with pytest.raises(LayerError, match=r"bottom\[1\]"):
        eltwise("SUM").setup([blob_of([1.0]), blob_of([2.0, 3.0])], tops())


# -- Softmax ----------------------------------------------------------------------
def reference_softmax(x, axis):
    out = numpy.empty_like(x)
    for index in numpy.ndindex(*(d for a, d in enumerate(x.shape) if a != axis)):
        where = list(index)
        where.insert(axis, slice(None))
        column = x[tuple(where)]
        e = numpy.exp(column - column.max())
        out[tuple(where)] = e / e.sum()
    return out


@pytest.mark.parametrize("axis", [1, 2, -1, 0])
def test_softmax_forward(axis):
    x = random_input((2, 3, 4))
    layer = make_layer('name: "sm" type: "Softmax" softmax_param { axis: %d }' % axis)
    (y,) = forward(layer, [blob_of(x)], tops())
    numpy.testing.assert_allclose(y, reference_softmax(x, axis % 3), rtol=1e-12)


def test_softmax_is_stable_for_large_inputs():
    x = numpy.array([[1000.0, 1001.0, 1002.0], [-1000.0, -1000.0, -1000.0]])
    with numpy.errstate(all="raise"):
        (y,) = forward(make_layer('name: "sm" type: "Softmax"'), [blob_of(x)], tops())
    e = numpy.exp([-2.0, -1.0, 0.0])
    numpy.testing.assert_allclose(y, [e / e.sum(), [1 / 3.0] * 3], rtol=1e-12)


@pytest.mark.parametrize("axis", [1, 2])
def test_softmax_gradient(axis):
    layer = make_layer('name: "sm" type: "Softmax" softmax_param { axis: %d }' % axis)
    check_gradient(layer, [blob_of(random_input((2, 3, 2)))], tops())


def test_softmax_in_place():
    x, dy = random_input((3, 4)), random_input((3, 4), seed=1)
    results = []
    for in_place in (False, True):
        layer, bottom = make_layer('name: "sm" type: "Softmax"'), blob_of(x)
        top = bottom if in_place else Blob(x.shape, dtype=numpy.float64)
        forward(layer, [bottom], [top])
        top.diff[...] = dy
        layer.backward([top], [True], [bottom])
        results.append((top.data.copy(), bottom.diff.copy()))
    for sep, inp in zip(*results):
        numpy.testing.assert_allclose(inp, sep, rtol=1e-14)
