"""`pycaffe-dist extract_features` on an LMDB made by convert_mnist_data."""
import numpy
import pytest

import pycaffe_dist as caffe
from pycaffe_dist.cli import main
from pycaffe_dist.data import datum, db, idx

NET = '''
name: "feat"
layer { name: "data" type: "Data" top: "data" top: "label"
        transform_param { scale: 0.00390625 }
        data_param { source: "%s" batch_size: 5 backend: LMDB } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 }
                              bias_filler { type: "constant" value: 0.5 } } }
'''


@pytest.fixture
def model(tmp_path):
    rng = numpy.random.default_rng(0)
    images = rng.integers(0, 256, (12, 4, 4), dtype=numpy.uint8)
    idx.write_idx(tmp_path / "images", images)
    idx.write_idx(tmp_path / "labels", numpy.arange(12, dtype=numpy.uint8) % 10)
    assert main(["convert_mnist_data", str(tmp_path / "images"), str(tmp_path / "labels"),
                 str(tmp_path / "db")]) == 0
    (tmp_path / "net.prototxt").write_text(NET % (tmp_path / "db"))
    net = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST)
    net.save(str(tmp_path / "w.caffemodel"))
    return tmp_path, images, [p.data.copy() for p in net.params["ip"]]


def read(path):
    with db.Reader(str(path)) as reader:
        return [(k.decode(), datum.parse(v)) for k, v in reader.items()]


def test_features_of_three_batches(model):
    tmp_path, images, (w, b) = model
    assert main(["extract_features", str(tmp_path / "w.caffemodel"), str(tmp_path / "net.prototxt"),
                 "ip,label", "%s,%s" % (tmp_path / "ip_db", tmp_path / "label_db"), "3", "lmdb", "CPU"]) == 0
    ip, label = read(tmp_path / "ip_db"), read(tmp_path / "label_db")
    assert [k for k, _ in ip] == ["%010d" % i for i in range(15)]
    # The reader wraps after 12 records: items 12..14 are images 0..2 again.
    x = images[numpy.arange(15) % 12].reshape(15, -1) / 256.0
    expected = x @ w.T + b
    for (_, d), row in zip(ip, expected):
        assert (d.channels, d.height, d.width) == (3, 1, 1)
        numpy.testing.assert_allclose(d.float_data, row, rtol=1e-5, atol=1e-6)
    assert [d.float_data[0] for _, d in label] == [float(i % 12 % 10) for i in range(15)]


def test_mistakes_are_one_line_errors(model, capsys):
    tmp_path, _, _ = model
    args = [str(tmp_path / "w.caffemodel"), str(tmp_path / "net.prototxt")]
    assert main(["extract_features"] + args + ["ip,label", str(tmp_path / "one_db"), "1"]) == 1
    assert "one database per blob" in capsys.readouterr().err
    assert main(["extract_features"] + args + ["fc7", str(tmp_path / "x_db"), "1"]) == 1
    assert "no blob named 'fc7'" in capsys.readouterr().err
    assert not (tmp_path / "x_db").exists()
    assert main(["extract_features"] + args + ["ip", str(tmp_path / "y_db"), "1", "leveldb"]) == 1
