"""Prototxt reading: errors with file:line:col, legacy upgrades."""
import pytest

from pycaffe_dist.proto import caffe_pb2, io
from pycaffe_dist.proto.errors import ProtoError

V1_NET = '''name: "old"
input: "data"
input_dim: 10 input_dim: 1 input_dim: 28 input_dim: 28
layers {
  name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  convolution_param { num_output: 20 kernel_size: 5 }
}
layers { name: "loss" type: SOFTMAX_LOSS bottom: "conv1" bottom: "label" top: "loss" }
'''


def test_v1_layers_and_inputs_upgrade():
    net, _ = io.parse_net_text(V1_NET, "old.prototxt")
    assert len(net.layers) == 0 and len(net.input) == 0
    assert [lp.type for lp in net.layer] == ["Input", "Convolution", "SoftmaxWithLoss"]
    assert list(net.layer[0].input_param.shape[0].dim) == [10, 1, 28, 28]
    conv = net.layer[1]
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1, 1), (2, 0)]
    assert conv.convolution_param.num_output == 20


def test_unknown_field_names_file_line_and_column(tmp_path):
    path = tmp_path / "bad.prototxt"
    path.write_text('name: "n"\nlayer {\n  name: "a"\n  tpye: "ReLU"\n}\n')
    with pytest.raises(ProtoError) as e:
        io.read_net(str(path))
    assert str(e.value).startswith("%s:4:3: " % path)
    assert "tpye" in str(e.value)


def test_wrong_value_type_is_located(tmp_path):
    path = tmp_path / "bad.prototxt"
    path.write_text('layer {\n  name: "a"\n  convolution_param { num_output: "ten" }\n}\n')
    with pytest.raises(ProtoError) as e:
        io.read_net(str(path))
    assert str(e.value).startswith("%s:3:" % path)


def test_missing_and_binary_files_are_clear(tmp_path):
    with pytest.raises(ProtoError, match="no such file"):
        io.read_net(str(tmp_path / "none.prototxt"))
    binary = tmp_path / "model.caffemodel"
    binary.write_bytes(b"\x0a\xff\xfe\x00\x81")
    with pytest.raises(ProtoError, match="not UTF-8"):
        io.read_net(str(binary))


def test_solver_type_enum_upgrades(tmp_path):
    path = tmp_path / "solver.prototxt"
    path.write_text('net: "x.prototxt"\nsolver_type: ADAM\nbase_lr: 0.1\n')
    solver = io.read_solver(str(path))
    assert solver.type == "Adam" and not solver.HasField("solver_type")


def test_truncated_binary_is_reported(tmp_path):
    net = caffe_pb2.NetParameter(name="n")
    layer = net.layer.add(name="ip", type="InnerProduct")
    layer.blobs.add().data.extend([1.0] * 100)
    payload = net.SerializeToString()
    path = tmp_path / "cut.caffemodel"
    path.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(ProtoError, match="truncated or corrupt"):
        io.read_binary(str(path), caffe_pb2.NetParameter)


def test_write_atomic_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "a.bin"
    io.write_atomic(str(path), b"old")

    class Boom(bytes):
        pass

    with pytest.raises(TypeError):
        io.write_atomic(str(path), object())
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]
