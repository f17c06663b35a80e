"""Net construction and execution: wiring, flat parameters, backward rules, files."""
import numpy
import pytest

from pycaffe_dist.net import Net, TEST, TRAIN
from pycaffe_dist.net import NetError
from pycaffe_dist.proto import caffe_pb2, io

MLP = '''
name: "mlp"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        param { lr_mult: 1 } param { lr_mult: 2 }
        inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip2" bottom: "label" top: "acc"
        include { phase: TEST } }
'''


def build(text, phase=TRAIN, **kw):
    param, source = io.parse_net_text(text, "net.prototxt")
    return Net(param, phase, source=source, **kw)


def test_wiring_splits_and_outputs():
    train = build(MLP)
    assert train.layer_names == ["data", "ip1", "relu1", "ip2", "loss"]
    assert train.outputs == ["loss"] and train.inputs == ["data", "label"]
    test = build(MLP, TEST)
    # ip2 and label are each read twice in TEST: Caffe's split names.
    assert "ip2_ip2_0_split" in test.layer_names and "label_data_1_split" in test.layer_names
    assert test.outputs == ["loss", "acc"]
    assert test.blobs["ip2"].shape == (4, 2)


def test_parameters_live_in_one_flat_buffer():
    net = build(MLP)
    blobs = [b for layer in net.params.values() for b in layer]
    assert net.flat_data.size == sum(b.count for b in blobs) == 3 * 5 + 5 + 5 * 2 + 2
    for b in blobs:
        assert numpy.shares_memory(b.data, net.flat_data)
        assert numpy.shares_memory(b.diff, net.flat_diff)
    net.flat_data[...] = 7
    assert (net.params["ip2"][0].data == 7).all()


def test_shared_parameters_by_name():
    text = '''
      layer { name: "data" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 3 } } }
      layer { name: "ipa" type: "InnerProduct" bottom: "a" top: "ya" param { name: "w" } param { name: "bias" }
              inner_product_param { num_output: 4 weight_filler { type: "gaussian" } } }
      layer { name: "ipb" type: "InnerProduct" bottom: "b" top: "yb" param { name: "w" } param { name: "bias" }
              inner_product_param { num_output: 4 weight_filler { type: "gaussian" } } }
      layer { name: "loss" type: "EuclideanLoss" bottom: "ya" bottom: "yb" top: "loss" }
    '''
    net = build(text)
    assert net.params["ipa"][0] is net.params["ipb"][0]
    assert net.flat_data.size == 3 * 4 + 4
    rng = numpy.random.default_rng(0)
    a, b = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
    net.blobs["a"].data[...] = a
    net.blobs["b"].data[...] = b
    net.clear_param_diffs()
    net.forward()
    net.backward()
    w = net.params["ipa"][0].data
    # d/dW of |(a - b) W^T|^2 / 4: both layers' gradients accumulate in one diff.
    r = (a - b) @ w.T
    expected = r.T @ (a - b) / 2
    numpy.testing.assert_allclose(net.params["ipa"][0].diff, expected, rtol=1e-4, atol=1e-6)


def test_backward_skips_what_feeds_no_loss_and_honours_propagate_down():
    net = build(MLP, TEST)
    idx = net.layer_names.index
    assert not net.layer_need_backward[idx("acc")]
    assert net.layer_need_backward[idx("ip1")]
    assert net.bottom_need_backward[idx("ip1")] == [False]       # the data needs no gradient
    assert net.bottom_need_backward[idx("loss")] == [True, False]  # labels never
    frozen = build(MLP.replace("param { lr_mult: 1 } param { lr_mult: 2 }",
                               "param { lr_mult: 0 } param { lr_mult: 0 }"))
    assert not frozen.layer_need_backward[frozen.layer_names.index("ip1")]
    forced = build("force_backward: true\n" + MLP)
    assert forced.bottom_need_backward[forced.layer_names.index("ip1")] == [True]
    assert forced.bottom_need_backward[forced.layer_names.index("loss")] == [True, False]


def test_loss_weights_scale_the_loss_and_gradients():
    net1 = build(MLP)
    net2 = build(MLP.replace('top: "loss" }', 'top: "loss" loss_weight: 3 }'))
    net2.flat_data[...] = net1.flat_data
    rng = numpy.random.default_rng(1)
    for net in (net1, net2):
        net.blobs["data"].data[...] = rng.normal(size=(4, 3)) if net is net1 else net1.blobs["data"].data
        net.blobs["label"].data[...] = [0, 1, 1, 0]
        net.clear_param_diffs()
    l1 = net1.forward()
    net1.backward()
    l2 = net2.forward()
    net2.backward()
    assert l2 == pytest.approx(3 * l1, rel=1e-6)
    numpy.testing.assert_allclose(net2.flat_diff, 3 * net1.flat_diff, rtol=1e-5, atol=1e-7)


def test_errors_name_the_file_line_and_layers():
    with pytest.raises(NetError) as e:
        build(MLP.replace('type: "ReLU"', 'type: "Relu"'))
    assert "net.prototxt:8:" in str(e.value) and "unknown layer type 'Relu'" in str(e.value)
    assert "ReLU" in str(e.value)    # the known types are listed
    with pytest.raises(Exception) as e:
        build(MLP.replace('bottom: "ip1" top: "ip2"', 'bottom: "ip9" top: "ip2"'))
    assert "net.prototxt:9:" in str(e.value) and "'ip9'" in str(e.value)
    bad_shape = MLP.replace('input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } }',
                            'input_param { shape { dim: 4 dim: 3 } shape { dim: 5 } }')
    with pytest.raises(NetError) as e:
        build(bad_shape)
    text = str(e.value)
    assert "net.prototxt:11:" in text and "'loss'" in text and "from layer 'data'" in text


def test_caffemodel_round_trip_and_loading_by_name(tmp_path):
    net = build(MLP)
    path = str(tmp_path / "mlp.caffemodel")
    net.save(path)
    saved = io.read_binary(path, caffe_pb2.NetParameter)
    assert [lp.name for lp in saved.layer if lp.blobs] == ["ip1", "ip2"]
    assert list(saved.layer[1].blobs[0].shape.dim) == [5, 3]
    other = build(MLP, TEST, weights=path)
    for name in ("ip1", "ip2"):
        for a, b in zip(net.params[name], other.params[name]):
            assert numpy.array_equal(a.data, b.data)


def test_legacy_4d_blobs_load_and_wrong_shapes_are_refused(tmp_path):
    net = build(MLP)
    model = net.to_proto()
    for lp in model.layer:
        for bp in lp.blobs:
            dims = list(bp.shape.dim)
            bp.ClearField("shape")
            legacy = [1] * (4 - len(dims)) + dims
            bp.num, bp.channels, bp.height, bp.width = legacy
    path = tmp_path / "legacy.caffemodel"
    path.write_bytes(model.SerializeToString())
    other = build(MLP, weights=str(path))
    assert numpy.array_equal(other.flat_data, net.flat_data)
    wrong = build(MLP.replace("num_output: 5", "num_output: 6"))
    with pytest.raises(Exception, match=r"layer 'ip1' blob 0 has shape \(1, 1, 5, 3\) but the net expects \(6, 3\)"):
        wrong.copy_from(str(tmp_path / "legacy.caffemodel").replace("legacy", "legacy"))


def test_declared_shape_larger_than_data_is_refused(tmp_path):
    net = build(MLP)
    model = net.to_proto()
    model.layer[1].blobs[0].shape.dim[0] = 500000
    path = tmp_path / "lie.caffemodel"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(Exception, match="shape"):
        net.copy_from(str(path))


def test_after_backward_hooks_run_in_reverse_layer_order():
    net = build(MLP)
    seen = []
    net.add_after_backward(seen.append)
    net.forward()
    net.backward()
    assert [net.layer_names[i] for i in seen] == ["loss", "ip2", "relu1", "ip1"]


CONV_RELU = '''
name: "fused"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 3 dim: 12 dim: 11 } shape { dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.5 }
                            bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "relu2" type: "ReLU" bottom: "pool" top: "pool" }
layer { name: "leaky" type: "ReLU" bottom: "pool" top: "pool" relu_param { negative_slope: 0.1 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "relu3" type: "ReLU" bottom: "ip" top: "ip" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
'''


def fused_pair(monkeypatch, fuse):
    from pycaffe_dist import net as net_module
    monkeypatch.setattr(net_module, "FUSE_RELU", fuse)
    net = build(CONV_RELU)
    rng = numpy.random.default_rng(8)
    net.blobs["data"].data[...] = rng.standard_normal(net.blobs["data"].shape)
    net.blobs["label"].data[...] = rng.integers(0, 3, 4)
    net.flat_data[...] = rng.standard_normal(net.flat_data.shape).astype(net.flat_data.dtype)
    return net


@pytest.mark.parametrize("lanes", [1, 2])
def test_relu_in_place_after_convolution_or_max_pooling_is_fused_with_the_same_results(monkeypatch, lanes):
    from pycaffe_dist.ops import threads
    monkeypatch.setattr(threads, "count", lambda xp=None: lanes)
    plain, fused = fused_pair(monkeypatch, False), fused_pair(monkeypatch, True)
    # after the convolution and the max pooling; not the leaky one, not after InnerProduct
    assert [fused.layer_names[i] for i, f in enumerate(fused._fused) if f] == ["relu1", "relu2"]
    skipped = []
    for name in ("relu1", "relu2"):
        layer = fused.layers[fused.layer_index(name)]
        monkeypatch.setattr(layer, "forward", lambda bottom, top, name=name: skipped.append(name))
    for net in (plain, fused):
        net.forward()
        net.backward()
    assert skipped == []                # the convolution and the pooling applied them
    assert (plain.blobs["conv"].data == 0).any()
    for name in plain.blobs:
        numpy.testing.assert_array_equal(fused.blobs[name].data, plain.blobs[name].data, err_msg=name)
        numpy.testing.assert_array_equal(fused.blobs[name].diff, plain.blobs[name].diff, err_msg=name)
    numpy.testing.assert_array_equal(fused.flat_diff, plain.flat_diff)


def test_fused_relus_run_on_their_own_where_a_forward_stops_between_or_hooks_look(monkeypatch):
    net = fused_pair(monkeypatch, True)
    net.forward(end="conv")             # pycaffe's forward(end=...) sees the convolution's own output
    assert (net.blobs["conv"].data < 0).any()
    net.forward(start="relu1", end="relu1")
    assert (net.blobs["conv"].data >= 0).all()
    seen = []
    net.before_forward_hooks.append(seen.append)   # a per-layer look (pycaffe's hooks, the layer timer)
    relu = net.layers[net.layer_index("relu1")]
    calls = []
    original = relu.forward
    monkeypatch.setattr(relu, "forward", lambda bottom, top: calls.append(1) or original(bottom, top))
    net.forward()
    assert calls == [1] and len(seen) == len(net.layers)
