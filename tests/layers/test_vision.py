"""Convolution, Pooling and LRN: forward against naive loops written here,
backward against numeric gradients, and the errors users meet."""
import itertools
import math

import numpy
import pytest
from google.protobuf import text_format

from pycaffe_dist.blob import Blob
from pycaffe_dist.gradient_check import check_gradient
from pycaffe_dist.layers import LayerError, layer_class
from pycaffe_dist.proto import caffe_pb2
from tests.layers.test_common import assert_same_on_both_backends, needs_gpu

F64 = numpy.float64


def make_layer(text, phase=caffe_pb2.TRAIN, dtype=F64):
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    layer = layer_class(param.type)(param, phase)
    layer.dtype = dtype
    return layer


def blob(array):
    b = Blob(array.shape, dtype=array.dtype)
    b.data[...] = array
    return b


def run(layer, *inputs, tops=1):
    bottom = [blob(x) for x in inputs]
    top = [Blob((), dtype=inputs[0].dtype) for _ in range(tops)]
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    return bottom, top


def distinct(rng, shape, spacing=0.05):
    """Values at least `spacing` apart, so max pooling has no near-ties."""
    n = int(numpy.prod(shape))
    return (rng.permutation(n) - n / 2.0).reshape(shape) * spacing


# -- naive references ---------------------------------------------------------------
def naive_conv(x, w, b, stride, pad, dilation, group):
    n, c = x.shape[:2]
    o = w.shape[0]
    kernel = w.shape[2:]
    dims = len(kernel)
    xp = numpy.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in pad])
    out = [(x.shape[2 + d] + 2 * pad[d] - dilation[d] * (kernel[d] - 1) - 1) // stride[d] + 1 for d in range(dims)]
    y = numpy.zeros((n, o) + tuple(out))
    cg, og = c // group, o // group
    for oc in range(o):
        channels = slice(oc // og * cg, (oc // og + 1) * cg)
        for pos in itertools.product(*[range(s) for s in out]):
            acc = numpy.zeros(n)
            for off in itertools.product(*[range(k) for k in kernel]):
                at = tuple(pos[d] * stride[d] + off[d] * dilation[d] for d in range(dims))
                acc += (xp[(slice(None), channels) + at] * w[(oc, slice(None)) + off]).sum(axis=1)
            y[(slice(None), oc) + pos] = acc + (0 if b is None else b[oc])
    return y


def caffe_pooled_size(size, k, s, p, ceil=True):
    span = (size + 2 * p - k) / float(s)
    out = (math.ceil(span) if ceil else math.floor(span)) + 1
    if p and (out - 1) * s >= size + p:
        out -= 1
    return out


def naive_pool(x, method, kernel, stride, pad, ceil=True):
    """Caffe's pooling loops: windows clipped to the input; AVE divides by the
    window clipped to the padded input; MAX keeps the first maximum."""
    n, c, h, w = x.shape
    oh, ow = (caffe_pooled_size(s, k, st, p, ceil) for s, k, st, p in zip((h, w), kernel, stride, pad))
    y = numpy.zeros((n, c, oh, ow))
    mask = numpy.zeros_like(y)
    for i, j in itertools.product(range(oh), range(ow)):
        hs, ws = i * stride[0] - pad[0], j * stride[1] - pad[1]
        he, we = min(hs + kernel[0], h + pad[0]), min(ws + kernel[1], w + pad[1])
        size = (he - hs) * (we - ws)
        hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
        window = x[:, :, hs:he, ws:we]
        if method == "AVE":
            y[:, :, i, j] = window.sum(axis=(2, 3)) / size
        else:
            flat = window.reshape(n, c, -1)
            arg = flat.argmax(axis=2)   # first maximum in row-major order
            y[:, :, i, j] = flat.max(axis=2)
            mask[:, :, i, j] = (hs + arg // (we - ws)) * w + ws + arg % (we - ws)
    return y, mask


def naive_lrn(x, size, alpha, beta, k, across):
    n, c, h, w = x.shape
    pre = (size - 1) // 2
    scale = numpy.empty_like(x)
    if across:
        for ch in range(c):
            lo, hi = max(0, ch - pre), min(c, ch + pre + 1)
            scale[:, ch] = k + alpha / size * (x[:, lo:hi] ** 2).sum(axis=1)
    else:
        sq = numpy.pad(x ** 2, [(0, 0), (0, 0), (pre, pre), (pre, pre)])
        for i, j in itertools.product(range(h), range(w)):
            box = sq[:, :, i:i + size, j:j + size].sum(axis=(2, 3))
            scale[:, :, i, j] = 1 + alpha / size ** 2 * box
    return x * scale ** -beta


# -- Convolution --------------------------------------------------------------------------
CONV_CASES = [
    # (bottom shape, prototxt fields, stride, pad, dilation, group)
    ((2, 3, 6, 7), "num_output: 4 kernel_size: 3", (1, 1), (0, 0), (1, 1), 1),
    ((2, 4, 7, 6), "num_output: 6 kernel_size: 3 pad: 1 stride: 2 group: 2", (2, 2), (1, 1), (1, 1), 2),
    ((1, 2, 9, 8), "num_output: 3 kernel_h: 3 kernel_w: 2 pad_h: 2 stride_w: 1 stride_h: 3 dilation: 2",
     (3, 1), (2, 0), (2, 2), 1),
    ((2, 3, 5, 5), "num_output: 2 kernel_size: 1 bias_term: false", (1, 1), (0, 0), (1, 1), 1),
    ((2, 2, 4, 5, 3), "num_output: 3 kernel_size: 2 kernel_size: 2 kernel_size: 1 pad: 1 stride: 1 stride: 2 "
     "stride: 1", (1, 2, 1), (1, 1, 1), (1, 1, 1), 1),
]


@pytest.fixture(params=["channels-last", "channels-first", "batch-last"])
def conv_layout(request, monkeypatch):
    """Run a test under each column layout (the cost model picks one per pass)."""
    from pycaffe_dist.ops import conv, conv_cost
    layout = {"channels-last": conv.ChannelsLast, "channels-first": conv.ChannelsFirst,
              "batch-last": conv.BatchLast}[request.param]
    plan = conv_cost.plan

    def forced(*args, **kwargs):
        chosen = plan(*args, **kwargs)
        return chosen._replace(layout=layout, transpose_layout=chosen.transpose_layout and layout)
    monkeypatch.setattr(conv_cost, "plan", forced)
    return request.param


@pytest.fixture(params=["transposed convolution", "col2im"])
def input_grad(request, monkeypatch):
    """Run a test with the input gradient as a convolution (where the
    geometry allows one) and with col2im for every geometry."""
    from pycaffe_dist.ops import conv
    if request.param == "col2im":
        monkeypatch.setattr(conv.ConvGeometry, "transpose", lambda self: None)
    return request.param


@pytest.mark.parametrize("shape, fields, stride, pad, dilation, group", CONV_CASES)
def test_convolution_forward_matches_naive_loops(shape, fields, stride, pad, dilation, group, conv_layout):
    rng = numpy.random.default_rng(0)
    layer = make_layer('name: "c" type: "Convolution" convolution_param { %s '
                       'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }' % fields)
    x = rng.standard_normal(shape)
    _, (top,) = run(layer, x)
    w = layer.blobs[0].data
    b = layer.blobs[1].data if len(layer.blobs) > 1 else None
    expected = naive_conv(x, w, b, stride, pad, dilation, group)
    assert top.shape == expected.shape
    numpy.testing.assert_allclose(top.data, expected, rtol=1e-10, atol=1e-10)


def test_convolution_axis_flattens_the_leading_axes():
    rng = numpy.random.default_rng(14)
    layer = make_layer('name: "c" type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 axis: -3 '
                       'weight_filler { type: "gaussian" } }')
    x = rng.standard_normal((2, 2, 3, 5, 4))      # (batch, time, channels, h, w)
    _, (top,) = run(layer, x)
    assert top.shape == (2, 2, 2, 3, 2)
    flat = naive_conv(x.reshape(4, 3, 5, 4), layer.blobs[0].data, layer.blobs[1].data, (1, 1), (0, 0), (1, 1), 1)
    numpy.testing.assert_allclose(top.data.reshape(flat.shape), flat, atol=1e-10)


def test_convolution_float32_and_weight_shapes():
    rng = numpy.random.default_rng(1)
    layer = make_layer('name: "c" type: "Convolution" convolution_param { num_output: 6 kernel_size: 3 group: 3 '
                       'weight_filler { type: "xavier" } }', dtype=numpy.float32)
    x = rng.standard_normal((2, 3, 5, 5)).astype(numpy.float32)
    _, (top,) = run(layer, x)
    assert [b.shape for b in layer.blobs] == [(6, 1, 3, 3), (6,)]
    assert not layer.blobs[1].data.any()   # bias filler defaults to constant 0
    expected = naive_conv(x.astype(F64), layer.blobs[0].data.astype(F64), None, (1, 1), (0, 0), (1, 1), 3)
    assert top.data.dtype == numpy.float32
    numpy.testing.assert_allclose(top.data, expected, rtol=1e-4, atol=1e-5)


def test_convolution_two_bottoms_share_weights_and_chunking_agrees(monkeypatch, conv_layout):
    from pycaffe_dist.ops import conv
    rng = numpy.random.default_rng(2)
    text = ('name: "c" type: "Convolution" convolution_param { num_output: 3 kernel_size: 3 pad: 1 '
            'weight_filler { type: "gaussian" } }')
    x1, x2 = rng.standard_normal((2, 2, 5, 6)), rng.standard_normal((2, 2, 5, 6))
    layer = make_layer(text)
    _, tops = run(layer, x1, x2, tops=2)
    w = layer.blobs[0].data
    for x, t in zip((x1, x2), tops):
        numpy.testing.assert_allclose(t.data, naive_conv(x, w, None, (1, 1), (1, 1), (1, 1), 1), atol=1e-10)
    monkeypatch.setattr(conv, "COLUMN_BYTES", 50)   # forces one image per chunk
    chunked = make_layer(text)
    bottom, top = run(chunked, x1, tops=1)
    chunked.blobs[0].data[...] = w
    chunked.forward(bottom, top)
    numpy.testing.assert_allclose(top[0].data, tops[0].data, atol=1e-10)


@pytest.mark.parametrize("fields, shape", [
    ("num_output: 4 kernel_size: 3 pad: 1 stride: 2 group: 2", (2, 4, 5, 6)),
    ("num_output: 2 kernel_h: 2 kernel_w: 3 dilation: 2 pad_w: 1", (2, 3, 6, 5)),
    ("num_output: 2 kernel_size: 2 pad: 1", (1, 2, 3, 4, 3)),
    ("num_output: 4 kernel_size: 3 pad: 1 group: 2", (3, 4, 4, 5)),
    ("num_output: 2 kernel_size: 2 pad: 2", (2, 2, 3, 3)),        # pad beyond the kernel: col2im
])
@pytest.mark.usefixtures("conv_layout", "input_grad")
def test_convolution_gradients(fields, shape, monkeypatch):
    from pycaffe_dist.ops import conv
    monkeypatch.setattr(conv, "COLUMN_BYTES", 200)   # several chunks
    rng = numpy.random.default_rng(3)
    layer = make_layer('name: "c" type: "Convolution" convolution_param { %s '
                       'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }' % fields)
    bottom, top = [blob(rng.standard_normal(shape))], [Blob((), dtype=F64)]
    check_gradient(layer, bottom, top, max_points=60)
    # Parameter gradients accumulate into the diffs; bottom diffs are overwritten.
    layer.forward(bottom, top)
    top[0].diff[...] = 1
    for b in layer.blobs:
        b.diff[...] = 0
    layer.backward(top, [True], bottom)
    once = [b.diff.copy() for b in layer.blobs] + [bottom[0].diff.copy()]
    layer.backward(top, [True], bottom)
    for b, first in zip(layer.blobs, once):
        numpy.testing.assert_allclose(b.diff, 2 * first)
    numpy.testing.assert_allclose(bottom[0].diff, once[-1])


def test_cost_model_on_lenet_and_cifar():
    # Few channels and long rows (first layers) read columns straight from
    # NCHW; many channels go channels-last; a same-padded layer takes its
    # input gradient as a convolution, a 'valid' one by col2im.
    from pycaffe_dist.ops import ConvGeometry
    from pycaffe_dist.ops.conv import ChannelsFirst, ChannelsLast
    from pycaffe_dist.ops.conv_cost import plan
    valid, same = ConvGeometry((5, 5), (1, 1), (0, 0), (1, 1)), ConvGeometry((5, 5), (1, 1), (2, 2), (1, 1))
    assert plan(valid, 1, 1, 20, (28, 28), 64, 4, 1 << 20, needs_dx=False).layout is ChannelsFirst
    assert not plan(valid, 1, 20, 50, (12, 12), 64, 4, 1 << 20).by_convolution
    assert plan(same, 1, 3, 32, (32, 32), 100, 4, 1 << 20, needs_dx=False).layout is ChannelsFirst
    conv2 = plan(same, 1, 32, 32, (16, 16), 100, 4, 1 << 20)
    assert conv2.layout is ChannelsLast and conv2.by_convolution and conv2.transpose_layout is ChannelsLast


def test_input_gradient_is_a_convolution_where_the_geometry_allows():
    from pycaffe_dist.ops import ConvGeometry
    g = ConvGeometry((5, 3), (1, 1), (2, 0), (1, 2))
    t = g.transpose()
    assert (t.kernel, t.stride, t.pad, t.dilation) == ((5, 3), (1, 1), (2, 4), (1, 2))
    assert ConvGeometry((3, 3), (2, 2), (1, 1), (1, 1)).transpose() is None
    assert ConvGeometry((2, 2), (1, 1), (2, 0), (1, 1)).transpose() is None


def test_convolution_skips_what_is_not_asked(conv_layout):
    rng = numpy.random.default_rng(4)
    layer = make_layer('name: "c" type: "Convolution" convolution_param { num_output: 2 kernel_size: 2 '
                       'weight_filler { type: "gaussian" } }')
    bottom, top = run(layer, rng.standard_normal((1, 2, 4, 4)))
    top[0].diff[...] = 1
    bottom[0].diff[...] = 7
    layer.param_propagate_down = [False, True]
    layer.backward(top, [False], bottom)
    assert (bottom[0].diff == 7).all() and not layer.blobs[0].diff.any()
    assert (layer.blobs[1].diff == 9).all()


def test_convolution_builds_columns_once_per_iteration(conv_layout, monkeypatch):
    # Backward reuses forward's columns even though the layer hands the op a
    # fresh reshape of the blob each call; a new forward rebuilds them.
    from pycaffe_dist.ops import ConvGeometry, threads
    builds = []
    as_strided = numpy.lib.stride_tricks.as_strided
    monkeypatch.setattr(threads, "count", lambda xp=None: 1)       # one chunk

    def counting(x, shape, strides):
        builds.append(0)
        return as_strided(x, shape, strides)
    monkeypatch.setattr(numpy.lib.stride_tricks, "as_strided", counting)
    monkeypatch.setattr(ConvGeometry, "transpose", lambda self: None)   # col2im: no columns of dy
    rng = numpy.random.default_rng(13)
    layer = make_layer('name: "c" type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 pad: 1 '
                       'weight_filler { type: "gaussian" } }')
    bottom, top = run(layer, rng.standard_normal((2, 2, 5, 5)))
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)
    assert builds == [0]
    bottom[0].data[...] = rng.standard_normal((2, 2, 5, 5))
    layer.forward(bottom, top)
    grad = layer.blobs[0].diff.copy()
    layer.backward(top, [False], bottom)
    assert builds == [0, 0]
    # d(sum y)/dW[o, c, i, j] is the sum of the inputs that offset (i, j) sees
    numpy.testing.assert_allclose(layer.blobs[0].diff - grad, numpy.broadcast_to(
        naive_window_sums(bottom[0].data, 3, 1), layer.blobs[0].data.shape), atol=1e-10)


def naive_window_sums(x, k, pad):
    xp = numpy.pad(x, [(0, 0), (0, 0), (pad, pad), (pad, pad)])
    h, w = x.shape[2] + 2 * pad - k + 1, x.shape[3] + 2 * pad - k + 1
    return numpy.array([[[xp[:, c, i:i + h, j:j + w].sum() for j in range(k)] for i in range(k)]
                        for c in range(x.shape[1])])


@pytest.mark.parametrize("fields, shape, message", [
    ("num_output: 4", (1, 2, 5, 5), "kernel_size"),
    ("num_output: 3 kernel_size: 3 group: 2", (1, 4, 5, 5), "divisible by group"),
    ("num_output: 4 kernel_size: 3 group: 3", (1, 4, 5, 5), "not divisible by group"),
    ("num_output: 4 kernel_size: 7", (1, 2, 5, 5), "smaller than the kernel"),
    ("num_output: 4 kernel_size: 3 kernel_h: 3 kernel_w: 3", (1, 2, 5, 5), "not both"),
    ("num_output: 4 kernel_h: 3", (1, 2, 5, 5), "together"),
    ("kernel_size: 3", (1, 2, 5, 5), "num_output"),
    ("num_output: 2 kernel_size: 3 kernel_size: 3", (1, 2, 5, 5, 5), "one per spatial axis"),
    ("num_output: 2 kernel_size: 3 stride: 0", (1, 2, 5, 5), "stride"),
])
def test_convolution_errors_name_the_problem(fields, shape, message):
    layer = make_layer('name: "bad" type: "Convolution" convolution_param { %s }' % fields)
    with pytest.raises(LayerError, match=message) as info:
        run(layer, numpy.zeros(shape))
    assert "'bad'" in str(info.value)


# -- Pooling ------------------------------------------------------------------------------
POOL_CASES = [
    # (shape, fields, kernel, stride, pad)
    ((2, 3, 6, 6), "kernel_size: 2 stride: 2", (2, 2), (2, 2), (0, 0)),
    ((2, 2, 7, 7), "kernel_size: 3 stride: 2", (3, 3), (2, 2), (0, 0)),      # rounds up: 3x3 out
    ((1, 2, 5, 6), "kernel_size: 3 stride: 2 pad: 1", (3, 3), (2, 2), (1, 1)),
    ((1, 2, 5, 5), "kernel_size: 2 stride: 2 pad: 1", (2, 2), (2, 2), (1, 1)),   # last window dropped
    ((2, 1, 7, 5), "kernel_h: 3 kernel_w: 2 stride_h: 1 stride_w: 3 pad_h: 1 pad_w: 1", (3, 2), (1, 3), (1, 1)),
    ((1, 2, 8, 8), "kernel_size: 2 stride: 3", (2, 2), (3, 3), (0, 0)),      # gaps between windows
    ((1, 1, 3, 3), "kernel_size: 3 stride: 1 pad: 2", (3, 3), (1, 1), (2, 2)),
    ((2, 2, 3, 4), "kernel_size: 1 stride: 1", (1, 1), (1, 1), (0, 0)),
    ((1, 2, 6, 9), "kernel_h: 1 kernel_w: 2 stride_h: 2 stride_w: 3 round_mode: FLOOR", (1, 2), (2, 3), (0, 0)),
    ((1, 2, 7, 7), "kernel_size: 3 stride: 2 pad: 1 round_mode: FLOOR", (3, 3), (2, 2), (1, 1)),
]


@pytest.fixture(params=["one block", "blocks of 1-2 planes"])
def pool_blocks(request, monkeypatch):
    """Run a test with all planes in one block and with many small blocks."""
    from pycaffe_dist.ops import pooling
    if request.param != "one block":
        monkeypatch.setattr(pooling, "PLANE_BLOCK_BYTES", 400)
    return request.param


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("shape, fields, kernel, stride, pad", POOL_CASES)
def test_pooling_forward_matches_caffe_loops(method, shape, fields, kernel, stride, pad, pool_blocks):
    rng = numpy.random.default_rng(5)
    x = rng.standard_normal(shape)
    tops = 2 if method == "MAX" else 1
    layer = make_layer('name: "p" type: "Pooling" pooling_param { pool: %s %s }' % (method, fields))
    _, top = run(layer, x, tops=tops)
    y, mask = naive_pool(x, method, kernel, stride, pad, ceil="FLOOR" not in fields)
    assert top[0].shape == y.shape
    numpy.testing.assert_allclose(top[0].data, y, rtol=1e-12, atol=1e-12)
    if method == "MAX":
        numpy.testing.assert_array_equal(top[1].data, mask)


def test_pooling_output_size_rounds_up_and_clips():
    assert caffe_pooled_size(7, 3, 2, 0) == 3
    for size, k, s, p, expected in [(7, 3, 2, 0, 3), (6, 3, 2, 0, 3), (5, 2, 2, 1, 3), (24, 2, 2, 0, 12),
                                    (32, 3, 2, 0, 16), (3, 3, 1, 2, 5)]:
        layer = make_layer('name: "p" type: "Pooling" pooling_param { kernel_size: %d stride: %d pad: %d }'
                           % (k, s, p))
        _, (top,) = run(layer, numpy.zeros((1, 1, size, size)))
        assert top.shape == (1, 1, expected, expected) == (1, 1) + (caffe_pooled_size(size, k, s, p),) * 2
    layer = make_layer('name: "p" type: "Pooling" pooling_param { kernel_size: 3 stride: 2 round_mode: FLOOR }')
    _, (top,) = run(layer, numpy.zeros((1, 1, 6, 6)))
    assert top.shape == (1, 1, 2, 2)


def test_average_pooling_divides_by_window_clipped_to_padded_input():
    layer = make_layer('name: "p" type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }')
    _, (top,) = run(layer, numpy.ones((1, 1, 4, 4)))
    expected = [[4 / 9, 6 / 9, 2 / 6], [6 / 9, 1, 3 / 6], [2 / 6, 3 / 6, 1 / 4]]
    numpy.testing.assert_allclose(top.data[0, 0], expected)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_global_pooling(method):
    rng = numpy.random.default_rng(6)
    x = rng.standard_normal((2, 3, 4, 5))
    layer = make_layer('name: "p" type: "Pooling" pooling_param { pool: %s global_pooling: true }' % method)
    _, (top,) = run(layer, x)
    reduce = numpy.max if method == "MAX" else numpy.mean
    numpy.testing.assert_allclose(top.data, reduce(x, axis=(2, 3), keepdims=True))
    check_gradient(layer, [blob(distinct(rng, x.shape))], [Blob((), dtype=F64)])


def test_max_pooling_ties_route_the_gradient_to_the_first_maximum():
    x = numpy.zeros((1, 1, 4, 4))
    x[0, 0, 0, 1] = x[0, 0, 1, 0] = 2.0       # a tie in the first window
    layer = make_layer('name: "p" type: "Pooling" pooling_param { kernel_size: 2 stride: 2 }')
    bottom, top = run(layer, x, tops=2)
    assert top[1].data[0, 0, 0, 0] == 1        # h * W + w of (0, 1)
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)
    expected = numpy.zeros((4, 4))
    expected[0, 1] = 1
    expected[0, 2] = expected[2, 0] = expected[2, 2] = 1   # all-zero windows: their first element
    numpy.testing.assert_array_equal(bottom[0].diff[0, 0], expected)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("shape, fields", [(s, f) for s, f, *_ in POOL_CASES])
def test_pooling_gradients(method, shape, fields, pool_blocks):
    rng = numpy.random.default_rng(7)
    layer = make_layer('name: "p" type: "Pooling" pooling_param { pool: %s %s }' % (method, fields))
    check_gradient(layer, [blob(distinct(rng, shape))], [Blob((), dtype=F64)], max_points=80)


def test_max_pooling_backward_after_a_test_forward():
    rng = numpy.random.default_rng(8)
    layer = make_layer('name: "p" type: "Pooling" pooling_param { kernel_size: 3 stride: 2 }', caffe_pb2.TEST)
    check_gradient(layer, [blob(distinct(rng, (2, 2, 7, 7)))], [Blob((), dtype=F64)])


@pytest.mark.parametrize("fields, message", [
    ("pool: STOCHASTIC kernel_size: 3 pad: 1", "not STOCHASTIC"),
    ("stride: 2", "kernel_size"),
    ("kernel_size: 2 kernel_h: 2 kernel_w: 2", "not both"),
    ("kernel_h: 2", "together"),
    ("kernel_size: 2 pad: 2", "smaller than the kernel"),
    ("global_pooling: true kernel_size: 2", "global_pooling"),
    ("global_pooling: true stride: 2", "global_pooling"),
    ("kernel_size: 9", "smaller than the kernel"),
])
def test_pooling_errors_name_the_problem(fields, message):
    layer = make_layer('name: "bad" type: "Pooling" pooling_param { %s }' % fields)
    with pytest.raises(LayerError, match=message):
        run(layer, numpy.zeros((1, 1, 5, 5)))


def test_average_pooling_mask_top_is_refused():
    layer = make_layer('name: "p" type: "Pooling" pooling_param { pool: AVE kernel_size: 2 }')
    with pytest.raises(LayerError, match="mask"):
        run(layer, numpy.zeros((1, 1, 4, 4)), tops=2)


def test_separable_average_pooling_on_big_planes_matches(pool_blocks):
    # Big planes take the slice-sum path instead of the GEMM; same numbers.
    rng = numpy.random.default_rng(9)
    x = rng.standard_normal((1, 2, 40, 36))
    layer = make_layer('name: "p" type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }')
    _, (top,) = run(layer, x)
    assert not layer.op.use_gemm
    numpy.testing.assert_allclose(top.data, naive_pool(x, "AVE", (3, 3), (2, 2), (1, 1))[0], atol=1e-12)
    small = make_layer('name: "p" type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }')
    check_gradient(small, [blob(rng.standard_normal((2, 2, 40, 36)))], [Blob((), dtype=F64)], max_points=40)


# -- LRN ----------------------------------------------------------------------------------
LRN_CASES = [
    ("ACROSS_CHANNELS", 5, 0.1, 0.75, 2.0),
    ("ACROSS_CHANNELS", 3, 1.5, 0.6, 1.0),
    ("WITHIN_CHANNEL", 3, 2.0, 0.75, 1.0),
    ("WITHIN_CHANNEL", 5, 0.5, 1.0, 1.0),
]


def lrn_layer(region, size, alpha, beta, k):
    return make_layer('name: "n" type: "LRN" lrn_param { norm_region: %s local_size: %d alpha: %g beta: %g '
                      'k: %g }' % (region, size, alpha, beta, k))


@pytest.mark.parametrize("region, size, alpha, beta, k", LRN_CASES)
def test_lrn_forward_matches_naive(region, size, alpha, beta, k):
    rng = numpy.random.default_rng(10)
    x = rng.standard_normal((2, 7, 4, 5))
    _, (top,) = run(lrn_layer(region, size, alpha, beta, k), x)
    alpha, beta, k = (float(numpy.float32(v)) for v in (alpha, beta, k))   # float fields in the proto
    expected = naive_lrn(x, size, alpha, beta, k, region == "ACROSS_CHANNELS")
    numpy.testing.assert_allclose(top.data, expected, rtol=1e-12)


@pytest.mark.parametrize("region, size, alpha, beta, k", LRN_CASES)
def test_lrn_gradients(region, size, alpha, beta, k):
    rng = numpy.random.default_rng(11)
    layer = lrn_layer(region, size, alpha, beta, k)
    check_gradient(layer, [blob(rng.standard_normal((2, 6, 3, 4)))], [Blob((), dtype=F64)],
                   threshold=1e-2, max_points=80)


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_lrn_in_place_matches_separate_top(region):
    rng = numpy.random.default_rng(12)
    x = rng.standard_normal((2, 5, 3, 3))
    dy = rng.standard_normal(x.shape)
    results = []
    for in_place in (False, True):
        layer = lrn_layer(region, 3, 1.0, 0.75, 1.0)
        bottom = [blob(x)]
        top = bottom if in_place else [Blob((), dtype=F64)]
        layer.setup(bottom, top)
        layer.forward(bottom, top)
        y = top[0].data.copy()
        top[0].diff[...] = dy
        layer.backward(top, [True], bottom)
        results.append((y, bottom[0].diff.copy()))
    for a, b in zip(*results):
        numpy.testing.assert_allclose(a, b)


@needs_gpu
@pytest.mark.parametrize("region, size, alpha, beta, k", LRN_CASES)
def test_lrn_numpy_and_cupy_agree(region, size, alpha, beta, k):
    """ACROSS_CHANNELS runs CUDA kernels on a GPU; WITHIN_CHANNEL runs the
    CPU's array code (flat box sums) on CuPy arrays."""
    x = numpy.random.default_rng(13).standard_normal((3, 7, 6, 5))
    assert_same_on_both_backends('name: "n" type: "LRN" lrn_param { norm_region: %s local_size: %d alpha: %g '
                                 'beta: %g k: %g }' % (region, size, alpha, beta, k), [x])


def test_lrn_rejects_even_local_size():
    with pytest.raises(LayerError, match="odd"):
        run(lrn_layer("ACROSS_CHANNELS", 4, 1.0, 0.75, 1.0), numpy.zeros((1, 4, 2, 2)))


@pytest.mark.parametrize("fields, shape", [
    ("num_output: 4 kernel_size: 3 pad: 1", (7, 3, 6, 5)),                       # input gradient by convolution
    ("num_output: 4 kernel_size: 3 pad: 1 stride: 2 group: 2", (7, 4, 6, 5)),   # by col2im
])
def test_convolution_on_several_threads_matches_one(fields, shape, monkeypatch):
    # The chunks split into one contiguous run per thread; each thread sums
    # its weight gradient, and the runs are added in a fixed order.
    from pycaffe_dist.ops import conv, threads
    monkeypatch.setattr(conv, "COLUMN_BYTES", 300)
    rng = numpy.random.default_rng(15)
    x, dy = rng.standard_normal(shape), None
    results = {}
    for count in (1, 2, 3, 2):
        monkeypatch.setattr(threads, "count", lambda xp=None, count=count: count)
        layer = make_layer('name: "c" type: "Convolution" convolution_param { %s '
                           'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }' % fields)
        backend_seed(16)
        bottom, top = run(layer, x)
        if dy is None:
            dy = rng.standard_normal(top[0].shape)
        top[0].diff[...] = dy
        layer.backward(top, [True], bottom)
        got = [top[0].data.copy(), bottom[0].diff.copy()] + [b.diff.copy() for b in layer.blobs]
        if count in results:    # the same thread count gives the same bits
            for a, b in zip(results[count], got):
                numpy.testing.assert_array_equal(a, b)
        results[count] = got
    for count in (2, 3):
        for a, b in zip(results[1], results[count]):
            numpy.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def backend_seed(seed):
    from pycaffe_dist import backend
    backend.set_random_seed(seed)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_pooling_on_several_threads_matches_one(method, monkeypatch):
    from pycaffe_dist.ops import average_pooling, pooling, threads
    monkeypatch.setattr(pooling, "PLANE_BLOCK_BYTES", 2000)          # many blocks
    monkeypatch.setattr(average_pooling, "GEMM_MAX_ENTRIES", 0)      # AVE by the two stages, not the GEMM
    rng = numpy.random.default_rng(17)
    x = distinct(rng, (3, 5, 9, 11))
    dy = rng.standard_normal((3, 5, 5, 6))
    results = []
    for count in (1, 2, 3):
        monkeypatch.setattr(threads, "count", lambda xp=None, count=count: count)
        layer = make_layer('name: "p" type: "Pooling" pooling_param { pool: %s kernel_size: 3 stride: 2 pad: 1 }'
                           % method)
        bottom, top = run(layer, x)
        assert not getattr(layer.op, "use_gemm", False)
        top[0].diff[...] = dy
        layer.backward(top, [True], bottom)
        results.append((top[0].data.copy(), bottom[0].diff.copy()))
    for got in results[1:]:
        for a, b in zip(results[0], got):
            numpy.testing.assert_array_equal(a, b)
