"""upgrade_net_proto_text, upgrade_net_proto_binary, upgrade_solver_proto_text on V1 files."""
import numpy
from google.protobuf import text_format

from pycaffe_dist import cli
from pycaffe_dist.net import Net, TEST
from pycaffe_dist.proto import caffe_pb2, io
from pycaffe_dist.tools import upgrade_net_proto_binary, upgrade_net_proto_text, upgrade_solver_proto_text

V1_DEPLOY = '''name: "old"
input: "data"
input_dim: 2 input_dim: 3 input_dim: 8 input_dim: 8
layers {
  name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } }
}
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
layers { name: "fc" type: INNER_PRODUCT bottom: "conv1" top: "fc" inner_product_param { num_output: 5 } }
layers { name: "prob" type: SOFTMAX bottom: "fc" top: "prob" }
'''

V1_DATA = '''name: "old_train"
layers {
  name: "data" type: DATA top: "data" top: "label"
  data_param { source: "train_lmdb" backend: LMDB batch_size: 64 scale: 0.00390625
               mean_file: "mean.binaryproto" crop_size: 227 mirror: true }
  include { phase: TRAIN }
}
layers { name: "bn" type: SPLIT bottom: "data" top: "d1" }
'''


def upgrade_text(tmp_path, text, module=upgrade_net_proto_text, message=caffe_pb2.NetParameter):
    src, out = tmp_path / "in.prototxt", tmp_path / "out.prototxt"
    src.write_text(text)
    assert module.main([str(src), str(out)]) == 0
    return text_format.Parse(out.read_text(), message()), out


def test_v1_deploy_becomes_layers_with_an_input_layer(tmp_path):
    net, out = upgrade_text(tmp_path, V1_DEPLOY)
    assert not net.layers and not net.input and not net.input_dim
    assert [(lp.name, lp.type) for lp in net.layer] == [
        ("input", "Input"), ("conv1", "Convolution"), ("relu1", "ReLU"), ("fc", "InnerProduct"),
        ("prob", "Softmax")]
    assert list(net.layer[0].top) == ["data"]
    assert list(net.layer[0].input_param.shape[0].dim) == [2, 3, 8, 8]
    assert [(p.lr_mult, p.decay_mult) for p in net.layer[1].param] == [(1, 1), (2, 0)]
    assert net.layer[1].convolution_param.weight_filler.type == "xavier"
    built = Net(str(out), TEST)                 # the written file builds as it is
    assert built.blobs["prob"].shape == (2, 5)


def test_v1_data_layer_moves_transformation_fields(tmp_path):
    net, _ = upgrade_text(tmp_path, V1_DATA)
    data = net.layer[0]
    assert data.type == "Data" and data.include[0].phase == caffe_pb2.TRAIN
    t = data.transform_param
    assert (t.scale, t.mean_file, t.crop_size, t.mirror) == (0.00390625, "mean.binaryproto", 227, True)
    for name in ("scale", "mean_file", "crop_size", "mirror"):
        assert not data.data_param.HasField(name)
    assert data.data_param.source == "train_lmdb" and data.data_param.batch_size == 64


def test_current_file_is_written_unchanged_and_said_so(tmp_path, caplog):
    current = 'name: "n"\nlayer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 } } }\n'
    with caplog.at_level("INFO", logger="pycaffe_dist"):
        net, _ = upgrade_text(tmp_path, current)
    assert net == text_format.Parse(current, caffe_pb2.NetParameter())
    assert "File already in latest proto format" in caplog.text


def test_old_batch_norm_params_are_frozen(tmp_path):
    text = ('layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x" '
            'param { lr_mult: 1 } param { lr_mult: 1 } param { lr_mult: 1 decay_mult: 1 } }')
    net, _ = upgrade_text(tmp_path, text)
    assert [(p.lr_mult, p.decay_mult) for p in net.layer[0].param] == [(0, 0)] * 3


def test_solver_type_enum_and_inline_v1_net(tmp_path):
    text = ('solver_type: NESTEROV base_lr: 0.01 momentum: 0.9 max_iter: 10\n'
            'net_param { layers { name: "ip" type: INNER_PRODUCT blobs_lr: 3 } }\n')
    solver, _ = upgrade_text(tmp_path, text, upgrade_solver_proto_text, caffe_pb2.SolverParameter)
    assert solver.type == "Nesterov" and not solver.HasField("solver_type")
    assert solver.base_lr == numpy.float32(0.01)
    layer = solver.net_param.layer[0]
    assert layer.type == "InnerProduct" and layer.param[0].lr_mult == 3


def test_binary_v1_caffemodel_loads_after_upgrade(tmp_path):
    old = caffe_pb2.NetParameter(name="old")
    old.input.append("data")       # old caffemodels name their input without a shape
    ip = old.layers.add(name="fc", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT)
    weights, bias = numpy.arange(15.0).reshape(5, 3), numpy.arange(5.0)
    for values, (height, width) in ((weights, (5, 3)), (bias, (1, 5))):   # legacy 4-D shapes
        blob = ip.blobs.add(num=1, channels=1, height=height, width=width)
        blob.data.extend(values.reshape(-1).tolist())
    src, out = tmp_path / "old.caffemodel", tmp_path / "new.caffemodel"
    src.write_bytes(old.SerializeToString())
    assert upgrade_net_proto_binary.main([str(src), str(out)]) == 0
    new = caffe_pb2.NetParameter.FromString(out.read_bytes())
    assert not new.layers and not new.input and new.layer[0].type == "InnerProduct"
    param, source = io.parse_net_text(
        'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
        'layer { name: "fc" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 5 } }')
    net = Net(param, TEST, source=source, weights=str(out))
    numpy.testing.assert_array_equal(net.params["fc"][0].data, weights)
    numpy.testing.assert_array_equal(net.params["fc"][1].data, bias)


def test_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    src, out = tmp_path / "v0.prototxt", tmp_path / "out.prototxt"
    src.write_text('layers { layer { name: "conv" type: "conv" } }\n')
    assert upgrade_net_proto_text.main([str(src), str(out)]) == 1
    assert "V0 format" in capsys.readouterr().err and not out.exists()
    assert upgrade_net_proto_text.main([str(tmp_path / "missing"), str(out)]) == 1
    assert "no such file" in capsys.readouterr().err


def test_subcommands_are_wired_into_the_cli(tmp_path):
    src, out = tmp_path / "in.prototxt", tmp_path / "out.prototxt"
    src.write_text(V1_DEPLOY)
    assert cli.main(["upgrade_net_proto_text", str(src), str(out)]) == 0
    assert io.read_net(str(out))[0].layer[1].type == "Convolution"
