"""caffe.Classifier: scores for images, checked against the preprocessing done by hand."""
import numpy
import pytest

import pycaffe_dist as caffe
from pycaffe_dist import io

DEPLOY = '''
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 10 dim: 3 dim: 4 dim: 4 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
'''


@pytest.fixture
def model(tmp_path):
    (tmp_path / "deploy.prototxt").write_text(DEPLOY)
    net = caffe.Net(str(tmp_path / "deploy.prototxt"), caffe.TEST)
    net.params["fc"][0].data[...] = numpy.random.default_rng(0).normal(0, 0.01, (3, 48))
    net.save(str(tmp_path / "tiny.caffemodel"))
    return str(tmp_path / "deploy.prototxt"), str(tmp_path / "tiny.caffemodel"), net.params["fc"][0].data.copy()


def scores(crop, w, mean):
    """What the net computes for one H x W x RGB crop in [0, 1]."""
    x = crop[:, :, ::-1].transpose(2, 0, 1) * 255 - mean[:, None, None]
    z = w @ x.reshape(-1)
    e = numpy.exp(z - z.max())
    return e / e.sum()


def test_predict_oversampled_and_centre(model):
    deploy, weights, w = model
    mean = numpy.array([100.0, 110.0, 120.0])
    clf = caffe.Classifier(deploy, weights, image_dims=(6, 6), mean=mean, raw_scale=255,
                           channel_swap=(2, 1, 0))
    rng = numpy.random.default_rng(1)
    images = [rng.random((6, 6, 3)).astype(numpy.float32), rng.random((9, 7, 3)).astype(numpy.float32)]
    resized = [io.resize_image(im, (6, 6)) for im in images]
    corners = [(0, 0), (0, 2), (2, 0), (2, 2), (1, 1)]
    expected = []
    for im in resized:
        crops = [im[y:y + 4, x:x + 4] for y, x in corners]
        crops += [c[:, ::-1] for c in crops]
        expected.append(numpy.mean([scores(c, w, mean) for c in crops], axis=0))
    got = clf.predict(images)
    assert got.shape == (2, 3)
    numpy.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    centre = clf.predict(images, oversample=False)
    numpy.testing.assert_allclose(centre, [scores(im[1:5, 1:5], w, mean) for im in resized], rtol=1e-4, atol=1e-6)
