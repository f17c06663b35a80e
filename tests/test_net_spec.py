"""NetSpec as pycaffe scripts use it: `from pycaffe_dist import layers as L, params as P`."""
import numpy
import pytest
from google.protobuf import text_format

import pycaffe_dist as caffe
from pycaffe_dist import layers as L
from pycaffe_dist import params as P
from pycaffe_dist.proto import caffe_pb2


def lenet(source, batch_size):
    n = caffe.NetSpec()
    n.data, n.label = L.Data(batch_size=batch_size, backend=P.Data.LMDB, source=source,
                             transform_param=dict(scale=1. / 255), ntop=2,
                             include=dict(phase=caffe.TRAIN))
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type="xavier"),
                            param=[dict(lr_mult=1), dict(lr_mult=2)])
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.ip1 = L.InnerProduct(n.pool1, num_output=10, weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    n.loss = L.SoftmaxWithLoss(n.relu1, n.label, loss_weight=1)
    return n.to_proto()


EXPECTED = '''
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        transform_param { scale: 0.003921568859368563 }
        data_param { source: "train_lmdb" batch_size: 64 backend: LMDB } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 1 } param { lr_mult: 2 }
        convolution_param { num_output: 20 kernel_size: 5 weight_filler { type: "xavier" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1"
        inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" loss_weight: 1 }
'''


def test_lenet_matches_the_hand_written_prototxt_and_round_trips():
    proto = lenet("train_lmdb", 64)
    expected = text_format.Parse(EXPECTED, caffe_pb2.NetParameter())
    assert proto == expected
    # str() of the proto is prototxt that parses back to the same net.
    assert text_format.Parse(str(proto), caffe_pb2.NetParameter()) == proto


def test_generated_net_builds_and_runs(tmp_path):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 1, 12, 12]))
    n.conv = L.Convolution(n.data, kernel_size=3, num_output=4, pad=1,
                           weight_filler=dict(type="gaussian", std=0.1))
    n.pool = L.Pooling(n.conv, kernel_size=2, stride=2, pool=P.Pooling.AVE)
    n.ip = L.InnerProduct(n.pool, num_output=3, bias_filler=dict(type="constant", value=0.5))
    path = tmp_path / "spec.prototxt"
    path.write_text(str(n.to_proto()))
    net = caffe.Net(str(path), caffe.TEST)
    assert net.blobs["conv"].shape == (2, 4, 12, 12) and net.blobs["pool"].shape == (2, 4, 6, 6)
    numpy.testing.assert_array_equal(net.params["ip"][1].data, [0.5, 0.5, 0.5])
    x = numpy.random.default_rng(0).normal(size=(2, 1, 12, 12)).astype(numpy.float32)
    out = net.forward(data=x, blobs=["pool"])
    # The AVE pooling of the convolution, then the affine map, by hand.
    pooled = net.blobs["conv"].data.reshape(2, 4, 6, 2, 6, 2).mean(axis=(3, 5))
    numpy.testing.assert_allclose(out["pool"], pooled, rtol=1e-5, atol=1e-6)
    w, b = [p.data for p in net.params["ip"]]
    numpy.testing.assert_allclose(out["ip"], pooled.reshape(2, -1) @ w.T + b, rtol=1e-4, atol=1e-5)


def test_automatic_names_ntop_zero_and_shared_param_types():
    data = L.Input(shape=dict(dim=[1, 2, 4, 4]))
    up = L.Deconvolution(data, num_output=2, kernel_size=4, stride=2)
    proto = caffe.to_proto(L.ReLU(up), L.Silence(data, ntop=0))
    assert [(lp.name, lp.type, list(lp.top)) for lp in proto.layer] == [
        ("Input1", "Input", ["Input1"]), ("Deconvolution1", "Deconvolution", ["Deconvolution1"]),
        ("ReLU1", "ReLU", ["ReLU1"]), ("Silence1", "Silence", [])]
    assert proto.layer[1].convolution_param.stride == [2]
    n = caffe.NetSpec()
    n.x = data
    n["y"] = L.TanH(n.x, name="my_tanh")
    assert n.keys() == ["x", "y"] and n.y is n["y"]
    assert [lp.name for lp in n.to_proto().layer] == ["x", "my_tanh"]


def test_enums_and_mistakes():
    assert P.Pooling.MAX == caffe_pb2.PoolingParameter.MAX
    assert P.Eltwise.SUM == caffe_pb2.EltwiseParameter.SUM
    assert P.Data.LMDB == caffe_pb2.DataParameter.LMDB
    data = L.Input(shape=dict(dim=[1]))
    with pytest.raises(AttributeError, match="kernal_size"):
        caffe.to_proto(L.Convolution(data, kernal_size=3))
    with pytest.raises(TypeError, match="not a Top"):
        L.ReLU("data")
    with pytest.raises(AttributeError):
        assert P.NoSuchThing
    with pytest.raises(AttributeError):
        assert caffe.NetSpec().missing
