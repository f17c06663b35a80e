"""Pure NetParameter rewrites: state rules and Split insertion (no arrays)."""
from google.protobuf import text_format

from pycaffe_dist import graph
from pycaffe_dist.proto import caffe_pb2
from pycaffe_dist.proto.errors import ProtoError
import pytest


def net_of(text):
    return text_format.Parse(text, caffe_pb2.NetParameter())


def names(net):
    return [lp.name for lp in net.layer]


def test_phase_level_stage_rules():
    net = net_of('''
      layer { name: "train_only" include { phase: TRAIN } }
      layer { name: "test_only" include { phase: TEST } }
      layer { name: "level2" include { min_level: 2 } }
      layer { name: "upto1" include { max_level: 1 } }
      layer { name: "deploy" include { stage: "deploy" } }
      layer { name: "not_deploy" exclude { stage: "deploy" } }
      layer { name: "needs_a_not_b" include { stage: "a" not_stage: "b" } }
      layer { name: "always" }
    ''')
    train = graph.filter_net(net, graph.make_state(caffe_pb2.TRAIN))
    assert names(train) == ["train_only", "upto1", "not_deploy", "always"]
    test = graph.filter_net(net, graph.make_state(caffe_pb2.TEST, level=2, stages=["deploy", "a"]))
    assert names(test) == ["test_only", "level2", "deploy", "needs_a_not_b", "always"]
    ab = graph.filter_net(net, graph.make_state(caffe_pb2.TEST, stages=["a", "b"]))
    assert "needs_a_not_b" not in names(ab)


def test_include_and_exclude_together_is_an_error():
    net = net_of('layer { name: "x" include { phase: TRAIN } exclude { phase: TEST } }')
    with pytest.raises(ProtoError, match="both include and exclude"):
        graph.filter_net(net, graph.make_state(caffe_pb2.TRAIN))


def test_splits_follow_caffe_naming_and_in_place_chains():
    net = net_of('''
      layer { name: "data" type: "Input" top: "data" }
      layer { name: "relu" type: "ReLU" bottom: "data" top: "data" }
      layer { name: "a" type: "InnerProduct" bottom: "data" top: "a" }
      layer { name: "b" type: "InnerProduct" bottom: "data" top: "b" }
      layer { name: "c" type: "Eltwise" bottom: "a" bottom: "b" top: "c" }
    ''')
    out = graph.insert_splits(net)
    assert names(out) == ["data", "relu", "data_relu_0_split", "a", "b", "c"]
    split = out.layer[2]
    assert list(split.bottom) == ["data"]
    assert list(split.top) == ["data_relu_0_split_0", "data_relu_0_split_1"]
    assert list(out.layer[3].bottom) == ["data_relu_0_split_0"]
    assert list(out.layer[4].bottom) == ["data_relu_0_split_1"]


def test_split_of_a_weighted_loss_top_carries_the_weight_on_its_first_top():
    net = net_of('''
      layer { name: "data" type: "Input" top: "x" }
      layer { name: "l" type: "EuclideanLoss" bottom: "x" bottom: "x" top: "loss" loss_weight: 2 }
      layer { name: "use" type: "Power" bottom: "loss" top: "y" }
    ''')
    out = graph.insert_splits(net)
    split = [lp for lp in out.layer if lp.name == "loss_l_0_split"][0]
    assert list(split.loss_weight) == [2.0, 0.0]
    loss_layer = [lp for lp in out.layer if lp.name == "l"][0]
    assert list(loss_layer.loss_weight) == [0.0]
    assert list(out.layer[-1].bottom) == ["loss_l_0_split_1"]


def test_missing_bottom_names_layer_and_index():
    net = net_of('layer { name: "a" type: "Input" top: "x" }\n'
                 'layer { name: "b" type: "ReLU" bottom: "x" bottom: "nope" top: "y" }')
    with pytest.raises(ProtoError, match=r"layer 'b' bottom\[1\] 'nope' is not produced"):
        graph.check_bottoms(net)
