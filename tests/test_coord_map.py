"""coord_map: crop offsets against FCN's published nets and against impulse responses."""
import numpy
import pytest

import pycaffe_dist as caffe
from pycaffe_dist import layers as L
from pycaffe_dist import params as P
from pycaffe_dist.coord_map import coord_map_from_to, crop


def conv_relu(bottom, nout, ks=3, pad=1):
    conv = L.Convolution(bottom, kernel_size=ks, pad=pad, num_output=nout)
    return conv, L.ReLU(conv, in_place=True)


def vgg_fcn():
    """The VGG16 trunk of FCN-32s/16s (voc-fcn*s/net.py), down to score_fr and score_pool4."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 500, 500]))
    top = n.data
    pools = []
    for block, (convs, nout) in enumerate([(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)]):
        for i in range(convs):
            conv, top = conv_relu(top, nout, pad=100 if block == i == 0 else 1)
            n["conv%d_%d" % (block + 1, i + 1)] = conv
        top = L.Pooling(top, pool=P.Pooling.MAX, kernel_size=2, stride=2)
        n["pool%d" % (block + 1)] = top
        pools.append(top)
    n.fc6, n.relu6 = conv_relu(top, 4096, ks=7, pad=0)
    n.fc7, n.relu7 = conv_relu(n.relu6, 4096, ks=1, pad=0)
    n.score_fr = L.Convolution(n.relu7, num_output=21, kernel_size=1, pad=0)
    n.score_pool4 = L.Convolution(pools[3], num_output=21, kernel_size=1, pad=0)
    return n


def test_fcn32s_and_fcn16s_offsets_match_the_published_nets():
    n = vgg_fcn()
    n.upscore = L.Deconvolution(n.score_fr, convolution_param=dict(num_output=21, kernel_size=64, stride=32,
                                                                  bias_term=False))
    n.score = crop(n.upscore, n.data)
    layer = n.to_proto().layer[-1]
    assert layer.type == "Crop" and list(layer.bottom) == ["upscore", "data"]
    assert layer.crop_param.axis == 2 and list(layer.crop_param.offset) == [19]

    n = vgg_fcn()
    n.upscore2 = L.Deconvolution(n.score_fr, convolution_param=dict(num_output=21, kernel_size=4, stride=2,
                                                                   bias_term=False))
    n.score_pool4c = crop(n.score_pool4, n.upscore2)
    n.fuse_pool4 = L.Eltwise(n.upscore2, n.score_pool4c, operation=P.Eltwise.SUM)
    n.upscore16 = L.Deconvolution(n.fuse_pool4, convolution_param=dict(num_output=21, kernel_size=32,
                                                                      stride=16, bias_term=False))
    n.score = crop(n.upscore16, n.data)
    offsets = {lp.name: list(lp.crop_param.offset) for lp in n.to_proto().layer if lp.type == "Crop"}
    assert offsets == {"score_pool4c": [5], "score": [27]}


def test_offset_centres_the_impulse_response(tmp_path):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 16, 16]))
    ones = dict(type="constant", value=1)
    n.conv1 = L.Convolution(n.data, kernel_size=5, pad=4, num_output=1, bias_term=False, weight_filler=ones)
    n.conv2 = L.Convolution(n.conv1, kernel_size=3, pad=3, num_output=1, bias_term=False, weight_filler=ones)
    axis, a, b = coord_map_from_to(n.conv2, n.data)
    assert axis == 1 and a == pytest.approx([1.0])
    offset = int(-b[0])
    assert offset == 4
    (tmp_path / "net.prototxt").write_text(str(n.to_proto()))
    net = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST)
    for p in [(3, 7), (8, 8), (12, 4)]:  # the response (half-width 3) stays inside
        x = numpy.zeros((1, 1, 16, 16), numpy.float32)
        x[0, 0][p] = 1
        response = net.forward(data=x)["conv2"][0, 0]
        # Crop as the Crop layer would: the response then sits on the impulse.
        cropped = response[offset:offset + 16, offset:offset + 16]
        ys, xs = numpy.indices(cropped.shape)
        assert (cropped * ys).sum() / cropped.sum() == pytest.approx(p[0])
        assert (cropped * xs).sum() / cropped.sum() == pytest.approx(p[1])


def test_crop_refuses_a_scale_change_and_disconnected_tops():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 8, 8]))
    n.pool = L.Pooling(n.data, kernel_size=2, stride=2)
    with pytest.raises(ValueError, match="scale"):
        crop(n.pool, n.data)
    other = L.Input(shape=dict(dim=[1, 1, 8, 8]))
    with pytest.raises(RuntimeError, match="common"):
        crop(n.data, other)
