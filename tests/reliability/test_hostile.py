"""Hostile or corrupt files: a clear error naming the layer or file, never a huge allocation or a crash."""
import os

import numpy
import pytest

from pycaffe_dist import Net, TEST
from pycaffe_dist.blob import Blob
from pycaffe_dist.cli import main
from pycaffe_dist.net import NetError
from pycaffe_dist.proto import caffe_pb2, io
from pycaffe_dist.proto.errors import ProtoError

from .test_crash import setup

INPUT = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 6 } } }\n'


def net_file(tmp_path, text):
    path = tmp_path / "net.prototxt"
    path.write_text('name: "h"\n' + text)
    return str(path)


def test_absurd_num_output_names_the_layer_and_the_shape(tmp_path):
    path = net_file(tmp_path, INPUT + 'layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"\n'
                                      '  inner_product_param { num_output: 2000000000 } }\n')
    with pytest.raises(NetError, match=r"net.prototxt:3:1: layer 'ip1' \(InnerProduct\): "
                                       r"blob shape 2000000000 x 6 holds 12000000000 elements"):
        Net(path, TEST)


def test_absurd_input_shape_names_the_layer(tmp_path):
    path = net_file(tmp_path, 'layer { name: "data" type: "Input" top: "data"\n'
                              '  input_param { shape { dim: 1000000 dim: 1000000 } } }\n')
    with pytest.raises(NetError, match=r"net.prototxt:2:1: layer 'data' \(Input\): blob shape 1000000 x 1000000"):
        Net(path, TEST)


def test_a_blob_larger_than_memory_is_refused_before_allocating(monkeypatch):
    from pycaffe_dist import blob
    monkeypatch.setattr(blob, "_physical_memory", lambda: 2 ** 20)     # a 1 MiB machine
    with pytest.raises(ValueError, match="blob shape 1000 x 1000 needs 0.0 GiB .* more than this machine's"):
        Blob((1000, 1000))
    Blob((100, 100))


def test_absurd_sizes_on_the_command_line_are_one_line(tmp_path, monkeypatch, capsys):
    setup(tmp_path, width=6, max_iter=2, snapshot=0)
    text = (tmp_path / "wide.prototxt").read_text().replace("num_output: 3", "num_output: 2000000000")
    (tmp_path / "wide.prototxt").write_text(text)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--solver", "solver.prototxt"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "layer 'ip1' (InnerProduct): blob shape 2000000000 x 6" in err.strip().splitlines()[-1]


@pytest.fixture
def trained(tmp_path, monkeypatch):
    setup(tmp_path, width=6, max_iter=2, snapshot=2)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--solver", "solver.prototxt"]) == 0
    return tmp_path


def test_a_solverstate_given_as_weights_is_one_clear_line(trained, capsys):
    capsys.readouterr()
    assert main(["train", "--solver", "solver.prototxt", "--weights", "snaps/wide_iter_2.solverstate"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "snaps/wide_iter_2.solverstate" in err.strip().splitlines()[-1]


def test_random_bytes_as_weights_and_as_snapshot_are_one_clear_line(trained, capsys):
    rng = numpy.random.default_rng(9)
    (trained / "junk.bin").write_bytes(rng.integers(0, 256, 4096, dtype=numpy.uint8).tobytes())
    for flag in ("--weights", "--snapshot"):
        capsys.readouterr()
        assert main(["train", "--solver", "solver.prototxt", flag, "junk.bin"]) == 1, flag
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert "junk.bin" in err.strip().splitlines()[-1], err


def test_a_truncated_solverstate_is_refused(trained, capsys):
    raw = (trained / "snaps/wide_iter_2.solverstate").read_bytes()
    (trained / "cut.solverstate").write_bytes(raw[:len(raw) // 2])
    with pytest.raises(ProtoError, match="cut.solverstate: not a valid SolverState"):
        io.read_binary("cut.solverstate", caffe_pb2.SolverState)
    capsys.readouterr()
    assert main(["train", "--solver", "solver.prototxt", "--snapshot", "cut.solverstate"]) == 1
    assert "cut.solverstate" in capsys.readouterr().err.strip().splitlines()[-1]


def test_nothing_read_from_disk_goes_through_pickle():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    offenders = []
    for folder, _, names in os.walk(os.path.join(root, "pycaffe_dist")):
        for name in names:
            if name.endswith(".py"):
                text = open(os.path.join(folder, name), encoding="utf-8").read()
                # multiprocessing pickles between this program's own processes; nothing from disk
                for call in ("import pickle", "pickle.load", "allow_pickle=True", "numpy.load(", "np.load("):
                    if call in text:
                        offenders.append((name, call))
    assert not offenders, offenders
