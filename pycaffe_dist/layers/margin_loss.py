"""Margin losses: HingeLoss (one-vs-all, L1 or L2) and ContrastiveLoss (pairs).

As every loss layer, the first top is a scalar and gradients are scaled by
its diff (the loss weight the Net sets before backward).
"""
from ..proto.caffe_pb2 import HingeLossParameter
from .base import Layer, register
from .common import scratch
from .loss import LabelledLayer

L1, L2 = HingeLossParameter.L1, HingeLossParameter.L2


@register
class HingeLoss(LabelledLayer):
    """loss = sum_{n,k} max(0, 1 - d(label_n == k) x[n, k])^p / N, where d is +1
    for the labelled class and -1 otherwise and p is 1 (L1) or 2 (L2); the
    values after axis 0 are the classes."""

    type = "HingeLoss"
    exact_num_top = 1
    is_loss = True
    axis = 1
    ignore_label = None

    def layer_setup(self, bottom, top):
        self.norm = self.param.hinge_loss_param.norm
        if self.norm not in (L1, L2):
            raise self.error(f"unknown hinge_loss_param.norm {self.norm}")

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        n = shape[0] if shape else 1
        self.dims = (n, bottom[0].count // max(n, 1), 1)
        self.check_label_count(bottom)
        top[0].reshape(())

    def forward(self, bottom, top):
        xp = self.xp
        labels, _ = self.read_labels(bottom[1])
        self._index = self.label_index(labels).reshape(-1)
        # margins 1 + x for other classes, 1 - x for the labelled one, floored at 0
        margin = scratch(self, "_margin", (bottom[0].count,), bottom[0].data.dtype)
        margin[...] = bottom[0].data.reshape(-1)
        margin[self._index] *= -1
        margin += margin.dtype.type(1)
        xp.maximum(margin, 0, out=margin)
        total = margin.sum() if self.norm == L1 else xp.dot(margin, margin)
        top[0].data[...] = total / self.dims[0]

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            raise self.error("cannot backpropagate to the labels (bottom[1])")
        if not propagate_down[0]:
            return
        dx = bottom[0].diff.reshape(-1)
        if self.norm == L1:
            self.xp.sign(self._margin, out=dx)
        else:
            self.xp.multiply(self._margin, dx.dtype.type(2), out=dx)
        dx[self._index] *= -1
        dx *= top[0].diff / self.dims[0]


@register
class ContrastiveLoss(Layer):
    """Pairs (a, b) = (bottom[0], bottom[1]) labelled similar (bottom[2] != 0)
    or not: loss = sum(y d^2 + (1 - y) max(margin - d, 0)^2) / 2N with d the
    Euclidean distance; legacy_version uses max(margin - d^2, 0) instead.

    The gradient is Caffe's, which divides by d + 1e-4 (not d) for dissimilar
    pairs so that it stays finite when a pair coincides.
    """

    type = "ContrastiveLoss"
    exact_num_bottom = 3
    exact_num_top = 1
    is_loss = True

    def layer_setup(self, bottom, top):
        p = self.param.contrastive_loss_param
        self.margin = float(p.margin)
        self.legacy = bool(p.legacy_version)

    def allow_force_backward(self, bottom_index):
        return bottom_index < 2   # the pair, not its label

    def reshape(self, bottom, top):
        a, b, y = bottom
        if a.shape != b.shape or not a.shape:
            raise self.error(f"bottom[0] {a.shape} and bottom[1] {b.shape} must be pairs of "
                             "the same shape (N x C ...)")
        n = a.shape[0]
        if y.count != n:
            raise self.error(f"bottom[2] holds {y.count} similarity labels for {n} pairs")
        self.dims = (n, a.count // max(n, 1))
        top[0].reshape(())

    def forward(self, bottom, top):
        xp = self.xp
        n = self.dims[0]
        diff = scratch(self, "_diff", self.dims, bottom[0].data.dtype)
        xp.subtract(bottom[0].data.reshape(self.dims), bottom[1].data.reshape(self.dims), out=diff)
        self._dist_sq = (diff * diff).sum(axis=1)
        # as Caffe: the label is truncated to an integer, then nonzero means similar
        self._similar = bottom[2].data.reshape(n).astype(int) != 0
        if self.legacy:
            apart = xp.maximum(self.margin - self._dist_sq, 0)
        else:
            apart = xp.maximum(self.margin - xp.sqrt(self._dist_sq), 0) ** 2
        loss = xp.where(self._similar, self._dist_sq, apart).sum()
        top[0].data[...] = loss / (2.0 * n)

    def backward(self, top, propagate_down, bottom):
        xp = self.xp
        if propagate_down[2]:
            raise self.error("cannot backpropagate to the similarity labels (bottom[2])")
        n = self.dims[0]
        # per pair: d loss / d a = coeff * (a - b); d loss / d b = -that
        if self.legacy:
            apart = -(self.margin - self._dist_sq > 0).astype(self._diff.dtype)
        else:
            dist = xp.sqrt(self._dist_sq)
            gap = self.margin - dist
            apart = -gap * (gap > 0) / (dist + 1e-4)
        coeff = xp.where(self._similar, 1.0, apart).astype(self._diff.dtype)
        coeff = (coeff * (top[0].diff / n))[:, None]
        for i, sign in ((0, 1), (1, -1)):
            if propagate_down[i]:
                dx = bottom[i].diff.reshape(self.dims)
                xp.multiply(self._diff, coeff if sign > 0 else -coeff, out=dx)
