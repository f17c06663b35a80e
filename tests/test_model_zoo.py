"""The model-zoo shaped nets in prototxt/ build with the blob shapes Caffe reports and train.

Weights are filled with a constant here: the gaussian fillers of the 60M
CaffeNet parameters would cost seconds and shapes do not depend on them.
"""
import os

import numpy
import pytest

from pycaffe_dist.net import Net, TEST, TRAIN
from pycaffe_dist.proto import caffe_pb2, io

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "prototxt")


def load(name, batch=None, cheap_fillers=True):
    param, source = io.read_net(os.path.join(ROOT, name))
    for lp in param.layer:
        if batch is not None:
            for shape in list(lp.input_param.shape) + list(lp.dummy_data_param.shape):
                shape.dim[0] = batch
        if cheap_fillers:
            for p in (lp.convolution_param, lp.inner_product_param):
                p.weight_filler.CopyFrom(caffe_pb2.FillerParameter(type="constant", value=1e-3))
    return param, source


def shapes(net, names):
    return {name: net.blobs[name].shape[1:] for name in names}


ALEXNET_SHAPES = {"conv1": (96, 55, 55), "pool1": (96, 27, 27), "norm1": (96, 27, 27),
                  "conv2": (256, 27, 27), "pool2": (256, 13, 13), "conv3": (384, 13, 13),
                  "conv4": (384, 13, 13), "conv5": (256, 13, 13), "pool5": (256, 6, 6),
                  "fc6": (4096,), "fc7": (4096,), "fc8": (1000,), "prob": (1000,)}


@pytest.mark.parametrize("name", ["caffenet_deploy.prototxt", "alexnet_deploy.prototxt"])
def test_alexnet_family_blob_shapes(name):
    param, source = load(name)
    net = Net(param, TEST, source=source)
    expected = dict(ALEXNET_SHAPES)
    if name.startswith("alexnet"):     # AlexNet normalizes before pooling
        expected["norm1"] = (96, 55, 55)
    assert net.blobs["data"].shape == (10, 3, 227, 227)
    assert shapes(net, expected) == expected
    assert [b.shape for b in net.params["conv2"]] == [(256, 48, 5, 5), (256,)]   # group 2
    assert [b.shape for b in net.params["fc6"]] == [(4096, 9216), (4096,)]
    order = [n for n in net.layer_names if n in ("pool1", "norm1")]
    assert order == (["pool1", "norm1"] if name.startswith("caffenet") else ["norm1", "pool1"])


def test_caffenet_forward_backward_at_batch_2():
    param, source = load("caffenet_deploy.prototxt", batch=2)
    param.force_backward = True        # a deploy net has no loss; backward runs all the same
    net = Net(param, TEST, source=source)
    net.blobs["data"].data[...] = numpy.random.default_rng(0).normal(0, 50, net.blobs["data"].shape)
    net.forward()
    prob = net.blobs["prob"].data
    numpy.testing.assert_allclose(prob.sum(axis=1), 1.0, rtol=1e-5)
    net.blobs["prob"].diff[...] = numpy.random.default_rng(1).normal(size=prob.shape)
    net.backward()
    assert numpy.isfinite(net.blobs["data"].diff).all() and numpy.abs(net.blobs["data"].diff).sum() > 0
    assert numpy.abs(net.params["conv1"][0].diff).sum() > 0


INCEPTION = {"inception_3a/output": (256, 28, 28), "inception_3b/output": (480, 28, 28),
             "inception_4a/output": (512, 14, 14), "inception_4b/output": (512, 14, 14),
             "inception_4c/output": (512, 14, 14), "inception_4d/output": (528, 14, 14),
             "inception_4e/output": (832, 14, 14), "inception_5a/output": (832, 7, 7),
             "inception_5b/output": (1024, 7, 7), "pool5/7x7_s1": (1024, 1, 1),
             "loss1/ave_pool": (512, 4, 4), "loss1/fc": (1024,), "loss1/classifier": (1000,),
             "loss2/ave_pool": (528, 4, 4), "loss3/classifier": (1000,)}
LOSSES = {"loss1/loss1": 0.3, "loss2/loss1": 0.3, "loss3/loss3": 1.0}


def test_googlenet_shapes_loss_heads_and_one_training_pass():
    param, source = load("googlenet_train_val.prototxt", batch=1, cheap_fillers=False)
    net = Net(param, TRAIN, source=source)
    assert shapes(net, INCEPTION) == INCEPTION
    assert net.outputs == list(LOSSES)
    assert {n: pytest.approx(w) for n, w in net.blob_loss_weights.items() if w} == LOSSES
    loss = net.forward_backward()
    parts = {n: float(net.blobs[n].data) for n in LOSSES}
    assert loss == pytest.approx(sum(LOSSES[n] * v for n, v in parts.items()), rel=1e-5)
    assert all(numpy.isfinite(v) and v > 0 for v in parts.values())
    for layer in ("conv1/7x7_s2", "loss1/classifier", "loss2/classifier", "inception_5b/1x1"):
        assert numpy.abs(net.params[layer][0].diff).sum() > 0, layer


def test_googlenet_test_phase_adds_accuracy_tops():
    param, source = load("googlenet_train_val.prototxt")
    net = Net(param, TEST, source=source)
    assert net.blobs["data"].shape == (50, 3, 224, 224)
    assert net.outputs == ["loss1/loss1", "loss1/top-1", "loss1/top-5", "loss2/loss1", "loss2/top-1",
                           "loss2/top-5", "loss3/loss3", "loss3/top-1", "loss3/top-5"]


@pytest.mark.parametrize("name, ip", [("cifar10_full_train_test.prototxt", {"ip1": (10,)}),
                                      ("cifar10_quick_train_test.prototxt", {"ip1": (64,), "ip2": (10,)})])
def test_cifar10_nets_build_and_train(name, ip):
    param, source = load(name, cheap_fillers=False)
    net = Net(param, TRAIN, source=source)
    expected = {"conv1": (32, 32, 32), "pool1": (32, 16, 16), "pool2": (32, 8, 8), "pool3": (64, 4, 4), **ip}
    assert net.blobs["data"].shape == (100, 3, 32, 32)
    assert shapes(net, expected) == expected
    loss = net.forward_backward()
    assert loss == pytest.approx(numpy.log(10), rel=0.05)   # small initial weights: near uniform
    assert "accuracy" in Net(param, TEST, source=source).outputs
