"""Loss layers (SoftmaxWithLoss, MultinomialLogisticLoss, InfogainLoss,
EuclideanLoss, SigmoidCrossEntropyLoss) and Accuracy. (HingeLoss and
ContrastiveLoss live in `margin_loss`.)

A loss layer's first top is a scalar (shape ()). The Net sets that top's
diff to the layer's loss weight before backward, so gradients are scaled by
top[0].diff; it stays a device array, so no GPU sync happens here.
"""
import numpy

from ..ops import kernels
from ..proto import io as proto_io
from ..proto.caffe_pb2 import BlobProto, LossParameter
from ..proto.errors import ProtoError
from .base import Layer, register
from ..snapshot import proto_to_array
from .common import canonical_axis, scratch, softmax, split_shape

FULL, VALID, BATCH_SIZE, NONE = (LossParameter.FULL, LossParameter.VALID,
                                 LossParameter.BATCH_SIZE, LossParameter.NONE)
# Caffe clamps probabilities at FLT_MIN (for both precisions) before the log.
PROB_FLOOR = float(numpy.finfo(numpy.float32).tiny)
# ... except in MultinomialLogisticLoss and InfogainLoss (kLOG_THRESHOLD).
LOG_THRESHOLD = 1e-20


def normalization_mode(loss_param):
    """The NormalizationMode, honouring the legacy `normalize` bool when it alone is set."""
    if not loss_param.HasField("normalization") and loss_param.HasField("normalize"):
        return VALID if loss_param.normalize else BATCH_SIZE
    return loss_param.normalization


def optional_ignore_label(loss_or_accuracy_param):
    p = loss_or_accuracy_param
    return int(p.ignore_label) if p.HasField("ignore_label") else None


class LabelledLayer(Layer):
    """Shared by layers reading per-position class labels from bottom[1].

    bottom[0] is viewed as (outer, classes, inner) around `axis`; bottom[1]
    holds one label per (outer, inner) position.
    """

    exact_num_bottom = 2

    def check_label_count(self, bottom):
        outer, _, inner = self.dims
        if bottom[1].count != outer * inner:
            raise self.error(
                f"bottom[1] has {bottom[1].count} labels but bottom[0] {bottom[0].shape} makes "
                f"{outer * inner} predictions around axis {self.axis}; the counts must agree")

    def flat_base(self):
        """Flat index of class 0 at each (outer, inner) position, cached per shape."""
        outer, classes, inner = self.dims
        if getattr(self, "_base_dims", None) != self.dims:
            xp = self.xp
            self._base = (xp.arange(outer)[:, None] * (classes * inner)
                          + xp.arange(inner)[None, :])
            self._base_dims = self.dims
        return self._base

    def read_labels(self, label_blob):
        """(labels, valid): integer labels shaped (outer, inner) with ignored
        positions set to 0 so they index safely, and the mask of positions that
        count (None when nothing is ignored)."""
        outer, classes, inner = self.dims
        labels = label_blob.data.reshape(outer, inner).astype(numpy.int64)
        valid = None if self.ignore_label is None else labels != self.ignore_label
        bad = (labels < 0) | (labels >= classes)
        if valid is not None:
            bad &= valid
        if bool(bad.any()):
            value = int(labels[bad][0])
            raise self.error(f"label value {value} is out of range: bottom[0] has {classes} "
                             f"classes along axis {self.axis} (labels 0..{classes - 1})")
        if valid is not None:
            labels *= valid
        return labels, valid

    def label_index(self, labels):
        """Flat index into bottom[0] of each position's labelled class."""
        return self.flat_base() + labels * self.dims[2]


@register
class SoftmaxWithLoss(LabelledLayer):
    """Multinomial logistic loss of the softmax of bottom[0] against labels bottom[1].

    Optional second top: the softmax probabilities.
    """

    type = "SoftmaxWithLoss"
    min_top = 1
    max_top = 2
    is_loss = True

    def layer_setup(self, bottom, top):
        self.axis = canonical_axis(self, self.param.softmax_param.axis, len(bottom[0].shape))
        self.ignore_label = optional_ignore_label(self.param.loss_param)
        self.normalization = normalization_mode(self.param.loss_param)

    def reshape(self, bottom, top):
        self.dims = split_shape(bottom[0].shape, self.axis)
        self.check_label_count(bottom)
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape(bottom[0].shape)

    def normalizer(self, valid):
        """What the summed loss is divided by; at least 1, as in Caffe."""
        outer, _, inner = self.dims
        if self.normalization == FULL or (self.normalization == VALID and valid is None):
            return float(max(outer * inner, 1))
        if self.normalization == VALID:
            return self.xp.maximum(valid.sum(), 1).astype(self._prob.dtype)
        if self.normalization == BATCH_SIZE:
            return float(max(outer, 1))
        return 1.0

    def forward(self, bottom, top):
        if kernels.on_gpu(bottom[0].data):   # CuPy: softmax and loss in one kernel (ops/kernels.py)
            return kernels.softmax_loss_forward(self, bottom, top)
        xp = self.xp
        outer, _, inner = self.dims
        x = bottom[0].data.reshape(self.dims)
        prob = top[1].data if len(top) > 1 else scratch(self, "_prob_buf", x.shape, x.dtype)
        self._prob = prob.reshape(self.dims)
        softmax(xp, x, self._prob, scratch(self, "_scale_buf", (outer, 1, inner), x.dtype))
        labels, self._valid = self.read_labels(bottom[1])
        self._index = self.label_index(labels)
        picked = self._prob.reshape(-1)[self._index]
        log_prob = xp.log(xp.maximum(picked, PROB_FLOOR))
        if self._valid is not None:
            log_prob *= self._valid
        self._norm = self.normalizer(self._valid)
        top[0].data[...] = -log_prob.sum() / self._norm

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            raise self.error("cannot backpropagate to the labels (bottom[1])")
        if not propagate_down[0]:
            return
        if kernels.on_gpu(bottom[0].diff):   # CuPy: one kernel (ops/kernels.py)
            return kernels.softmax_loss_backward(self, top, bottom)
        # d loss / d x = prob - onehot(label), zero at ignored positions
        dx = bottom[0].diff.reshape(self.dims)
        dx[...] = self._prob
        flat = dx.reshape(-1)
        flat[self._index] -= 1
        if self._valid is not None:
            dx *= self._valid[:, None, :]
        dx *= top[0].diff / self._norm


@register
class EuclideanLoss(Layer):
    """loss = sum((a - b)^2) / (2 N), N the size of axis 0."""

    type = "EuclideanLoss"
    exact_num_bottom = 2
    exact_num_top = 1
    is_loss = True

    def reshape(self, bottom, top):
        a, b = bottom
        # Caffe compares counts past the first axis, so (N, 1) predictions
        # match (N,) targets.
        if a.count != b.count or not a.shape or not b.shape or a.shape[0] != b.shape[0]:
            raise self.error(f"bottom[0] {a.shape} and bottom[1] {b.shape} must have the "
                             "same number of items and values per item")
        top[0].reshape(())
        self.num = max(a.shape[0], 1) if a.shape else 1

    def allow_force_backward(self, bottom_index):
        return True  # both bottoms are data here, unlike a label

    def forward(self, bottom, top):
        a, b = bottom[0].data, bottom[1].data
        self._diff = scratch(self, "_diff_buf", a.shape, a.dtype)
        self.xp.subtract(a, b.reshape(a.shape), out=self._diff)
        flat = self._diff.reshape(-1)
        top[0].data[...] = self.xp.dot(flat, flat) / (2.0 * self.num)

    def backward(self, top, propagate_down, bottom):
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                dx = bottom[i].diff.reshape(self._diff.shape)
                self.xp.multiply(self._diff, top[0].diff * (sign / self.num), out=dx)


@register
class Accuracy(LabelledLayer):
    """Fraction of positions whose label is among the top_k scores.

    A label counts as found when fewer than top_k other classes score at
    least as high as it. Optional second top: the accuracy of each class.
    """

    type = "Accuracy"
    min_top = 1
    max_top = 2
    allow_backward = False

    def layer_setup(self, bottom, top):
        p = self.param.accuracy_param
        self.top_k = int(p.top_k)
        self.axis = canonical_axis(self, p.axis, len(bottom[0].shape))
        self.ignore_label = optional_ignore_label(p)

    def reshape(self, bottom, top):
        self.dims = split_shape(bottom[0].shape, self.axis)
        classes = self.dims[1]
        if not 1 <= self.top_k <= classes:
            raise self.error(f"top_k {self.top_k} must be between 1 and the number of "
                             f"classes {classes}")
        self.check_label_count(bottom)
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape((classes,))

    def forward(self, bottom, top):
        xp = self.xp
        scores = bottom[0].data.reshape(self.dims)
        labels, valid = self.read_labels(bottom[1])
        true_score = scores.reshape(-1)[self.label_index(labels)]
        # the labelled class itself is one of those scoring >= its score
        rivals = (scores >= true_score[:, None, :]).sum(axis=1) - 1
        correct = rivals < self.top_k
        if valid is not None:
            correct &= valid
        counted = max(labels.size, 1) if valid is None else xp.maximum(valid.sum(), 1)
        top[0].data[...] = correct.sum() / counted
        if len(top) > 1:
            self._per_class(labels, valid, correct, top[1].data)

    def _per_class(self, labels, valid, correct, out):
        xp = self.xp
        classes = self.dims[1]
        flat = labels.reshape(-1)
        weight = None if valid is None else valid.reshape(-1).astype(out.dtype)
        seen = xp.bincount(flat, weights=weight, minlength=classes)
        hits = xp.bincount(flat, weights=correct.reshape(-1).astype(out.dtype), minlength=classes)
        out[...] = hits / xp.maximum(seen, 1)


@register
class MultinomialLogisticLoss(LabelledLayer):
    """loss = -sum_n log(p[n, label_n]) / N for probabilities bottom[0] (N x C
    ...; the values after axis 0 are the classes), p clamped at 1e-20 as Caffe."""

    type = "MultinomialLogisticLoss"
    exact_num_top = 1
    is_loss = True
    axis = 1
    ignore_label = None

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        n = shape[0] if shape else 1
        self.dims = (n, bottom[0].count // max(n, 1), 1)
        self.check_label_count(bottom)
        top[0].reshape(())

    def forward(self, bottom, top):
        labels, _ = self.read_labels(bottom[1])
        self._index = self.label_index(labels)
        self._picked = self.xp.maximum(bottom[0].data.reshape(-1)[self._index], LOG_THRESHOLD)
        top[0].data[...] = -self.xp.log(self._picked).sum() / self.dims[0]

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            raise self.error("cannot backpropagate to the labels (bottom[1])")
        if not propagate_down[0]:
            return
        # d loss / d p[n, label_n] = -1 / (N p); zero elsewhere
        dx = bottom[0].diff.reshape(-1)
        dx[...] = 0
        dx[self._index] = -(top[0].diff / self.dims[0]) / self._picked


@register
class InfogainLoss(SoftmaxWithLoss):
    """Softmax of bottom[0] along infogain_loss_param.axis, then per position
    loss = -sum_l H[label, l] log(p_l), normalized as SoftmaxWithLoss (Caffe
    1.0's form; with H the identity it is SoftmaxWithLoss).

    H (classes x classes) comes from bottom[2] or, without one, from the
    BlobProto file infogain_loss_param.source. Optional second top: the
    probabilities.
    """

    type = "InfogainLoss"
    exact_num_bottom = None
    min_bottom = 2
    max_bottom = 3

    def layer_setup(self, bottom, top):
        p = self.param.infogain_loss_param
        self.axis = canonical_axis(self, p.axis, len(bottom[0].shape))
        self.ignore_label = optional_ignore_label(self.param.loss_param)
        self.normalization = normalization_mode(self.param.loss_param)
        if len(bottom) < 3:
            if not p.source:
                raise self.error("needs the infogain matrix: set infogain_loss_param.source "
                                 "to a BlobProto file, or give it as bottom[2]")
            try:
                matrix = proto_to_array(proto_io.read_binary(p.source, BlobProto), p.source)
            except ProtoError as e:
                raise self.error(f"infogain_loss_param.source: {e}") from None
            self._file_matrix = self.xp.asarray(matrix.astype(self.dtype))

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        classes = self.dims[1]
        matrix = bottom[2].data if len(bottom) > 2 else self._file_matrix
        if matrix.size != classes * classes:
            where = "bottom[2]" if len(bottom) > 2 else self.param.infogain_loss_param.source
            raise self.error(f"the infogain matrix from {where} has shape {tuple(matrix.shape)}; "
                             f"it must hold {classes} x {classes} values for the {classes} "
                             f"classes along axis {self.axis}")

    def forward(self, bottom, top):
        xp = self.xp
        outer, classes, inner = self.dims
        x = bottom[0].data.reshape(self.dims)
        prob = top[1].data if len(top) > 1 else scratch(self, "_prob_buf", x.shape, x.dtype)
        self._prob = prob.reshape(self.dims)
        softmax(xp, x, self._prob, scratch(self, "_scale_buf", (outer, 1, inner), x.dtype))
        labels, self._valid = self.read_labels(bottom[1])
        self._labels = labels
        matrix = (bottom[2].data if len(bottom) > 2 else self._file_matrix).reshape(classes, classes)
        # row H[label] of each position, laid out like the probabilities
        self._rows = matrix[labels].transpose(0, 2, 1)
        log_prob = xp.log(xp.maximum(self._prob, LOG_THRESHOLD))
        terms = (self._rows * log_prob).sum(axis=1)
        if self._valid is not None:
            terms *= self._valid
        self._norm = self.normalizer(self._valid)
        top[0].data[...] = -terms.sum() / self._norm

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            raise self.error("cannot backpropagate to the labels (bottom[1])")
        if len(bottom) > 2 and propagate_down[2]:
            raise self.error("cannot backpropagate to the infogain matrix (bottom[2])")
        if not propagate_down[0]:
            return
        # d loss / d x_l = p_l * sum(H[label]) - H[label, l]
        dx = bottom[0].diff.reshape(self.dims)
        row_sums = self._rows.sum(axis=1, keepdims=True)
        self.xp.multiply(self._prob, row_sums, out=dx)
        dx -= self._rows
        if self._valid is not None:
            dx *= self._valid[:, None, :]
        dx *= top[0].diff / self._norm


@register
class SigmoidCrossEntropyLoss(Layer):
    """Cross entropy of targets bottom[1] (in [0, 1]) against sigmoid(bottom[0]),
    computed stably from the logits; positions whose target is ignore_label are
    skipped. Normalization defaults to BATCH_SIZE, as in Caffe 1.0."""

    type = "SigmoidCrossEntropyLoss"
    exact_num_bottom = 2
    exact_num_top = 1
    is_loss = True

    def layer_setup(self, bottom, top):
        p = self.param.loss_param
        self.ignore_label = optional_ignore_label(p)
        self.normalization = (normalization_mode(p)
                              if p.HasField("normalization") or p.HasField("normalize")
                              else BATCH_SIZE)

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise self.error(f"bottom[0] {bottom[0].shape} and the targets bottom[1] "
                             f"{bottom[1].shape} must have the same count")
        shape = bottom[0].shape
        self.outer = shape[0] if shape else 1
        self.count = bottom[0].count
        top[0].reshape(())

    def normalizer(self, valid, dtype):
        """What the summed loss is divided by; at least 1, as in Caffe."""
        if self.normalization == FULL or (self.normalization == VALID and valid is None):
            return float(max(self.count, 1))
        if self.normalization == VALID:
            return self.xp.maximum(valid.sum(), 1).astype(dtype)
        if self.normalization == BATCH_SIZE:
            return float(max(self.outer, 1))
        return 1.0

    def forward(self, bottom, top):
        xp = self.xp
        x = bottom[0].data
        target = bottom[1].data.reshape(x.shape)
        self._valid = (None if self.ignore_label is None
                       else target.astype(numpy.int64) != self.ignore_label)
        # -[t log s(x) + (1 - t) log(1 - s(x))] = max(x, 0) - x t + log(1 + exp(-|x|))
        terms = scratch(self, "_terms", x.shape, x.dtype)
        xp.abs(x, out=terms)
        xp.negative(terms, out=terms)
        xp.exp(terms, out=terms)
        xp.log1p(terms, out=terms)
        terms += xp.maximum(x, 0)
        terms -= x * target
        if self._valid is not None:
            terms *= self._valid
        self._norm = self.normalizer(self._valid, x.dtype)
        top[0].data[...] = terms.sum() / self._norm

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            raise self.error("cannot backpropagate to the targets (bottom[1])")
        if not propagate_down[0]:
            return
        # d loss / d x = sigmoid(x) - t
        xp = self.xp
        x, dx = bottom[0].data, bottom[0].diff
        cast = dx.dtype.type
        xp.multiply(x, cast(0.5), out=dx)
        xp.tanh(dx, out=dx)
        dx *= cast(0.5)
        dx += cast(0.5)
        dx -= bottom[1].data.reshape(x.shape)
        if self._valid is not None:
            dx *= self._valid
        dx *= top[0].diff / self._norm
