"""Embed, Reshape, Slice, Tile, BatchReindex, Filter, Parameter, Silence, Reduction,
ArgMax: forward against loops or numpy, gradients, errors, numpy vs cupy."""
import numpy
import pytest

from pycaffe_dist.net import Net, TRAIN
from pycaffe_dist.gradient_check import check_gradient
from pycaffe_dist.layers import LayerError
from pycaffe_dist.proto import io
from tests.layers.test_common import (assert_same_on_both_backends, blob_of, forward, make_layer,
                                      needs_gpu, random_input, tops)


def forward_backward(layer, bottom, n_tops, dys, propagate):
    top = tops(n_tops)
    ys = forward(layer, bottom, top)
    for t, dy in zip(top, dys):
        t.diff[...] = dy
    layer.backward(top, propagate, bottom)
    return ys, [b.diff.copy() for b in bottom]


# -- Embed --------------------------------------------------------------------------
EMBED = ('name: "e" type: "Embed" embed_param { num_output: 4 input_dim: 6 %s '
         'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }')
IDS = numpy.array([[5.0, 0.0, 2.0], [2.0, 2.0, 1.0]])


@pytest.mark.parametrize("bias", ["", "bias_term: false"])
def test_embed_forward_looks_up_rows(bias):
    layer = make_layer(EMBED % bias)
    (y,) = forward(layer, [blob_of(IDS)], tops())
    weights = layer.blobs[0].data
    assert weights.shape == (6, 4) and y.shape == (2, 3, 4)
    assert len(layer.blobs) == (1 if bias else 2)
    for i in range(2):
        for j in range(3):
            expected = weights[int(IDS[i, j])] + (0 if bias else layer.blobs[1].data)
            numpy.testing.assert_allclose(y[i, j], expected)


def test_embed_gradient_and_repeated_ids_add_up():
    layer = make_layer(EMBED % "")
    check_gradient(layer, [blob_of(IDS)], tops(), check_bottom=[])
    layer.blobs[0].diff[...] = 0
    layer.blobs[1].diff[...] = 0
    dy = random_input((2, 3, 4))
    top = tops()
    forward(layer, [blob_of(IDS)], top)
    top[0].diff[...] = dy
    layer.backward(top, [False], [blob_of(IDS)])
    expected = numpy.zeros((6, 4))
    for i in range(2):
        for j in range(3):
            expected[int(IDS[i, j])] += dy[i, j]
    numpy.testing.assert_allclose(layer.blobs[0].diff, expected)
    numpy.testing.assert_allclose(layer.blobs[1].diff, dy.sum(axis=(0, 1)))
    assert not layer.allow_force_backward(0)


@pytest.mark.parametrize("ids, message", [([1.0, 6.0], "6 is not an integer in"),
                                          ([1.5], "1.5 is not an integer"),
                                          ([-1.0], "-1 is not an integer")])
def test_embed_bad_ids(ids, message):
    with pytest.raises(LayerError, match=message):
        forward(make_layer(EMBED % ""), [blob_of(ids)], tops())


# -- Reshape ------------------------------------------------------------------------
BOTTOM_SHAPE = (2, 3, 6, 5)


@pytest.mark.parametrize("params, expected", [   # Caffe's own reshape test cases
    ("shape { dim: 0 dim: -1 dim: 1 dim: 1 }", (2, 90, 1, 1)),
    ("shape { dim: 0 dim: 0 dim: 0 dim: 0 }", (2, 3, 6, 5)),
    ("shape { dim: 0 dim: 3 dim: 10 dim: -1 }", (2, 3, 10, 3)),
    ("axis: 1 shape { dim: 3 dim: 10 dim: -1 }", (2, 3, 10, 3)),
    ("axis: 0 num_axes: 0 shape { dim: 1 dim: 1 dim: 1 }", (1, 1, 1, 2, 3, 6, 5)),
    ("axis: 2 num_axes: 0 shape { dim: 1 dim: 1 dim: 1 }", (2, 3, 1, 1, 1, 6, 5)),
    ("axis: -1 num_axes: 0 shape { dim: 1 dim: 1 dim: 1 }", (2, 3, 6, 5, 1, 1, 1)),
    ("axis: 1 num_axes: 2 shape { dim: -1 }", (2, 18, 5)),
    ("axis: -3 shape { dim: 30 }", (2, 3, 30)),   # -1 is after the last axis
    ("shape { dim: 6 dim: 2 dim: 3 dim: 5 }", (6, 2, 3, 5)),
])
def test_reshape_shapes_and_values(params, expected):
    x = random_input(BOTTOM_SHAPE)
    (y,) = forward(make_layer(f'name: "r" type: "Reshape" reshape_param {{ {params} }}'),
                   [blob_of(x)], tops())
    assert y.shape == expected
    numpy.testing.assert_array_equal(y.reshape(-1), x.reshape(-1))


def test_reshape_gradient_and_forward_after_bottom_reshape():
    layer = make_layer('name: "r" type: "Reshape" reshape_param { shape { dim: 0 dim: -1 } }')
    check_gradient(layer, [blob_of(random_input((2, 3, 2)))], tops())
    bottom, top = [blob_of(random_input((4, 5, 2)))], tops()
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    assert top[0].shape == (4, 10)


@pytest.mark.parametrize("params, message", [
    ("shape { dim: -1 dim: -1 }", "more than one -1"),
    ("shape { dim: 7 dim: -1 }", "cannot infer"),
    ("shape { dim: 2 dim: 3 }", "holds 6 values"),
    ("shape { dim: -2 }", "dimensions must be"),
    ("axis: 5 shape { dim: 1 }", "axis 5 is out of range"),
    ("axis: 3 num_axes: 2 shape { dim: 1 }", "reaches past"),
    ("axis: 3 shape { dim: 0 dim: 0 }", "no axis 4"),
])
def test_reshape_errors(params, message):
    with pytest.raises(LayerError, match=message):
        forward(make_layer(f'name: "r" type: "Reshape" reshape_param {{ {params} }}'),
                [blob_of(random_input(BOTTOM_SHAPE))], tops())


# -- Slice ----------------------------------------------------------------------------
@pytest.mark.parametrize("params, n_tops, axis, bounds", [
    ("slice_point: 3 slice_point: 7", 3, 1, [0, 3, 7, 12]),
    ("axis: 0", 3, 0, [0, 2, 4, 6]),
    ("slice_dim: 0 slice_point: 1", 2, 0, [0, 1, 6]),
    ("axis: -1", 1, 3, [0, 3]),
    ("axis: 2 slice_point: 1", 2, 2, [0, 1, 2]),
])
def test_slice_forward_and_gradient(params, n_tops, axis, bounds):
    x = random_input((6, 12, 2, 3))
    layer = make_layer(f'name: "s" type: "Slice" slice_param {{ {params} }}')
    ys = forward(layer, [blob_of(x)], tops(n_tops))
    for y, a, b in zip(ys, bounds, bounds[1:]):
        numpy.testing.assert_array_equal(y, numpy.take(x, range(a, b), axis=axis))
    small = random_input((6, 12, 2, 3)[:axis] + ((6, 12, 2, 3)[axis],) + (1,) * (3 - axis))
    check_gradient(make_layer(f'name: "s" type: "Slice" slice_param {{ {params} }}'),
                   [blob_of(small)], tops(n_tops), max_points=30)


@pytest.mark.parametrize("params, n_tops, message", [
    ("axis: 1 slice_dim: 1", 2, "not both"),
    ("slice_point: 3", 3, "one fewer than the tops"),
    ("slice_point: 7 slice_point: 3", 3, "increase strictly"),
    ("slice_point: 12", 2, "increase strictly"),
    ("", 5, "equal parts"),
])
def test_slice_errors(params, n_tops, message):
    with pytest.raises(LayerError, match=message):
        forward(make_layer(f'name: "s" type: "Slice" slice_param {{ {params} }}'),
                [blob_of(random_input((6, 12)))], tops(n_tops))


# -- Tile -------------------------------------------------------------------------------
@pytest.mark.parametrize("axis, tiles", [(1, 3), (0, 2), (-1, 4), (2, 1)])
def test_tile_matches_numpy_tile(axis, tiles):
    x = random_input((2, 3, 4))
    (y,) = forward(make_layer(f'name: "t" type: "Tile" tile_param {{ axis: {axis} tiles: {tiles} }}'),
                   [blob_of(x)], tops())
    reps = [1, 1, 1]
    reps[axis] = tiles
    numpy.testing.assert_array_equal(y, numpy.tile(x, reps))
    check_gradient(make_layer(f'name: "t" type: "Tile" tile_param {{ axis: {axis} tiles: {tiles} }}'),
                   [blob_of(x)], tops(), max_points=30)


def test_tile_needs_positive_tiles():
    with pytest.raises(LayerError, match="tiles must be positive"):
        forward(make_layer('name: "t" type: "Tile"'), [blob_of(random_input((2, 3)))], tops())


# -- BatchReindex -------------------------------------------------------------------------
def test_batch_reindex_forward_backward_against_loops():
    x = random_input((5, 2, 3))
    index = numpy.array([2.0, 0.0, 2.0, 4.0, 2.0, 1.0])
    dy = random_input((6, 2, 3), seed=1)
    layer = make_layer('name: "r" type: "BatchReindex"')
    (y,), (dx, _) = forward_backward(layer, [blob_of(x), blob_of(index)], 1, [dy], [True, False])
    for k, i in enumerate(index.astype(int)):
        numpy.testing.assert_array_equal(y[k], x[i])
    expected = numpy.zeros_like(x)
    for k, i in enumerate(index.astype(int)):
        expected[i] += dy[k]
    numpy.testing.assert_allclose(dx, expected)
    check_gradient(make_layer('name: "r" type: "BatchReindex"'), [blob_of(x), blob_of(index)],
                   tops(), check_bottom=[0])
    assert not layer.allow_force_backward(1)
    with pytest.raises(LayerError, match="indices"):
        layer.backward(tops(), [False, True], [blob_of(x), blob_of(index)])


def test_batch_reindex_bad_index():
    with pytest.raises(LayerError, match="5 is not an integer in"):
        forward(make_layer('name: "r" type: "BatchReindex"'),
                [blob_of(random_input((5, 2))), blob_of([0.0, 5.0])], tops())
    with pytest.raises(LayerError, match="one axis"):
        forward(make_layer('name: "r" type: "BatchReindex"'),
                [blob_of(random_input((5, 2))), blob_of([[0.0]])], tops())


# -- Filter --------------------------------------------------------------------------------
def test_filter_keeps_selected_items_and_zeros_the_rest_in_backward():
    a, b = random_input((5, 3, 2)), random_input((5, 4), seed=1)
    selector = numpy.array([[0.0], [1.0], [0.0], [2.0], [1.0]])
    keep = [1, 3, 4]
    layer = make_layer('name: "f" type: "Filter"')
    bottom = [blob_of(a), blob_of(b), blob_of(selector)]
    top = tops(2)
    layer.setup(bottom, top)
    assert top[0].shape == (5, 3, 2)    # at setup: every item, as Caffe
    dys = [random_input((3, 3, 2), seed=2), random_input((3, 4), seed=3)]
    ys, diffs = forward_backward(layer, bottom, 2, dys, [True, True, False])
    numpy.testing.assert_array_equal(ys[0], a[keep])
    numpy.testing.assert_array_equal(ys[1], b[keep])
    for diff, dy, shape in zip(diffs, dys, (a.shape, b.shape)):
        expected = numpy.zeros(shape)
        expected[keep] = dy
        numpy.testing.assert_array_equal(diff, expected)
    check_gradient(make_layer('name: "f" type: "Filter"'), bottom, tops(2), check_bottom=[0, 1])
    assert layer.allow_force_backward(1) and not layer.allow_force_backward(2)


def test_filter_errors():
    with pytest.raises(LayerError, match="make 1 tops"):
        forward(make_layer('name: "f" type: "Filter"'),
                [blob_of(numpy.ones((3, 2))), blob_of(numpy.ones(3))], tops(2))
    with pytest.raises(LayerError, match="selector"):
        forward(make_layer('name: "f" type: "Filter"'),
                [blob_of(numpy.ones((3, 2))), blob_of(numpy.ones((3, 2)))], tops())
    with pytest.raises(LayerError, match="3 items"):
        forward(make_layer('name: "f" type: "Filter"'),
                [blob_of(numpy.ones((4, 2))), blob_of(numpy.ones(3))], tops())


# -- Parameter and Silence -------------------------------------------------------------------
def test_parameter_top_is_its_blob_and_gradient_accumulates():
    layer = make_layer('name: "p" type: "Parameter" parameter_param { shape { dim: 2 dim: 3 } }')
    top = tops()
    layer.setup([], top)
    assert layer.blobs[0].shape == (2, 3) and not layer.blobs[0].data.any()
    layer.blobs[0].data[...] = random_input((2, 3))
    layer.forward([], top)
    numpy.testing.assert_array_equal(top[0].data, layer.blobs[0].data)
    top[0].diff[...] = 1.5
    layer.backward(top, [], [])
    layer.backward(top, [], [])
    numpy.testing.assert_array_equal(layer.blobs[0].diff, numpy.full((2, 3), 3.0))
    check_gradient(layer, [], top, setup=False)


def test_silence_zeroes_bottom_diffs():
    layer = make_layer('name: "s" type: "Silence"')
    bottom = [blob_of(random_input((2, 3))), blob_of(random_input((4,)))]
    for b in bottom:
        b.diff[...] = 5
    layer.setup(bottom, [])
    layer.forward(bottom, [])
    layer.backward([], [True, False], bottom)
    assert not bottom[0].diff.any() and (bottom[1].diff == 5).all()


def test_parameter_silence_reshape_slice_in_a_net():
    text = '''
      layer { name: "p" type: "Parameter" top: "w" parameter_param { shape { dim: 2 dim: 6 } } }
      layer { name: "r" type: "Reshape" bottom: "w" top: "r" reshape_param { shape { dim: -1 dim: 3 } } }
      layer { name: "s" type: "Slice" bottom: "r" top: "a" top: "b" slice_param { axis: 0 } }
      layer { name: "loss" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "loss" }
      layer { name: "quiet" type: "Silence" bottom: "r" }
    '''
    param, source = io.parse_net_text(text, "net.prototxt")
    net = Net(param, TRAIN, source=source, dtype=numpy.float64)
    values = numpy.arange(12.0).reshape(2, 6)
    net.params["p"][0].data[...] = values
    loss = net.forward()
    a, b = values.reshape(4, 3)[:2], values.reshape(4, 3)[2:]
    assert loss == pytest.approx(((a - b) ** 2).sum() / 4)
    net.clear_param_diffs()
    net.backward()
    expected = numpy.concatenate([(a - b) / 2, (b - a) / 2]).reshape(2, 6)
    numpy.testing.assert_allclose(net.params["p"][0].diff, expected)
    assert "quiet" in net.layer_names and net.outputs == ["loss"]


# -- Reduction ----------------------------------------------------------------------------------
REDUCERS = {
    "SUM": lambda x: x.sum(axis=1),
    "ASUM": lambda x: numpy.abs(x).sum(axis=1),
    "SUMSQ": lambda x: (x * x).sum(axis=1),
    "MEAN": lambda x: x.mean(axis=1),
}


@pytest.mark.parametrize("operation", list(REDUCERS))
@pytest.mark.parametrize("axis, coeff", [(0, 1), (1, 2.5), (-1, -1), (2, 0.5)])
def test_reduction_forward_and_gradient(operation, axis, coeff):
    text = (f'name: "r" type: "Reduction" reduction_param {{ operation: {operation} '
            f'axis: {axis} coeff: {coeff} }}')
    x = random_input((2, 3, 4))
    (y,) = forward(make_layer(text), [blob_of(x)], tops())
    lead = x.shape[:axis % 3]
    assert y.shape == lead
    expected = coeff * REDUCERS[operation](x.reshape(int(numpy.prod(lead)), -1))
    numpy.testing.assert_allclose(y.reshape(-1), expected)
    check_gradient(make_layer(text), [blob_of(x)], tops(), kink_range=0.01, max_points=12)


# -- ArgMax ---------------------------------------------------------------------------------------
def argmax_reference(x, k):
    """Per row: indices of the k largest values, ties to the larger index."""
    order = sorted(range(len(x)), key=lambda i: (x[i], i), reverse=True)[:k]
    return order, [x[i] for i in order]


@pytest.mark.parametrize("top_k, out_max_val", [(1, False), (3, False), (1, True), (4, True)])
def test_argmax_per_item(top_k, out_max_val):
    x = numpy.round(random_input((3, 2, 5)), 1)   # rounding makes ties
    x[0, 0, :3] = 2.0
    text = (f'name: "a" type: "ArgMax" argmax_param {{ top_k: {top_k} '
            f'out_max_val: {str(out_max_val).lower()} }}')
    (y,) = forward(make_layer(text), [blob_of(x)], tops())
    assert y.shape == (3, 2 if out_max_val else 1, top_k)
    for n in range(3):
        indices, values = argmax_reference(list(x[n].reshape(-1)), top_k)
        numpy.testing.assert_array_equal(y[n, 0], indices)
        if out_max_val:
            numpy.testing.assert_array_equal(y[n, 1], values)


@pytest.mark.parametrize("axis, out_max_val", [(1, False), (1, True), (-1, False), (0, True)])
def test_argmax_along_an_axis(axis, out_max_val):
    x = numpy.round(random_input((3, 4, 5), seed=2), 1)
    text = (f'name: "a" type: "ArgMax" argmax_param {{ top_k: 2 axis: {axis} '
            f'out_max_val: {str(out_max_val).lower()} }}')
    (y,) = forward(make_layer(text), [blob_of(x)], tops())
    moved = numpy.moveaxis(x, axis, -1)
    expected = numpy.zeros(moved.shape[:-1] + (2,))
    for index in numpy.ndindex(*moved.shape[:-1]):
        indices, values = argmax_reference(list(moved[index]), 2)
        expected[index] = values if out_max_val else indices
    numpy.testing.assert_array_equal(y, numpy.moveaxis(expected, -1, axis))


def test_argmax_shape_for_4d_bottoms_and_errors():
    (y,) = forward(make_layer('name: "a" type: "ArgMax"'), [blob_of(random_input((2, 3, 4, 5)))], tops())
    assert y.shape == (2, 1, 1, 1)
    assert not make_layer('name: "a" type: "ArgMax"').allow_backward
    with pytest.raises(LayerError, match="top_k 6"):
        forward(make_layer('name: "a" type: "ArgMax" argmax_param { top_k: 6 axis: 1 }'),
                [blob_of(random_input((2, 5)))], tops())


# -- numpy vs cupy ----------------------------------------------------------------------------
@needs_gpu
@pytest.mark.parametrize("text, bottoms, n_tops, propagate", [
    (EMBED % "", [IDS], 1, [False]),
    ('name: "r" type: "Reshape" reshape_param { shape { dim: 0 dim: -1 } }', [random_input((2, 3, 4))], 1, None),
    ('name: "s" type: "Slice" slice_param { slice_point: 1 }', [random_input((2, 3, 4))], 2, None),
    ('name: "t" type: "Tile" tile_param { tiles: 3 }', [random_input((2, 3, 4))], 1, None),
    ('name: "r" type: "BatchReindex"', [random_input((4, 3)), numpy.array([3.0, 0.0, 3.0])], 1, [True, False]),
    ('name: "f" type: "Filter"', [random_input((4, 3)), numpy.array([1.0, 0.0, 1.0, 1.0])], 1, [True, False]),
    ('name: "r" type: "Reduction" reduction_param { operation: ASUM axis: 1 }', [random_input((2, 3, 4))], 1, None),
    ('name: "r" type: "Reduction" reduction_param { operation: SUMSQ coeff: 2 }', [random_input((2, 3, 4))], 1, None),
    ('name: "a" type: "ArgMax" argmax_param { top_k: 2 out_max_val: true }', [random_input((2, 3, 4))], 1, None),
    ('name: "a" type: "ArgMax" argmax_param { top_k: 2 axis: 1 }', [random_input((2, 3, 4))], 1, None),
])
def test_numpy_and_cupy_agree(text, bottoms, n_tops, propagate):
    assert_same_on_both_backends(text, bottoms, n_tops=n_tops, propagate=propagate)
