"""A ReLU fused into the op before it (Net._fusable_relus): each path of
Convolution and MaxPooling applies max(y, 0) on its lanes' parts, and the
result is the unfused output through numpy.maximum, to the bit."""
import numpy
import pytest

from pycaffe_dist.ops import MaxPooling, PoolGeometry, fourier, pooled_size, threads, winograd
from pycaffe_dist.ops.conv import ConvGeometry, Convolution

F32 = numpy.float32


def conv_case(path, monkeypatch):
    """(op, x, weight, bias) whose forward takes `path`."""
    rng = numpy.random.default_rng(3)
    monkeypatch.setattr(fourier, "ENABLED", path == "fourier")
    monkeypatch.setattr(winograd, "ENABLED", path == "winograd")
    if path == "fourier":
        monkeypatch.setattr(fourier, "MAX_COST_RATIO", float("inf"))
    if path == "winograd":
        monkeypatch.setattr(winograd, "MIN_DEPTH", {3: 1, 5: 1})
    kernel, pad, channels = (3, 1, 4) if path != "first" else (5, 2, 3)
    x = rng.standard_normal((6, channels, 9, 8)).astype(F32)
    weight = rng.standard_normal((5, channels, kernel, kernel)).astype(F32)
    bias = rng.standard_normal(5).astype(F32)
    return Convolution(ConvGeometry((kernel, kernel), (1, 1), (pad, pad), (1, 1))), x, weight, bias


@pytest.mark.parametrize("lanes", [1, 2])
@pytest.mark.parametrize("path", ["first", "im2col", "fourier", "winograd"])
def test_convolution_with_relu_is_the_rectified_output(path, lanes, monkeypatch):
    monkeypatch.setattr(threads, "count", lambda xp=None: lanes)
    op, x, weight, bias = conv_case(path, monkeypatch)
    plain, fused = numpy.empty((6, 5, 9, 8), F32), numpy.empty((6, 5, 9, 8), F32)
    op.forward(x, weight, bias, plain)
    op.forward(x, weight, bias, fused, relu=True)
    assert (plain < 0).any() and (fused >= 0).all()
    numpy.testing.assert_array_equal(fused, numpy.maximum(plain, 0))
    taken = {"fourier": op._fourier, "winograd": op._winograd}.get(path)
    assert taken is not None or path in ("first", "im2col")


@pytest.mark.parametrize("lanes", [1, 2])
def test_max_pooling_with_relu_is_the_rectified_output(lanes, monkeypatch):
    monkeypatch.setattr(threads, "count", lambda xp=None: lanes)
    x = numpy.random.default_rng(4).standard_normal((4, 5, 11, 10)).astype(F32)
    out = tuple(pooled_size(s, 3, 2, 0) for s in (11, 10))
    results = []
    for relu in (False, True):
        op = MaxPooling(PoolGeometry((3, 3), (2, 2), (0, 0), (11, 10), out))
        y, dx = numpy.empty((4, 5) + out, F32), numpy.empty_like(x)
        op.forward(x, y, relu=relu)
        op.backward(numpy.ones_like(y), dx)
        results.append((y, dx))
    (plain, plain_dx), (fused, fused_dx) = results
    assert (plain < 0).any()
    numpy.testing.assert_array_equal(fused, numpy.maximum(plain, 0))
    numpy.testing.assert_array_equal(fused_dx, plain_dx)     # the argmax is the pooling's own
