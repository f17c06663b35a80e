"""MultinomialLogisticLoss, InfogainLoss, SigmoidCrossEntropyLoss, HingeLoss,
ContrastiveLoss: loss values against loops, gradients, loss weights, errors."""
import math

import numpy
import pytest

from pycaffe_dist.gradient_check import check_gradient
from pycaffe_dist.layers import LayerError, layer_class
from pycaffe_dist.proto import caffe_pb2
from tests.layers.test_common import assert_same_on_both_backends, needs_gpu
from tests.layers.test_loss import (blob_of, forward, make_layer, scores_and_labels,
                                    softmax_loss_terms, tops)


def softmax_rows(scores, axis=1):
    e = numpy.exp(scores - scores.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def backward_with_weight(layer, bottom, weight, propagate):
    top = tops()
    forward(layer, bottom, top)
    top[0].diff[...] = weight
    layer.backward(top, propagate, bottom)
    return bottom[0].diff.copy()


# -- MultinomialLogisticLoss ------------------------------------------------------------
MLL = 'name: "l" type: "MultinomialLogisticLoss"'


def test_multinomial_logistic_loss_against_a_loop():
    rng = numpy.random.default_rng(0)
    prob = rng.uniform(0.05, 1, size=(4, 3, 2))
    prob[1].reshape(-1)[2] = 0.0            # clamped at 1e-20, as Caffe
    labels = numpy.array([0.0, 2.0, 5.0, 1.0])
    (loss,) = forward(make_layer(MLL), [blob_of(prob), blob_of(labels)], tops())
    flat = prob.reshape(4, -1)
    expected = -sum(math.log(max(flat[n, int(k)], 1e-20)) for n, k in enumerate(labels)) / 4
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    dx = backward_with_weight(make_layer(MLL), [blob_of(prob), blob_of(labels)], 2.0, [True, False])
    grad = numpy.zeros_like(flat)
    for n, k in enumerate(labels.astype(int)):
        grad[n, k] = -2.0 / 4 / max(flat[n, k], 1e-20)
    numpy.testing.assert_allclose(dx.reshape(4, -1), grad, rtol=1e-12)


def test_multinomial_logistic_loss_gradient():
    rng = numpy.random.default_rng(1)
    prob, labels = rng.uniform(0.3, 1, size=(3, 5)), numpy.array([4.0, 0.0, 2.0])
    check_gradient(make_layer(MLL), [blob_of(prob), blob_of(labels)], tops(), check_bottom=[0])


def test_multinomial_logistic_loss_label_checks():
    with pytest.raises(LayerError, match="label value 5"):
        forward(make_layer(MLL), [blob_of(numpy.ones((2, 5))), blob_of([0.0, 5.0])], tops())
    with pytest.raises(LayerError, match="3 labels"):
        forward(make_layer(MLL), [blob_of(numpy.ones((2, 5))), blob_of([0.0, 1.0, 2.0])], tops())


# -- InfogainLoss -----------------------------------------------------------------------
INFOGAIN = 'name: "l" type: "InfogainLoss" %s'


def infogain_terms(scores, labels, matrix, ignore=None):
    """Per position -sum_l H[label, l] log p_l by loops; None where ignored."""
    prob = softmax_rows(scores)
    terms = []
    for index in numpy.ndindex(*labels.shape):
        label = int(labels[index])
        if label == ignore:
            terms.append(None)
            continue
        terms.append(-sum(matrix[label, c] * math.log(max(prob[(index[0], c) + index[1:]], 1e-20))
                          for c in range(scores.shape[1])))
    return terms


def infogain_matrix(classes, seed=3):
    return numpy.random.default_rng(seed).uniform(0, 1, size=(classes, classes))


@pytest.mark.parametrize("params, spatial, ignore, normalizer", [
    ("", (), None, lambda n_all, n_valid, batch: n_all),
    ("loss_param { ignore_label: 2 }", (2,), 2, lambda n_all, n_valid, batch: n_valid),
    ("loss_param { ignore_label: 2 normalization: BATCH_SIZE }", (2,), 2,
     lambda n_all, n_valid, batch: batch),
    ("loss_param { normalization: NONE }", (3,), None, lambda n_all, n_valid, batch: 1),
])
def test_infogain_loss_from_bottom_against_a_loop(params, spatial, ignore, normalizer):
    scores, labels = scores_and_labels(n=3, classes=4, spatial=spatial, ignore=ignore)
    matrix = infogain_matrix(4)
    layer = make_layer(INFOGAIN % params)
    (loss,) = forward(layer, [blob_of(scores), blob_of(labels), blob_of(matrix)], tops())
    terms = infogain_terms(scores, labels, matrix, ignore)
    counted = [t for t in terms if t is not None]
    expected = sum(counted) / normalizer(len(terms), len(counted), 3)
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    check_gradient(make_layer(INFOGAIN % params),
                   [blob_of(scores), blob_of(labels), blob_of(matrix)], tops(), check_bottom=[0])


def test_infogain_loss_with_identity_is_softmax_loss():
    scores, labels = scores_and_labels(spatial=(3,))
    loss, prob = forward(make_layer(INFOGAIN % ""),
                         [blob_of(scores), blob_of(labels), blob_of(numpy.eye(5))], tops(2))
    assert float(loss) == pytest.approx(numpy.mean(softmax_loss_terms(scores, labels)), rel=1e-12)
    numpy.testing.assert_allclose(prob, softmax_rows(scores), rtol=1e-12)
    identity = backward_with_weight(make_layer(INFOGAIN % ""), [blob_of(scores), blob_of(labels),
                                                                blob_of(numpy.eye(5))],
                                    2.0, [True, False, False])
    softmax = backward_with_weight(make_layer('name: "l" type: "SoftmaxWithLoss"'),
                                   [blob_of(scores), blob_of(labels)], 2.0, [True, False])
    numpy.testing.assert_allclose(identity, softmax, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("legacy", [False, True])
def test_infogain_loss_reads_the_matrix_file(tmp_path, legacy):
    matrix = infogain_matrix(3, seed=4)
    if legacy:   # old BlobProto: 1 x 1 x C x C
        proto = caffe_pb2.BlobProto(num=1, channels=1, height=3, width=3)
    else:
        proto = caffe_pb2.BlobProto()
        proto.shape.dim.extend([3, 3])
    proto.data.extend(matrix.reshape(-1).tolist())
    path = tmp_path / "H.binaryproto"
    path.write_bytes(proto.SerializeToString())
    scores, labels = scores_and_labels(n=2, classes=3, spatial=(4,))
    scores = scores.transpose(0, 2, 1).copy()    # classes on axis 2
    layer = make_layer(INFOGAIN % f'infogain_loss_param {{ source: "{path}" axis: 2 }}')
    (loss,) = forward(layer, [blob_of(scores), blob_of(labels)], tops())
    stored = matrix.astype(numpy.float32).astype(numpy.float64)
    expected = numpy.mean(infogain_terms(scores.transpose(0, 2, 1), labels, stored))
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    check_gradient(layer, [blob_of(scores), blob_of(labels)], tops(), check_bottom=[0], setup=False)


def test_infogain_loss_errors(tmp_path):
    scores, labels = scores_and_labels(n=2, classes=3)
    with pytest.raises(LayerError, match="source"):
        forward(make_layer(INFOGAIN % ""), [blob_of(scores), blob_of(labels)], tops())
    with pytest.raises(LayerError, match="no such file"):
        forward(make_layer(INFOGAIN % f'infogain_loss_param {{ source: "{tmp_path}/none" }}'),
                [blob_of(scores), blob_of(labels)], tops())
    with pytest.raises(LayerError, match="3 x 3"):
        forward(make_layer(INFOGAIN % ""), [blob_of(scores), blob_of(labels), blob_of(numpy.eye(4))],
                tops())
    layer = make_layer(INFOGAIN % "")
    bottom = [blob_of(scores), blob_of(labels), blob_of(numpy.eye(3))]
    top = tops()
    forward(layer, bottom, top)
    with pytest.raises(LayerError, match="infogain matrix"):
        layer.backward(top, [True, False, True], bottom)
    assert layer.allow_force_backward(0) and not layer.allow_force_backward(2)


# -- SigmoidCrossEntropyLoss ---------------------------------------------------------------
SCE = 'name: "l" type: "SigmoidCrossEntropyLoss" %s'


def sce_inputs(seed=0, ignore=None):
    rng = numpy.random.default_rng(seed)
    logits = rng.normal(scale=3, size=(4, 3, 2))
    targets = rng.uniform(0, 1, size=(4, 3, 2))
    targets[0, 0, 0], targets[1, 1, 1] = 0.0, 1.0
    if ignore is not None:
        targets.reshape(-1)[::4] = ignore
    return logits, targets


def sce_terms(logits, targets, ignore=None):
    terms = []
    for x, t in zip(logits.reshape(-1), targets.reshape(-1)):
        if ignore is not None and int(t) == ignore:
            continue
        p = 1.0 / (1.0 + math.exp(-x))
        terms.append(-(t * math.log(p) + (1 - t) * math.log(1 - p)))
    return terms


@pytest.mark.parametrize("params, ignore, normalizer", [
    ("", None, lambda n_all, n_valid, batch: batch),   # BATCH_SIZE by default, as Caffe 1.0
    ("loss_param { ignore_label: -1 }", -1, lambda n_all, n_valid, batch: batch),
    ("loss_param { ignore_label: -1 normalization: VALID }", -1, lambda n_all, n_valid, batch: n_valid),
    ("loss_param { ignore_label: -1 normalize: true }", -1, lambda n_all, n_valid, batch: n_valid),
    ("loss_param { normalization: FULL }", None, lambda n_all, n_valid, batch: n_all),
    ("loss_param { normalization: VALID }", None, lambda n_all, n_valid, batch: n_all),
    ("loss_param { normalization: NONE }", None, lambda n_all, n_valid, batch: 1),
])
def test_sigmoid_cross_entropy_against_a_loop(params, ignore, normalizer):
    logits, targets = sce_inputs(ignore=ignore)
    (loss,) = forward(make_layer(SCE % params), [blob_of(logits), blob_of(targets)], tops())
    terms = sce_terms(logits, targets, ignore)
    assert float(loss) == pytest.approx(sum(terms) / normalizer(logits.size, len(terms), 4),
                                        rel=1e-12)
    check_gradient(make_layer(SCE % params), [blob_of(logits), blob_of(targets)], tops(),
                   check_bottom=[0])


def test_sigmoid_cross_entropy_backward_and_large_logits():
    logits = numpy.array([[-800.0, 0.0, 800.0]])
    targets = numpy.array([[0.0, 0.25, 1.0]])
    with numpy.errstate(over="raise", invalid="raise"):
        (loss,) = forward(make_layer(SCE % ""), [blob_of(logits), blob_of(targets)], tops())
    assert float(loss) == pytest.approx(math.log(2))
    dx = backward_with_weight(make_layer(SCE % "loss_param { ignore_label: 1 }"),
                              [blob_of(logits), blob_of(targets)], 3.0, [True, False])
    numpy.testing.assert_allclose(dx, [[0.0, 3.0 * 0.25, 0.0]], atol=1e-15)
    with pytest.raises(LayerError, match="same count"):
        forward(make_layer(SCE % ""), [blob_of(logits), blob_of([1.0])], tops())


# -- HingeLoss -------------------------------------------------------------------------------
HINGE = 'name: "l" type: "HingeLoss" %s'


def hinge_inputs(seed=0):
    rng = numpy.random.default_rng(seed)
    scores = rng.normal(scale=1.5, size=(5, 4))
    near = numpy.abs(numpy.abs(scores) - 1) < 0.05      # keep off the kinks at +-1
    scores[near] += 0.1
    return scores, rng.integers(0, 4, size=5).astype(float)


@pytest.mark.parametrize("params, power", [("", 1), ("hinge_loss_param { norm: L1 }", 1),
                                           ("hinge_loss_param { norm: L2 }", 2)])
def test_hinge_loss_against_a_loop(params, power):
    scores, labels = hinge_inputs()
    (loss,) = forward(make_layer(HINGE % params), [blob_of(scores), blob_of(labels)], tops())
    total = 0.0
    for n in range(5):
        for k in range(4):
            sign = 1.0 if k == labels[n] else -1.0
            total += max(0.0, 1.0 - sign * scores[n, k]) ** power
    assert float(loss) == pytest.approx(total / 5, rel=1e-12)
    check_gradient(make_layer(HINGE % params), [blob_of(scores), blob_of(labels)], tops(),
                   check_bottom=[0])


def test_hinge_loss_backward_scales_by_loss_weight():
    scores, labels = hinge_inputs(seed=1)
    once = backward_with_weight(make_layer(HINGE % ""), [blob_of(scores), blob_of(labels)], 1.0,
                                [True, False])
    thrice = backward_with_weight(make_layer(HINGE % ""), [blob_of(scores), blob_of(labels)], 3.0,
                                  [True, False])
    numpy.testing.assert_allclose(thrice, 3 * once)
    assert set(numpy.unique(numpy.abs(once * 5))) <= {0.0, 1.0}


# -- ContrastiveLoss ----------------------------------------------------------------------------
CONTRASTIVE = 'name: "l" type: "ContrastiveLoss" contrastive_loss_param { margin: 1.5 %s }'


def contrastive_inputs(seed=0):
    rng = numpy.random.default_rng(seed)
    a, b = rng.uniform(0, 1, size=(6, 4, 1, 1)), rng.uniform(0, 1, size=(6, 4, 1, 1))
    similar = numpy.array([1.0, 0.0, 0.0, 1.0, 0.0, 0.0]).reshape(6, 1, 1, 1)
    return a, b, similar


@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_loss_against_a_loop(legacy):
    a, b, similar = contrastive_inputs()
    text = CONTRASTIVE % ("legacy_version: true" if legacy else "")
    (loss,) = forward(make_layer(text), [blob_of(a), blob_of(b), blob_of(similar)], tops())
    total = 0.0
    for n in range(6):
        d2 = float(((a[n] - b[n]) ** 2).sum())
        if similar[n, 0, 0, 0]:
            total += d2
        elif legacy:
            total += max(1.5 - d2, 0.0)
        else:
            total += max(1.5 - math.sqrt(d2), 0.0) ** 2
    assert float(loss) == pytest.approx(total / 12, rel=1e-12)
    # Caffe's threshold: the gradient divides by d + 1e-4, not d
    check_gradient(make_layer(text), [blob_of(a), blob_of(b), blob_of(similar)], tops(),
                   check_bottom=[0, 1], threshold=1e-2)


def test_contrastive_loss_pairs_past_the_margin_get_no_gradient():
    a = numpy.array([[0.0, 0.0], [0.0, 0.0]])
    b = numpy.array([[3.0, 0.0], [0.5, 0.0]])
    dx = backward_with_weight(make_layer(CONTRASTIVE % ""),
                              [blob_of(a), blob_of(b), blob_of([0.0, 0.0])], 1.0, [True, True, False])
    numpy.testing.assert_array_equal(dx[0], [0.0, 0.0])     # d = 3 > margin
    assert dx[1, 0] == pytest.approx(-(1.5 - 0.5) / (0.5 + 1e-4) * -0.5 / 2)


def test_contrastive_loss_errors():
    layer = make_layer(CONTRASTIVE % "")
    with pytest.raises(LayerError, match="pairs"):
        forward(layer, [blob_of(numpy.ones((2, 3))), blob_of(numpy.ones((2, 4))), blob_of([1.0, 0.0])],
                tops())
    with pytest.raises(LayerError, match="3 similarity labels"):
        forward(make_layer(CONTRASTIVE % ""), [blob_of(numpy.ones((2, 3))), blob_of(numpy.ones((2, 3))),
                                               blob_of([1.0, 0.0, 1.0])], tops())
    assert layer.allow_force_backward(1) and not layer.allow_force_backward(2)


@pytest.mark.parametrize("type_name", ["MultinomialLogisticLoss", "InfogainLoss", "HingeLoss",
                                       "SigmoidCrossEntropyLoss", "ContrastiveLoss"])
def test_new_losses_are_loss_layers(type_name):
    assert layer_class(type_name).is_loss


# -- numpy vs cupy ----------------------------------------------------------------------------
@needs_gpu
@pytest.mark.parametrize("text, bottoms, propagate", [
    (MLL, [numpy.random.default_rng(0).uniform(0.1, 1, (4, 5)), numpy.array([0.0, 4.0, 2.0, 1.0])],
     [True, False]),
    (INFOGAIN % "loss_param { ignore_label: 1 }", list(scores_and_labels(spatial=(2,)))
     + [infogain_matrix(5)], [True, False, False]),
    (SCE % "loss_param { ignore_label: -1 normalization: VALID }", list(sce_inputs(ignore=-1)),
     [True, False]),
    (HINGE % "hinge_loss_param { norm: L2 }", list(hinge_inputs()), [True, False]),
    (CONTRASTIVE % "", list(contrastive_inputs()), [True, True, False]),
])
def test_numpy_and_cupy_agree(text, bottoms, propagate):
    assert_same_on_both_backends(text, bottoms, propagate=propagate)
