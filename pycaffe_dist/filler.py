"""Fillers: how learnable blobs get their initial values (FillerParameter)."""
import math

import numpy

from . import backend


def _fans(shape):
    count = int(numpy.prod(shape))
    fan_in = count // shape[0] if len(shape) > 0 and shape[0] else count
    fan_out = count // shape[1] if len(shape) > 1 and shape[1] else count
    return fan_in, fan_out


def _norm(param, shape):
    fan_in, fan_out = _fans(shape)
    mode = param.variance_norm
    if mode == 1:  # FAN_OUT
        return fan_out
    if mode == 2:  # AVERAGE
        return (fan_in + fan_out) / 2.0
    return fan_in


def _constant(param, shape, g):
    return numpy.full(shape, param.value)


def _uniform(param, shape, g):
    return g.uniform(param.min, param.max, shape)


def _gaussian(param, shape, g):
    values = g.normal(param.mean, param.std, shape)
    if param.sparse >= 0:
        # Keep each weight with probability sparse / num_outputs, so each
        # output sees `sparse` nonzero inputs on average.
        if len(shape) < 2:
            raise ValueError("sparse gaussian filler needs a blob with at least 2 axes")
        num_outputs = shape[0]
        keep = g.random(shape) < (param.sparse / float(num_outputs))
        values = values * keep
    return values


def _positive_unitball(param, shape, g):
    values = g.uniform(0, 1, shape).reshape(shape[0], -1)
    values /= values.sum(axis=1, keepdims=True)
    return values.reshape(shape)


def _xavier(param, shape, g):
    scale = math.sqrt(3.0 / _norm(param, shape))
    return g.uniform(-scale, scale, shape)


def _msra(param, shape, g):
    std = math.sqrt(2.0 / _norm(param, shape))
    return g.normal(0.0, std, shape)


def _bilinear(param, shape, g):
    if len(shape) != 4 or shape[2] != shape[3]:
        raise ValueError("bilinear filler needs a square 4-D kernel, got %s" % (shape,))
    k = shape[3]
    f = math.ceil(k / 2.0)
    c = (k - 1) / (2.0 * f)   # centre of the kernel in units of the factor
    idx = numpy.arange(k)
    w1 = 1 - numpy.abs(idx / f - c)
    return numpy.broadcast_to(numpy.outer(w1, w1), shape)


FILLERS = {
    "constant": _constant,
    "uniform": _uniform,
    "gaussian": _gaussian,
    "positive_unitball": _positive_unitball,
    "xavier": _xavier,
    "msra": _msra,
    "bilinear": _bilinear,
}


def fill(array, param):
    """Fill `array` in place as the FillerParameter `param` says."""
    try:
        make = FILLERS[param.type]
    except KeyError:
        raise ValueError("unknown filler type %r (known: %s)"
                         % (param.type, ", ".join(sorted(FILLERS)))) from None
    values = make(param, tuple(array.shape), backend.rng.generator)
    array[...] = backend.to_device(numpy.asarray(values, dtype=array.dtype), backend.get_array_module(array))
    return array
