"""Corrupt mean files (transform_param.mean_file): one clear error naming the file, nothing huge allocated.

Each file starts as compute_image_mean's real output for a real LMDB and is
then cut, replaced or rewritten with a hostile shape.
"""
import os
import tracemalloc

import numpy
import pytest

from pycaffe_dist import backend
from pycaffe_dist.blob import Blob
from pycaffe_dist.cli import main
from pycaffe_dist.data.datum import MeanError, load_mean
from pycaffe_dist.layers import dataset
from pycaffe_dist.layers.base import LayerError
from pycaffe_dist.proto import caffe_pb2
from pycaffe_dist.tools import compute_image_mean
from tests.data.helpers import TRAIN, data_param, run_layer, write_lmdb

SHAPE = (1, 3, 4)


@pytest.fixture(autouse=True)
def seeded():
    backend.set_random_seed(1)


@pytest.fixture
def made(tmp_path):
    """A real LMDB, its images, and the mean compute_image_mean wrote for it."""
    images = numpy.random.default_rng(0).integers(0, 256, (6,) + SHAPE, dtype=numpy.uint8)
    path = write_lmdb(str(tmp_path / "db"), images)
    mean = str(tmp_path / "mean.binaryproto")
    assert compute_image_mean.main([path, mean]) == 0
    return path, images, mean


def blob_of(path):
    blob = caffe_pb2.BlobProto()
    blob.ParseFromString(open(path, "rb").read())
    return blob


def test_a_good_mean_is_subtracted(made):
    path, images, mean = made
    datas, _ = run_layer(dataset.DataLayer, data_param(path, 6, mean_file=mean), TRAIN, 1)
    numpy.testing.assert_allclose(datas[0], images - images.astype(numpy.float64).mean(axis=0), atol=1e-4)


def rewrite(mean, how):
    raw = open(mean, "rb").read()
    blob = blob_of(mean)
    if how == "truncated":
        out = raw[:len(raw) // 2]
    elif how == "random bytes":
        out = numpy.random.default_rng(1).bytes(len(raw))
    elif how == "empty":
        out = b""
    elif how == "a NetParameter":
        out = caffe_pb2.NetParameter(name="lenet", layer=[caffe_pb2.LayerParameter(name="ip", type="ReLU")]) \
            .SerializeToString()
    elif how == "huge legacy shape":
        blob.height, blob.width = 100000, 100000
        out = blob.SerializeToString()
    elif how == "huge shape wrapping int64":
        blob.shape.dim.extend([2 ** 32, 2 ** 32, 1, 12])
        out = blob.SerializeToString()
    elif how == "negative dims":
        blob.channels, blob.height = -1, -3
        out = blob.SerializeToString()
    elif how == "two images":
        blob.num, blob.width = 2, 2          # still the 12 values the file holds
        out = blob.SerializeToString()
    open(mean, "wb").write(out)


CASES = {
    "truncated": "not a valid BlobProto file (truncated or corrupt",
    "random bytes": "not a valid BlobProto file (truncated or corrupt",
    "empty": "holds no values (not a mean .binaryproto",
    "a NetParameter": "holds no values (not a mean .binaryproto",
    "huge legacy shape": "shape 1x1x100000x100000 declares 10000000000 values but the file holds 12",
    "huge shape wrapping int64": "shape 4294967296x4294967296x1x12 declares 221360928884514619392 values but "
                                 "the file holds 12",
    "negative dims": "negative dimension in shape 1x-1x-3x4",
    "two images": "a mean file holds one image, found num=2",
}


@pytest.mark.parametrize("how", list(CASES))
def test_a_corrupt_mean_file_is_one_error_naming_it(made, how):
    path, _, mean = made
    rewrite(mean, how)
    tracemalloc.start()
    try:
        with pytest.raises(MeanError) as caught:
            load_mean(mean)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(caught.value).startswith(f"{mean}: {CASES[how]}")
    assert peak < 1 << 20          # the file is a few hundred bytes; so is everything read for it
    with pytest.raises(LayerError, match=r"^layer 'data' \(Data\): mean_file " + f"{mean}: "):
        run_layer(dataset.DataLayer, data_param(path, 2, mean_file=mean), TRAIN, 1)


def test_a_mean_of_another_size_is_refused_at_setup(made, tmp_path):
    path, _, _ = made
    other = write_lmdb(str(tmp_path / "other"), numpy.zeros((2, 3, 4, 5), numpy.uint8))
    wrong = str(tmp_path / "other_mean.binaryproto")
    assert compute_image_mean.main([other, wrong]) == 0
    layer = dataset.DataLayer(data_param(path, 2, mean_file=wrong), TRAIN)
    with pytest.raises(LayerError, match=f"mean_file {wrong} is 3x4x5 but the data is 1x3x4"):
        layer.setup([], [Blob((1,)), Blob((1,))])   # before any batch is read
    assert layer._pipeline is None


NET = '''
layer { name: "data" type: "Data" top: "data" top: "label"
  transform_param { mean_file: "mean.binaryproto" } data_param { source: "db" batch_size: 2 backend: LMDB } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
'''


def test_through_train_it_is_one_line(made, tmp_path, monkeypatch, capsys):
    rewrite(made[2], "truncated")
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text('net: "net.prototxt" base_lr: 0.1 max_iter: 2 lr_policy: "fixed"\n')
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--solver", "solver.prototxt"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if " error: " in line or "Traceback" in line]
    assert len(err) == 1, err
    assert "layer 'data' (Data): mean_file mean.binaryproto: not a valid BlobProto file" in err[0]
    assert os.path.exists(tmp_path / "mean.binaryproto")
