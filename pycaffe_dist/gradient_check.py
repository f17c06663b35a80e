"""Numeric gradient checks, the way Caffe's GradientChecker does them.

The objective is 0.5 * sum(top^2) over all tops (so each top diff is its own
data); derivatives are central differences with `step`; a point passes when
|analytic - numeric| <= threshold * max(|analytic|, |numeric|, 1). Randomness
is re-seeded before every forward so Dropout-like layers see the same mask.
Points within `kink_range` of `kink` in the checked input are skipped
(ReLU at 0, max ties).
"""
import numpy

from . import backend


class GradientCheckFailure(AssertionError):
    pass


def _objective(layer, bottom, top, seed):
    backend.set_random_seed(seed)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    return sum(0.5 * float((backend.to_host(t.data).astype(numpy.float64) ** 2).sum()) for t in top)


def check_gradient(layer, bottom, top, step=1e-2, threshold=1e-3, check_bottom=None,
                   check_params=True, kink=0.0, kink_range=-1.0, max_points=None, seed=1701,
                   setup=True):
    """Compare analytic and numeric gradients of `layer`.

    Args:
        layer: an un-set-up layer instance (or a set-up one with setup=False).
        bottom, top: lists of Blobs.
        check_bottom: indices of bottoms to check (default: all).
        check_params: also check the layer's learnable blobs.
        max_points: check at most this many random elements per blob.
    Raises:
        GradientCheckFailure naming the blob and element that disagree.
    """
    if setup:
        backend.set_random_seed(seed)
        layer.setup(bottom, top)
    if check_bottom is None:
        check_bottom = list(range(len(bottom)))
    _objective(layer, bottom, top, seed)
    for t in top:
        t.diff[...] = t.data
    for b in layer.blobs:
        b.diff[...] = 0
    propagate = [i in check_bottom for i in range(len(bottom))]
    layer.param_propagate_down = [True] * len(layer.blobs)
    layer.backward(top, propagate, bottom)

    targets = [("bottom[%d]" % i, bottom[i]) for i in check_bottom]
    if check_params:
        targets += [("param[%d]" % i, b) for i, b in enumerate(layer.blobs)]
    analytic = [backend.to_host(blob.diff).astype(numpy.float64).copy() for _, blob in targets]
    picker = numpy.random.default_rng(seed)
    checked = 0
    for (label, blob), grad in zip(targets, analytic):
        flat = blob.data.reshape(-1)
        indices = numpy.arange(flat.size)
        if max_points is not None and flat.size > max_points:
            indices = picker.choice(flat.size, max_points, replace=False)
        for k in indices:
            original = float(flat[k])
            if kink_range > 0 and abs(original - kink) < kink_range:
                continue
            flat[k] = original + step
            plus = _objective(layer, bottom, top, seed)
            flat[k] = original - step
            minus = _objective(layer, bottom, top, seed)
            flat[k] = original
            numeric = (plus - minus) / (2 * step)
            a = grad.reshape(-1)[k]
            scale = max(abs(a), abs(numeric), 1.0)
            if abs(a - numeric) > threshold * scale:
                raise GradientCheckFailure(
                    "%s (%s) %s element %d: analytic %.6g vs numeric %.6g"
                    % (layer.name, layer.type, label, k, a, numeric))
            checked += 1
    _objective(layer, bottom, top, seed)
    return checked
