"""SoftmaxWithLoss, EuclideanLoss, Accuracy: hand cases, loop references, gradients."""
import math

import numpy
import pytest

from pycaffe_dist.gradient_check import check_gradient
from pycaffe_dist.layers import LayerError, layer_class
from tests.layers.test_common import assert_same_on_both_backends, blob_of, make_layer, needs_gpu, tops


def forward(layer, bottom, top):
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    return [t.data.copy() for t in top]


def scores_and_labels(n=4, classes=5, spatial=(), seed=0, ignore=None):
    rng = numpy.random.default_rng(seed)
    scores = rng.normal(size=(n, classes) + spatial)
    labels = rng.integers(0, classes, size=(n,) + spatial).astype(float)
    if ignore is not None:
        labels.reshape(-1)[::3] = ignore
    return scores, labels


def softmax_loss_terms(scores, labels, ignore=None):
    """Per-position -log p(label) by explicit loops; None where ignored."""
    terms = []
    for index in numpy.ndindex(*labels.shape):
        label = int(labels[index])
        if label == ignore:
            terms.append(None)
            continue
        column = [scores[(index[0], c) + index[1:]] for c in range(scores.shape[1])]
        top = max(column)
        log_sum = top + math.log(sum(math.exp(v - top) for v in column))
        terms.append(log_sum - column[label])
    return terms


SWL = 'name: "loss" type: "SoftmaxWithLoss" %s'


# -- SoftmaxWithLoss ---------------------------------------------------------------
def test_softmax_loss_hand_case():
    # two equal scores: p = 1/2 for each, loss = log 2 per item
    (loss,) = forward(make_layer(SWL % ""), [blob_of([[0.0, 0.0], [5.0, 5.0]]),
                                             blob_of([0, 1])], tops())
    assert loss.shape == ()
    assert loss == pytest.approx(math.log(2))


@pytest.mark.parametrize("mode, normalizer", [
    ("", lambda n_all, n_valid, batch: n_valid),
    ("normalization: FULL", lambda n_all, n_valid, batch: n_all),
    ("normalization: VALID", lambda n_all, n_valid, batch: n_valid),
    ("normalization: BATCH_SIZE", lambda n_all, n_valid, batch: batch),
    ("normalization: NONE", lambda n_all, n_valid, batch: 1),
    ("normalize: true", lambda n_all, n_valid, batch: n_valid),
    ("normalize: false", lambda n_all, n_valid, batch: batch),
])
def test_softmax_loss_normalization_with_ignore_label(mode, normalizer):
    scores, labels = scores_and_labels(n=3, spatial=(2, 2), ignore=7)
    layer = make_layer(SWL % ("loss_param { ignore_label: 7 %s }" % mode))
    (loss,) = forward(layer, [blob_of(scores), blob_of(labels)], tops())
    terms = softmax_loss_terms(scores, labels, ignore=7)
    counted = [t for t in terms if t is not None]
    assert 0 < len(counted) < len(terms)
    expected = sum(counted) / normalizer(len(terms), len(counted), 3)
    assert float(loss) == pytest.approx(expected, rel=1e-12)


def test_softmax_loss_without_ignore_averages_all_positions():
    scores, labels = scores_and_labels(spatial=(3,))
    (loss,) = forward(make_layer(SWL % ""), [blob_of(scores), blob_of(labels)], tops())
    assert float(loss) == pytest.approx(numpy.mean(softmax_loss_terms(scores, labels)), rel=1e-12)


def test_softmax_loss_axis_and_probability_top():
    # classes on axis 2 of an (N, T, C) blob, labels (N, T)
    scores, labels = scores_and_labels(n=2, classes=3, spatial=(4,))
    scores = scores.transpose(0, 2, 1).copy()
    layer = make_layer(SWL % "softmax_param { axis: 2 }")
    loss, prob = forward(layer, [blob_of(scores), blob_of(labels)], tops(2))
    expected = softmax_loss_terms(scores.transpose(0, 2, 1), labels)
    assert float(loss) == pytest.approx(numpy.mean(expected), rel=1e-12)
    e = numpy.exp(scores - scores.max(axis=2, keepdims=True))
    numpy.testing.assert_allclose(prob, e / e.sum(axis=2, keepdims=True), rtol=1e-12)


def test_softmax_loss_backward_scales_by_loss_weight():
    scores, labels = scores_and_labels(ignore=2)
    layer = make_layer(SWL % "loss_param { ignore_label: 2 }")
    bottom, top = [blob_of(scores), blob_of(labels)], tops()
    forward(layer, bottom, top)
    top[0].diff[...] = 3.0
    layer.backward(top, [True, False], bottom)
    e = numpy.exp(scores - scores.max(axis=1, keepdims=True))
    expected = e / e.sum(axis=1, keepdims=True)
    valid = labels != 2
    expected[numpy.arange(len(labels))[valid], labels[valid].astype(int)] -= 1
    expected[~valid] = 0
    numpy.testing.assert_allclose(bottom[0].diff, 3.0 * expected / valid.sum(), rtol=1e-12)


@pytest.mark.parametrize("params, spatial, ignore", [
    ("", (), None), ("loss_param { ignore_label: 1 }", (2,), 1),
    ("loss_param { normalization: NONE }", (), None), ("softmax_param { axis: 2 }", (3,), None)])
def test_softmax_loss_gradient(params, spatial, ignore):
    scores, labels = scores_and_labels(n=2, classes=3, spatial=spatial, ignore=ignore)
    if "axis: 2" in params:  # labels must then be (N, C) for (N, C, T) scores around axis 2
        labels = labels.reshape(2, 3) % 3
    layer = make_layer(SWL % params)
    check_gradient(layer, [blob_of(scores), blob_of(labels)], tops(), check_bottom=[0])


def test_softmax_loss_label_out_of_range_names_the_value():
    with pytest.raises(LayerError, match="label value 5"):
        forward(make_layer(SWL % ""), [blob_of(numpy.zeros((2, 5))), blob_of([1, 5])], tops())
    with pytest.raises(LayerError, match="label value -1"):
        forward(make_layer(SWL % ""), [blob_of(numpy.zeros((2, 5))), blob_of([-1, 0])], tops())


def test_softmax_loss_label_count_mismatch():
    with pytest.raises(LayerError, match="3 labels"):
        forward(make_layer(SWL % ""), [blob_of(numpy.zeros((2, 5))), blob_of([0, 1, 2])],
                tops())


def test_softmax_loss_rejects_gradient_to_labels():
    layer = make_layer(SWL % "")
    bottom, top = [blob_of(numpy.zeros((2, 3))), blob_of([0, 1])], tops()
    forward(layer, bottom, top)
    with pytest.raises(LayerError, match="labels"):
        layer.backward(top, [True, True], bottom)


def test_softmax_loss_is_a_loss_layer():
    assert layer_class("SoftmaxWithLoss").is_loss
    assert layer_class("EuclideanLoss").is_loss
    assert not layer_class("Accuracy").is_loss


# -- EuclideanLoss --------------------------------------------------------------------
def test_euclidean_loss_forward():
    rng = numpy.random.default_rng(0)
    a, b = rng.normal(size=(4, 3, 2)), rng.normal(size=(4, 3, 2))
    (loss,) = forward(make_layer('name: "l" type: "EuclideanLoss"'), [blob_of(a), blob_of(b)],
                      tops())
    expected = sum((x - y) ** 2 for x, y in zip(a.reshape(-1), b.reshape(-1))) / (2 * 4)
    assert float(loss) == pytest.approx(expected, rel=1e-12)


def test_euclidean_loss_gradient_to_both_bottoms():
    rng = numpy.random.default_rng(1)
    bottom = [blob_of(rng.normal(size=(3, 4))), blob_of(rng.normal(size=(3, 4)))]
    check_gradient(make_layer('name: "l" type: "EuclideanLoss"'), bottom, tops())


def test_euclidean_loss_accepts_column_predictions_for_flat_targets():
    # (N, 1) predictions against (N,) targets, as regression nets feed them
    layer = make_layer('name: "l" type: "EuclideanLoss"')
    bottom = [blob_of([[1.0], [2.0], [4.0]]), blob_of([0.0, 2.0, 1.0])]
    (loss,) = forward(layer, bottom, tops())
    assert float(loss) == pytest.approx((1 + 0 + 9) / 6.0)
    assert layer.allow_force_backward(1)


def test_euclidean_loss_shape_mismatch():
    with pytest.raises(LayerError, match="same number of items"):
        forward(make_layer('name: "l" type: "EuclideanLoss"'),
                [blob_of(numpy.zeros((2, 3))), blob_of(numpy.zeros((2, 4)))], tops())


# -- Accuracy ------------------------------------------------------------------------
SCORES = [[0.1, 0.5, 0.3, 0.2],   # ranking 1, 2, 3, 0
          [0.9, 0.0, 0.4, 0.6],   # ranking 0, 3, 2, 1
          [0.2, 0.3, 0.1, 0.8],   # ranking 3, 1, 0, 2
          [0.7, 0.1, 0.6, 0.5]]   # ranking 0, 2, 3, 1
LABELS = [1, 3, 0, 1]


@pytest.mark.parametrize("top_k, expected", [(1, 0.25), (2, 0.5), (3, 0.75), (4, 1.0)])
def test_accuracy_top_k(top_k, expected):
    layer = make_layer('name: "acc" type: "Accuracy" accuracy_param { top_k: %d }' % top_k)
    (acc,) = forward(layer, [blob_of(SCORES), blob_of(LABELS)], tops())
    assert acc.shape == ()
    assert float(acc) == pytest.approx(expected)


def test_accuracy_ignore_label_and_per_class_top():
    layer = make_layer('name: "acc" type: "Accuracy" accuracy_param { top_k: 2 ignore_label: 0 }')
    acc, per_class = forward(layer, [blob_of(SCORES), blob_of(LABELS)], tops(2))
    # counted: items 0 (label 1, 2nd: hit), 1 (label 3, 2nd: hit), 3 (label 1, 4th: miss)
    assert float(acc) == pytest.approx(2 / 3)
    numpy.testing.assert_allclose(per_class, [0.0, 0.5, 0.0, 1.0])


def test_accuracy_along_axis_2_matches_a_loop():
    rng = numpy.random.default_rng(3)
    scores = rng.normal(size=(2, 3, 5))          # classes on the last axis
    labels = rng.integers(0, 5, size=(2, 3)).astype(float)
    layer = make_layer('name: "acc" type: "Accuracy" accuracy_param { axis: 2 top_k: 2 }')
    (acc,) = forward(layer, [blob_of(scores), blob_of(labels)], tops())
    hits = [int(labels[i, j]) in numpy.argsort(-scores[i, j])[:2]
            for i in range(2) for j in range(3)]
    assert float(acc) == pytest.approx(numpy.mean(hits))


def test_accuracy_errors():
    layer = make_layer('name: "acc" type: "Accuracy" accuracy_param { top_k: 5 }')
    with pytest.raises(LayerError, match="top_k"):
        forward(layer, [blob_of(SCORES), blob_of(LABELS)], tops())
    layer = make_layer('name: "acc" type: "Accuracy"')
    bottom, top = [blob_of(SCORES), blob_of(LABELS)], tops()
    forward(layer, bottom, top)
    with pytest.raises(LayerError, match="cannot propagate"):
        layer.backward(top, [True, False], bottom)


@needs_gpu
@pytest.mark.parametrize("text, n_tops", [
    (SWL % "", 2), (SWL % "loss_param { ignore_label: 1 normalization: VALID }", 1),
    ('name: "acc" type: "Accuracy" accuracy_param { top_k: 2 ignore_label: 0 }', 2),
])
def test_numpy_and_cupy_agree(text, n_tops):
    scores, labels = scores_and_labels(spatial=(2,))
    assert_same_on_both_backends(text, [scores, labels], n_tops=n_tops, propagate=[True, False])


@needs_gpu
def test_euclidean_loss_numpy_and_cupy_agree():
    rng = numpy.random.default_rng(2)
    assert_same_on_both_backends('name: "l" type: "EuclideanLoss"',
                                 [rng.normal(size=(3, 4)), rng.normal(size=(3, 4))])
