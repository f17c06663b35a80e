"""Input, DummyData, MemoryData: shapes, fillers, batches, wrapping, saved cursors."""
import json

import numpy
import pytest
from google.protobuf import text_format

from pycaffe_dist import backend
from pycaffe_dist.blob import Blob
from pycaffe_dist.layers import LayerError, layer_class
from pycaffe_dist.proto import caffe_pb2


def make_layer(text, phase=0):
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    return layer_class(param.type)(param, phase)


def tops(n):
    return [Blob(()) for _ in range(n)]


def setup(text, n_tops):
    layer, top = make_layer(text), tops(n_tops)
    layer.setup([], top)
    return layer, top


def step(layer, top):
    layer.reshape([], top)
    layer.forward([], top)
    return [t.data.copy() for t in top]


# -- Input -------------------------------------------------------------------------
def test_input_one_shape_per_top():
    layer, top = setup('name: "in" type: "Input" input_param { shape { dim: 2 dim: 3 } '
                       'shape { dim: 4 } }', 2)
    assert [t.shape for t in top] == [(2, 3), (4,)]
    top[0].data[...] = 7.0
    step(layer, top)
    assert (top[0].data == 7.0).all()   # forward leaves the user's values alone


def test_input_single_shape_serves_all_tops_and_user_reshape_sticks():
    layer, top = setup('name: "in" type: "Input" input_param { shape { dim: 1 dim: 2 } }', 3)
    assert [t.shape for t in top] == [(1, 2)] * 3
    top[0].reshape(5, 2)
    layer.reshape([], top)
    assert top[0].shape == (5, 2)


def test_input_shape_count_mismatch():
    with pytest.raises(LayerError, match="2 input_param.shape for 3 tops"):
        setup('name: "in" type: "Input" input_param { shape { dim: 1 } shape { dim: 2 } }', 3)


# -- DummyData ------------------------------------------------------------------------
def test_dummy_data_shapes_and_default_zero_fill():
    layer, top = setup('name: "d" type: "DummyData" dummy_data_param { '
                       'shape { dim: 2 dim: 3 } shape { dim: 4 dim: 1 dim: 2 dim: 2 } }', 2)
    assert [t.shape for t in top] == [(2, 3), (4, 1, 2, 2)]
    for data in step(layer, top):
        assert (data == 0).all()


def test_dummy_data_legacy_dimensions_one_for_all():
    layer, top = setup('name: "d" type: "DummyData" dummy_data_param { num: 5 channels: 3 '
                       'height: 2 width: 4 data_filler { type: "constant" value: 1.5 } }', 2)
    assert [t.shape for t in top] == [(5, 3, 2, 4)] * 2
    assert all((data == 1.5).all() for data in step(layer, top))


def test_dummy_data_refills_random_tops_only():
    backend.set_random_seed(5)
    layer, top = setup('name: "d" type: "DummyData" dummy_data_param { '
                       'shape { dim: 50 } shape { dim: 3 } '
                       'data_filler { type: "gaussian" std: 1 } '
                       'data_filler { type: "constant" value: 2 } }', 2)
    first = step(layer, top)
    second = step(layer, top)
    assert (first[0] != second[0]).any()
    assert abs(float(second[0].std()) - 1.0) < 0.35
    assert (second[1] == 2).all()


def test_dummy_data_errors():
    with pytest.raises(LayerError, match="data_filler"):
        setup('name: "d" type: "DummyData" dummy_data_param { shape { dim: 1 } '
              'data_filler { value: 1 } data_filler { value: 2 } }', 3)
    with pytest.raises(LayerError, match="not both"):
        setup('name: "d" type: "DummyData" dummy_data_param { shape { dim: 1 } num: 1 '
              'channels: 1 height: 1 width: 1 }', 1)
    with pytest.raises(LayerError, match="legacy"):
        setup('name: "d" type: "DummyData" dummy_data_param { num: 1 channels: 1 }', 1)


# -- MemoryData ------------------------------------------------------------------------
MEMORY = ('name: "mem" type: "MemoryData" memory_data_param { batch_size: 2 channels: 1 '
          'height: 2 width: 3 } %s')


def memory_arrays(n=6):
    data = numpy.arange(n * 6, dtype=numpy.float32).reshape(n, 1, 2, 3)
    labels = numpy.arange(n, dtype=numpy.float32) * 10
    return data, labels


def test_memory_data_serves_batches_and_wraps():
    layer, top = setup(MEMORY % "", 2)
    assert [t.shape for t in top] == [(2, 1, 2, 3), (2,)]
    data, labels = memory_arrays()
    layer.set_input_arrays(data, labels)
    served = [step(layer, top) for _ in range(4)]
    for k, (batch, label) in enumerate(served):
        items = [(2 * k) % 6, (2 * k) % 6 + 1]
        numpy.testing.assert_array_equal(batch, data[items])
        numpy.testing.assert_array_equal(label, labels[items])


def test_memory_data_applies_transform_scale():
    layer, top = setup(MEMORY % "transform_param { scale: 0.5 }", 2)
    data, labels = memory_arrays(2)
    layer.set_input_arrays(data, labels)
    batch, label = step(layer, top)
    numpy.testing.assert_allclose(batch, data * 0.5)
    numpy.testing.assert_array_equal(label, labels)


def test_memory_data_state_restores_the_cursor():
    data, labels = memory_arrays(8)
    layer, top = setup(MEMORY % "", 2)
    layer.set_input_arrays(data, labels)
    step(layer, top)
    state = json.loads(json.dumps(layer.get_state()))
    expected = [step(layer, top) for _ in range(5)]

    resumed, resumed_top = setup(MEMORY % "", 2)
    resumed.set_input_arrays(data, labels)
    resumed.set_state(state)
    got = [step(resumed, resumed_top) for _ in range(5)]
    for (b1, l1), (b2, l2) in zip(expected, got):
        numpy.testing.assert_array_equal(b1, b2)
        numpy.testing.assert_array_equal(l1, l2)

    # a cursor restored before the arrays arrive applies to them
    early, early_top = setup(MEMORY % "", 2)
    early.set_state(state)
    early.set_input_arrays(data, labels)
    numpy.testing.assert_array_equal(step(early, early_top)[0], expected[0][0])


def test_memory_data_errors():
    layer, top = setup(MEMORY % "", 2)
    with pytest.raises(LayerError, match="set_input_arrays"):
        step(layer, top)
    data, labels = memory_arrays(3)
    with pytest.raises(LayerError, match="multiple of batch_size 2"):
        layer.set_input_arrays(data, labels)
    with pytest.raises(LayerError, match="expected"):
        layer.set_input_arrays(numpy.zeros((2, 3, 2, 3), numpy.float32), labels[:2])
    with pytest.raises(LayerError, match="labels"):
        layer.set_input_arrays(data[:2], labels[:1])
