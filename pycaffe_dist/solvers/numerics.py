"""Finding where a NaN or Inf first appeared, so the user is told the layer."""
from .. import backend


class NumericalError(ArithmeticError):
    """Training produced NaN or Inf; the message names the iteration and the first layer."""


def _bad(xp, array):
    return array.size and not bool(xp.isfinite(array).all())


def locate(net):
    """Describe the first place (forward order, then backward) holding a non-finite value."""
    xp = net.xp
    for name, layer, tops in zip(net.layer_names, net.layers, net.top_ids):
        for t in tops:
            if _bad(xp, net.blobs[t].data):
                return "first in the forward output %r of layer %r (%s)" % (t, name, layer.type)
    for i in range(len(net.layers) - 1, -1, -1):
        layer, name = net.layers[i], net.layer_names[i]
        for j, blob in enumerate(layer.blobs):
            if _bad(xp, blob.diff):
                return "first in the gradient of parameter %d of layer %r (%s)" % (j, name, layer.type)
        for j, b in enumerate(net.bottom_ids[i]):
            if net.bottom_need_backward[i][j] and _bad(xp, net.blobs[b].diff):
                return "first in the gradient of bottom %r of layer %r (%s)" % (b, name, layer.type)
    return "in no blob the net still holds (check the learning rate and the input data)"


def gradients_finite(net):
    """Whether every parameter gradient is finite.

    One pass: a sum is finite when every term is, and NaN or Inf when one
    is not. A sum can also overflow on finite gradients (beyond 3.4e38 in
    float32), so a non-finite sum is confirmed with max and min, which
    propagate NaN and cannot overflow."""
    g = net.flat_diff
    if not g.size:
        return True
    xp = net.xp
    with backend.numpy.errstate(over="ignore"):     # an overflowing sum is handled below
        total = g.sum()
    if bool(xp.isfinite(total)):
        return True
    return bool(xp.isfinite(g.max()) and xp.isfinite(g.min()))


def describe(net, iteration, loss):
    what = "loss is %s" % loss if not backend.numpy.isfinite(loss) else "gradients hold NaN or Inf"
    return "iteration %d: the %s, %s" % (iteration, what, locate(net))
