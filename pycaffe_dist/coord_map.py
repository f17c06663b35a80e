"""Coordinate maps between NetSpec tops, for FCN-style Crop offsets (pycaffe's caffe.coord_map).

A spatial layer maps input coordinates to output coordinates affinely, per
spatial axis: x_out = a * x_in + b. Composing the maps along the layers
between two tops tells how one's pixels sit on the other's, and `crop`
makes the Crop layer that aligns them:

    n.upscore = L.Deconvolution(n.score, convolution_param=dict(kernel_size=64, stride=32, ...))
    n.score_crop = crop(n.upscore, n.data)     # offsets computed, not guessed

A map is (axis, a, b): `axis` is the first spatial axis it applies to (None
for layers that do not move pixels), a and b arrays over the spatial axes.
"""
import numpy

from .net_spec import layers as L

# Layers whose output pixel i depends on input pixel i alone.
PASS_THROUGH_LAYERS = frozenset([
    "AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout", "Eltwise", "ELU", "Exp", "Log", "LRN", "MVN",
    "Power", "PReLU", "ReLU", "Scale", "Sigmoid", "Split", "TanH", "Threshold", "Clip", "Swish",
])


class UndefinedMapException(Exception):
    """The layer has no affine coordinate map (InnerProduct, Reshape, ...)."""


class AxisMismatchException(Exception):
    """Two maps apply to different axes and cannot be composed."""


def conv_params(fn):
    """(axis, stride, effective kernel size, pad) of a Convolution/Pooling/Deconvolution call."""
    params = fn.params.get("convolution_param", fn.params)
    legacy = {"pad_h", "pad_w", "kernel_h", "kernel_w", "stride_h", "stride_w"} & set(params)
    if legacy:
        raise ValueError("%s: coord_map needs kernel_size/stride/pad, not %s" % (fn.type_name, sorted(legacy)))
    axis = params.get("axis", 1)
    kernel = numpy.array(params["kernel_size"], ndmin=1)
    dilation = numpy.array(params.get("dilation", 1), ndmin=1)
    stride = numpy.array(params.get("stride", 1), ndmin=1)
    pad = numpy.array(params.get("pad", 0), ndmin=1)
    return axis, stride, (kernel - 1) * dilation + 1, pad


def crop_params(fn):
    """(axis, offset) of a Crop call."""
    params = fn.params.get("crop_param", fn.params)
    return params.get("axis", 2), numpy.array(params.get("offset", 0), ndmin=1)


def coord_map(fn):
    """The map (axis, a, b) of one layer call, from its bottom's coordinates to its top's."""
    if fn.type_name in ("Convolution", "Pooling", "Im2col"):
        axis, stride, kernel, pad = conv_params(fn)
        # Output pixel j covers input pixels stride*j - pad .. + kernel - 1; its
        # centre stride*j - pad + (kernel-1)/2 is where it sits in the input.
        return axis, 1.0 / stride, (pad - (kernel - 1) / 2.0) / stride
    if fn.type_name == "Deconvolution":
        axis, stride, kernel, pad = conv_params(fn)
        return axis, stride, (kernel - 1) / 2.0 - pad
    if fn.type_name in PASS_THROUGH_LAYERS:
        return None, 1, 0
    if fn.type_name == "Crop":
        axis, offset = crop_params(fn)
        return axis - 1, 1, -offset
    raise UndefinedMapException("no coordinate map for %s layers" % fn.type_name)


def compose(first, then):
    """The map of applying `first`, then `then`."""
    ax1, a1, b1 = first
    ax2, a2, b2 = then
    if ax1 is None:
        axis = ax2
    elif ax2 is None or ax1 == ax2:
        axis = ax1
    else:
        raise AxisMismatchException("maps on axes %s and %s" % (ax1, ax2))
    return axis, a2 * a1, a2 * b1 + b2


def inverse(cmap):
    """The map that undoes `cmap`."""
    axis, a, b = cmap
    return axis, 1.0 / a, -b / a


def _walk_bottoms(top):
    # Crop's second bottom only gives the size: coordinates flow through the first.
    bottoms = top.fn.inputs
    return bottoms[:1] if top.fn.type_name == "Crop" else bottoms


def _ancestor_maps(top):
    """{ancestor top: map from the ancestor's coordinates to `top`'s}, walking up the graph."""
    maps = {top: (None, 1, 0)}
    frontier = [top]
    while frontier:
        current = frontier.pop()
        try:
            step = coord_map(current.fn)
        except UndefinedMapException:
            continue
        for bottom in _walk_bottoms(current):
            if bottom not in maps:
                maps[bottom] = compose(step, maps[current])
                frontier.append(bottom)
    return maps


def coord_map_from_to(top_from, top_to):
    """The map from `top_from`'s coordinates to `top_to`'s, through a common ancestor."""
    from_maps = _ancestor_maps(top_from)
    to_maps = _ancestor_maps(top_to)
    for ancestor, to_map in to_maps.items():
        if ancestor in from_maps:
            return compose(inverse(from_maps[ancestor]), to_map)
    raise RuntimeError("could not map between the tops: no common ancestor through spatial layers")


def crop(top_from, top_to):
    """A Crop layer cutting `top_from` to `top_to`'s size, aligned pixel for pixel."""
    axis, a, b = coord_map_from_to(top_from, top_to)
    if not numpy.all(a == 1):
        raise ValueError("cannot crop: the tops differ in scale (a = %s)" % (a,))
    if not numpy.all(b <= 0):
        raise ValueError("cannot crop: %s would need a negative offset (b = %s)" % (top_from.fn.type_name, b))
    if not numpy.all(numpy.round(b) == b):
        raise ValueError("cannot crop: the offset is not a whole number of pixels (b = %s)" % (b,))
    return L.Crop(top_from, top_to, crop_param=dict(axis=axis + 1, offset=[int(v) for v in -numpy.round(b)]))
