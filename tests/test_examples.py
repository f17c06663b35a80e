"""examples/lenet_netspec.py, shortened, on a small LMDB made from synthetic IDX files."""
import importlib.util
import os

import numpy
from google.protobuf import text_format
from PIL import Image

from pycaffe_dist.cli import main as cli
from pycaffe_dist.data import idx
from pycaffe_dist.proto import caffe_pb2
from pycaffe_dist.tools.parse_log import parse_log

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "lenet_netspec.py")


def make_lmdb(tmp_path, name, n, seed):
    """Two classes a LeNet tells apart at once: bright top half (0) or bright bottom half (1)."""
    rng = numpy.random.default_rng(seed)
    labels = rng.integers(0, 2, n).astype(numpy.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(numpy.uint8)
    for image, label in zip(images, labels):
        image[14 * label:14 * label + 14] += 150
    idx.write_idx(tmp_path / (name + "-images"), images)
    idx.write_idx(tmp_path / (name + "-labels"), labels)
    db = str(tmp_path / (name + "_lmdb"))
    assert cli(["convert_mnist_data", str(tmp_path / (name + "-images")), str(tmp_path / (name + "-labels")), db]) == 0
    return db


def test_short_run_writes_nets_log_and_pictures(tmp_path):
    train, test = make_lmdb(tmp_path, "train", 160, 0), make_lmdb(tmp_path, "test", 40, 1)
    spec = importlib.util.spec_from_file_location("lenet_netspec", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = tmp_path / "out"
    accuracy = example.main(["--train-lmdb", train, "--test-lmdb", test, "--iters", "30", "--batch", "16",
                             "--test-batch", "20", "--test-iters", "2", "--test-interval", "15",
                             "--display", "5", "--out", str(out)])
    # Thirty steps are plenty for halves this different.
    assert accuracy >= 0.9
    for name in ("lenet_train.prototxt", "lenet_test.prototxt"):
        net = text_format.Parse((out / name).read_text(), caffe_pb2.NetParameter())
        assert [lp.name for lp in net.layer][:3] == ["data", "conv1", "pool1"]
    train_rows, test_rows = parse_log(str(out / "lenet_train.log"))
    assert [r["NumIters"] for r in train_rows] == [0, 5, 10, 15, 20, 25]
    assert [r["NumIters"] for r in test_rows] == [0, 15, 30] and test_rows[-1]["accuracy"] >= 0.9
    with Image.open(out / "lenet_curves.png") as im:
        assert im.size == (1200, 800)
    assert (out / "lenet_net.png").exists() or (out / "lenet_net.dot").exists()
