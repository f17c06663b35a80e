"""pycaffe's Net as a script uses it: `import pycaffe_dist as caffe`, values checked by hand."""
import numpy
import pytest

import pycaffe_dist as caffe

MLP = '''
name: "mlp"
force_backward: true
layer { name: "input" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 1 }
                              bias_filler { type: "gaussian" std: 1 } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
layer { name: "prob" type: "Softmax" bottom: "ip2" top: "prob" include { stage: "deploy" } }
'''

# No loss: the outputs' diffs are what a script hands to backward (saliency, deep dream).
LINEAR = '''
name: "linear"
force_backward: true
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 }
                              bias_filler { type: "gaussian" std: 1 } } }
'''


@pytest.fixture
def files(tmp_path):
    (tmp_path / "mlp.prototxt").write_text(MLP)
    (tmp_path / "linear.prototxt").write_text(LINEAR)
    return tmp_path


def softmax_loss(x, w1, b1, w2, b2, label):
    h = numpy.maximum(x @ w1.T + b1, 0)
    z = h @ w2.T + b2
    p = numpy.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return h, z, p, -numpy.log(p[numpy.arange(len(label)), label]).mean()


def test_constructor_forms_and_net_state(files):
    path = str(files / "mlp.prototxt")
    net = caffe.Net(path, caffe.TRAIN)
    assert net._layer_names == ["input", "ip1", "relu1", "ip2", "loss"]
    deploy = caffe.Net(path, caffe.TEST, stages=["deploy"])
    assert "prob" in deploy._layer_names and deploy.outputs == ["loss", "prob"]
    net.save(str(files / "w.caffemodel"))
    old_form = caffe.Net(path, str(files / "w.caffemodel"), caffe.TEST)
    keyword = caffe.Net(path, phase=caffe.TEST, weights=str(files / "w.caffemodel"))
    for other in (old_form, keyword):
        for name in net.params:
            for mine, theirs in zip(net.params[name], other.params[name]):
                numpy.testing.assert_array_equal(mine.data, theirs.data)
    with pytest.raises(ValueError, match="phase"):
        caffe.Net(path, 7)
    with pytest.raises(TypeError):
        caffe.Net(path)


def test_properties_name_what_the_net_holds(files):
    net = caffe.Net(str(files / "mlp.prototxt"), caffe.TEST, stages=["deploy"])
    assert list(net.blobs) == ["data", "label", "ip1", "ip2", "ip2_ip2_0_split_0", "ip2_ip2_0_split_1",
                               "loss", "prob"]
    assert list(net.params) == ["ip1", "ip2"]
    assert [b.shape for b in net.params["ip1"]] == [(5, 3), (5,)]
    assert net.inputs == ["data", "label"] and net._inputs == [0, 1]
    assert net._outputs == [6, 7]
    assert net.layer_dict["ip1"] is net.layers[1] and net.layers[1].type == "InnerProduct"
    assert net.top_names["relu1"] == ["ip1"] and net.bottom_names["loss"] == ["ip2_ip2_0_split_0", "label"]
    assert net.blob_loss_weights["loss"] == 1 and net.blob_loss_weights["prob"] == 0
    assert net._bottom_ids(1) == [0] and net._top_ids(1) == [2]
    blob = net.blobs["data"]
    assert (blob.num, blob.channels, blob.height, blob.width, blob.count) == (4, 3, 1, 1, 12)
    assert isinstance(blob.data, numpy.ndarray) and blob.data.shape == (4, 3)


def test_forward_with_inputs_start_and_end_match_numpy(files):
    net = caffe.Net(str(files / "mlp.prototxt"), caffe.TRAIN)
    rng = numpy.random.default_rng(0)
    x = rng.normal(size=(4, 3)).astype(numpy.float32)
    label = numpy.array([0, 1, 1, 0], numpy.float32)
    (w1, b1), (w2, b2) = [[b.data.astype(numpy.float64) for b in net.params[n]] for n in ("ip1", "ip2")]
    h, z, p, loss = softmax_loss(x, w1, b1, w2, b2, label.astype(int))

    out = net.forward(data=x, label=label, blobs=["ip2"])
    assert set(out) == {"loss", "ip2"}
    assert out["loss"] == pytest.approx(loss, rel=1e-5)
    numpy.testing.assert_allclose(out["ip2"], z, rtol=1e-5, atol=1e-6)
    # Stop before the in-place ReLU: ip1 still holds the affine output.
    out = net.forward(end="ip1")
    numpy.testing.assert_allclose(out["ip1"], x @ w1.T + b1, rtol=1e-5, atol=1e-6)
    out = net.forward(start="relu1")
    assert out["loss"] == pytest.approx(loss, rel=1e-5)
    with pytest.raises(ValueError, match="do not match net inputs"):
        net.forward(data=x)
    with pytest.raises(ValueError, match="not batch sized"):
        net.forward(data=x[:2], label=label[:2])


def test_backward_returns_input_diffs_and_accumulates_param_diffs(files):
    net = caffe.Net(str(files / "linear.prototxt"), caffe.TRAIN)
    rng = numpy.random.default_rng(1)
    x = rng.normal(size=(4, 3)).astype(numpy.float32)
    dy = rng.normal(size=(4, 2)).astype(numpy.float32)
    w = net.params["ip"][0].data.copy()
    net.forward(data=x)
    net.clear_param_diffs()
    diffs = net.backward(ip=dy)
    numpy.testing.assert_allclose(diffs["data"], dy @ w, rtol=1e-5, atol=1e-6)
    numpy.testing.assert_allclose(net.params["ip"][0].diff, dy.T @ x, rtol=1e-5, atol=1e-6)
    numpy.testing.assert_allclose(net.params["ip"][1].diff, dy.sum(0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="do not match net outputs"):
        net.backward(data=x)


def test_loss_gradient_matches_numpy(files):
    net = caffe.Net(str(files / "mlp.prototxt"), caffe.TRAIN)
    rng = numpy.random.default_rng(2)
    x = rng.normal(size=(4, 3)).astype(numpy.float32)
    label = numpy.array([1, 0, 1, 1])
    (w1, b1), (w2, b2) = [[b.data.astype(numpy.float64) for b in net.params[n]] for n in ("ip1", "ip2")]
    h, z, p, _ = softmax_loss(x, w1, b1, w2, b2, label)
    dz = p.copy()
    dz[numpy.arange(4), label] -= 1
    dz /= 4
    dx = ((dz @ w2) * (h > 0)) @ w1
    net.forward(data=x, label=label)
    diffs = net.backward()
    numpy.testing.assert_allclose(diffs["data"], dx, rtol=1e-4, atol=1e-6)


def test_forward_all_batches_pads_and_trims(files):
    net = caffe.Net(str(files / "linear.prototxt"), caffe.TEST)
    x = numpy.random.default_rng(3).normal(size=(10, 3)).astype(numpy.float32)
    w, b = [p.data for p in net.params["ip"]]
    out = net.forward_all(data=x)
    assert out["ip"].shape == (10, 2)
    numpy.testing.assert_allclose(out["ip"], x @ w.T + b, rtol=1e-5, atol=1e-6)
    dy = numpy.ones((10, 2), numpy.float32)
    outs, diffs = net.forward_backward_all(data=x, ip=dy)
    numpy.testing.assert_allclose(outs["ip"], x @ w.T + b, rtol=1e-5, atol=1e-6)
    numpy.testing.assert_allclose(diffs["data"], dy @ w, rtol=1e-5, atol=1e-6)
    assert diffs["data"].shape == (10, 3)


def test_reshape_resizes_downstream_blobs(files):
    net = caffe.Net(str(files / "linear.prototxt"), caffe.TEST)
    net.blobs["data"].reshape(7, 3)
    net.reshape()
    assert net.blobs["ip"].shape == (7, 2)
    x = numpy.ones((7, 3), numpy.float32)
    out = net.forward(data=x)
    w, b = [p.data for p in net.params["ip"]]
    numpy.testing.assert_allclose(out["ip"], x @ w.T + b, rtol=1e-5)


def test_hooks_see_every_layer_in_order(files):
    net = caffe.Net(str(files / "mlp.prototxt"), caffe.TRAIN)
    seen = []
    net.before_forward(lambda i: seen.append(("bf", i)))
    net.after_forward(lambda i: seen.append(("af", i)))
    net.before_backward(lambda i: seen.append(("bb", i)))
    net.after_backward(lambda i: seen.append(("ab", i)))
    net.forward()
    assert seen == [(k, i) for i in range(5) for k in ("bf", "af")]
    seen.clear()
    net.backward()
    # The Input layer runs no backward, so its hooks are not called either.
    assert seen == [(k, i) for i in (4, 3, 2, 1) for k in ("bb", "ab")]


def test_weights_files_and_sharing(files):
    path = str(files / "mlp.prototxt")
    a = caffe.Net(path, caffe.TRAIN)
    b = caffe.Net(path, caffe.TEST)
    a.save_hdf5(str(files / "w.h5"))
    b.load_hdf5(str(files / "w.h5"))
    for name in a.params:
        for mine, theirs in zip(a.params[name], b.params[name]):
            numpy.testing.assert_array_equal(mine.data, theirs.data)
    import h5py
    with h5py.File(str(files / "w.h5"), "r") as f:
        numpy.testing.assert_array_equal(f["data/ip2/0"][()], a.params["ip2"][0].data)
        assert sorted(f["data"]) == ["ip1", "ip2"]
    c = caffe.Net(path, caffe.TEST)
    c.share_with(a)
    a.params["ip1"][0].data[...] = 3.0
    assert (c.params["ip1"][0].data == 3.0).all()
    a.save(str(files / "w.caffemodel"))
    c2 = caffe.Net(path, caffe.TEST)
    c2.copy_from(str(files / "w.caffemodel"))
    assert (c2.params["ip1"][0].data == 3.0).all()


def test_set_input_arrays_feeds_memory_data(tmp_path):
    text = '''
      layer { name: "mem" type: "MemoryData" top: "data" top: "label"
              memory_data_param { batch_size: 2 channels: 1 height: 2 width: 2 } }
      layer { name: "flat" type: "Flatten" bottom: "data" top: "flat" }
    '''
    (tmp_path / "mem.prototxt").write_text(text)
    net = caffe.Net(str(tmp_path / "mem.prototxt"), caffe.TEST)
    data = numpy.arange(16, dtype=numpy.float32).reshape(4, 1, 2, 2)
    labels = numpy.array([5, 6, 7, 8], numpy.float32)
    net.set_input_arrays(data, labels)
    first = net.forward(blobs=["label"])
    numpy.testing.assert_array_equal(first["flat"], data[:2].reshape(2, 4))
    numpy.testing.assert_array_equal(first["label"], [5, 6])
    second = net.forward(blobs=["label"])
    numpy.testing.assert_array_equal(second["label"], [7, 8])
    (tmp_path / "linear.prototxt").write_text(LINEAR)
    with pytest.raises(RuntimeError, match="MemoryData"):
        caffe.Net(str(tmp_path / "linear.prototxt"), caffe.TEST).set_input_arrays(data, labels)


def test_module_level_names():
    assert {"Python", "Convolution", "InnerProduct"} <= set(caffe.layer_type_list())
    assert caffe.TRAIN == 0 and caffe.TEST == 1 and caffe.__version__
    from pycaffe_dist.proto import caffe_pb2
    assert caffe.caffe_pb2 is caffe_pb2 and caffe_pb2.PoolingParameter.MAX == 0
    timer = caffe.Timer()
    timer.start()
    sum(range(10000))
    timer.stop()
    assert timer.ms > 0
    caffe.set_solver_count(3)
    caffe.set_solver_rank(2)
    try:
        assert (caffe.solver_count(), caffe.solver_rank()) == (3, 2)
    finally:
        caffe.set_solver_count(1)
        caffe.set_solver_rank(0)
    caffe.set_mode_cpu()
    caffe.set_random_seed(5)
    if not caffe.has_nccl():
        with pytest.raises(RuntimeError, match="NCCL"):
            caffe.NCCL.new_uid()
