"""HDF5Output: Caffe's file layout, rows appended per forward, read back by HDF5Data."""
import numpy
import pytest

from pycaffe_dist.layers import LayerError, hdf5_output
from pycaffe_dist.net import Net, TEST
from pycaffe_dist.proto import io
from tests.layers.test_common import blob_of, forward, make_layer, random_input

h5py = pytest.importorskip("h5py")


def layer_writing(path):
    return make_layer('name: "out" type: "HDF5Output" hdf5_output_param { file_name: "%s" }' % path)


def test_writes_data_and_label_with_legacy_4d_shapes(tmp_path):
    path = tmp_path / "out.h5"
    layer = layer_writing(path)
    data, label = random_input((3, 2, 4)), numpy.array([1.0, 0.0, 2.0])
    forward(layer, [blob_of(data), blob_of(label)], [])
    with h5py.File(path, "r") as f:    # readable while the layer still holds it open
        assert sorted(f) == ["data", "label"]
        assert f["data"].shape == (3, 2, 4, 1) and f["label"].shape == (3, 1, 1, 1)
        assert f["data"].dtype == numpy.float64
        numpy.testing.assert_array_equal(f["data"][()].reshape(3, 2, 4), data)
        numpy.testing.assert_array_equal(f["label"][()].reshape(3), label)
    layer.close()


def test_each_forward_appends_its_rows(tmp_path):
    path = tmp_path / "out.h5"
    layer = layer_writing(path)
    batches = [random_input((2, 3), seed=k) for k in range(3)]
    bottom = [blob_of(batches[0]), blob_of(numpy.zeros(2))]
    layer.setup(bottom, [])
    for k, batch in enumerate(batches):
        bottom[0].data[...] = batch
        bottom[1].data[...] = k
        layer.forward(bottom, [])
    layer.close()
    with h5py.File(path, "r") as f:
        numpy.testing.assert_array_equal(f["data"][()].reshape(6, 3), numpy.concatenate(batches))
        numpy.testing.assert_array_equal(f["label"][()].reshape(6), [0, 0, 1, 1, 2, 2])
    with pytest.raises(LayerError, match="closed"):
        layer.forward(bottom, [])


def test_round_trip_through_hdf5_data_in_a_net(tmp_path):
    source = tmp_path / "in.h5"
    data = numpy.random.default_rng(0).normal(size=(4, 2, 3, 3)).astype(numpy.float32)
    label = numpy.arange(4, dtype=numpy.float32)
    with h5py.File(source, "w") as f:
        f["data"], f["label"] = data, label
    (tmp_path / "list.txt").write_text(str(source) + "\n")
    text = '''
    layer { name: "in" type: "HDF5Data" top: "data" top: "label"
            hdf5_data_param { source: "%s" batch_size: 4 } }
    layer { name: "out" type: "HDF5Output" bottom: "data" bottom: "label"
            hdf5_output_param { file_name: "%s" } }
    ''' % (tmp_path / "list.txt", tmp_path / "out.h5")
    param, where = io.parse_net_text(text)
    net = Net(param, TEST, source=where)
    net.forward()
    net.layers[1].close()
    with h5py.File(tmp_path / "out.h5", "r") as f:
        numpy.testing.assert_array_equal(f["data"][()], data)
        numpy.testing.assert_array_equal(f["label"][()].reshape(4), label)
        assert f["data"].dtype == numpy.float32


def test_rows_must_match(tmp_path):
    with pytest.raises(LayerError, match="data has .3,. rows but label has .2,."):
        forward(layer_writing(tmp_path / "x.h5"), [blob_of(numpy.zeros((3, 1))), blob_of(numpy.zeros(2))], [])


def test_without_h5py_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(hdf5_output, "h5py_available", False)
    with pytest.raises(LayerError, match="'out'.*needs h5py"):
        forward(layer_writing(tmp_path / "x.h5"), [blob_of(numpy.zeros((1, 1))), blob_of(numpy.zeros(1))], [])
