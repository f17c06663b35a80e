"""The convolution's GEMM paths: products cut into blocks for OpenBLAS's
small-matrix kernels (ops.gemm) against float64 products, the convolutions
that use them against naive loops, numeric gradients and their own output
at other batch sizes; the weight gradient taken from the input gradient's
columns and the bias added inside the GEMM, each against the plain path."""
import numpy
import pytest

from pycaffe_dist import ops
from pycaffe_dist.gradient_check import check_gradient
from pycaffe_dist.blob import Blob
from pycaffe_dist.ops import gemm

from .test_vision import blob, make_layer, naive_conv, run


@pytest.mark.parametrize("a_shape, b_shape", [
    ((200, 300), (300, 40)),          # rows cut, 80 per block and a remainder of 40
    ((3, 256, 800), (800, 32)),       # a stack against one matrix, 32 rows per block
    ((2, 1, 320, 500), (1, 3, 500, 50)),   # stacks broadcast both ways
    ((40, 300), (300, 200)),          # columns are the long axis: cut those
    ((800, 256), (256, 32)),          # a weight gradient's shape
])
def test_cut_products_match_float64(a_shape, b_shape):
    rng = numpy.random.default_rng(0)
    a = rng.standard_normal(a_shape).astype(numpy.float32)
    b = rng.standard_normal(b_shape).astype(numpy.float32)
    rows, k, cols = a_shape[-2], a_shape[-1], b_shape[-1]
    assert rows * k * cols > gemm.SMALL_MNK          # would run whole otherwise
    out = numpy.full(numpy.broadcast_shapes(a_shape[:-2], b_shape[:-2]) + (rows, cols), numpy.nan, numpy.float32)
    assert gemm.matmul(a, b, out) is out
    expected = numpy.matmul(a.astype(numpy.float64), b.astype(numpy.float64))
    numpy.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4 * numpy.sqrt(k))


def test_block_sizes_divide_the_rows_where_they_can():
    assert gemm.block_rows(256, 800, 32) == 32       # 39 allowed, 32 divides 256
    assert gemm.block_rows(320, 800, 64) == 0        # 19 allowed: thinner than MIN_BLOCK
    assert gemm.block_rows(200, 300, 40) == 80       # nothing divides 200: a remainder
    assert gemm.block_rows(30, 300, 40) == 0         # small enough whole
    assert gemm.block_rows(5000, 1000, 1000) == 0    # a block would be thinner than MIN_BLOCK


def test_disabled_is_numpy_matmul(monkeypatch):
    monkeypatch.setattr(gemm, "ENABLED", False)
    rng = numpy.random.default_rng(1)
    a = rng.standard_normal((256, 800)).astype(numpy.float32)
    b = rng.standard_normal((800, 32)).astype(numpy.float32)
    out = numpy.empty((256, 32), numpy.float32)
    gemm.matmul(a, b, out)
    assert numpy.array_equal(out, a @ b)


@pytest.fixture
def tiny_blocks(monkeypatch):
    """Cut every product of the small test layers into blocks of a few rows."""
    monkeypatch.setattr(gemm, "SMALL_MNK", 400)
    monkeypatch.setattr(gemm, "MIN_BLOCK", 1)
    monkeypatch.setattr(gemm, "STEP", 1)


@pytest.mark.usefixtures("tiny_blocks")
@pytest.mark.parametrize("fields, shape, pad, group", [
    ("num_output: 6 kernel_size: 3 pad: 1", (3, 4, 6, 7), 1, 1),
    ("num_output: 6 kernel_size: 3 group: 2", (2, 4, 7, 6), 0, 2),
])
def test_convolution_with_cut_products(fields, shape, pad, group, monkeypatch):
    # ChannelsLast is the layout whose products are cut: forward, weight
    # gradient, input gradient as a convolution (padded case) or by col2im.
    from pycaffe_dist.ops import conv, conv_cost
    plan = conv_cost.plan
    monkeypatch.setattr(conv_cost, "plan", lambda *a, **k: plan(*a, **k)._replace(
        layout=conv.ChannelsLast, transpose_layout=conv.ChannelsLast))
    monkeypatch.setattr(conv, "COLUMN_BYTES", 2000)     # several chunks
    rng = numpy.random.default_rng(4)
    text = ('name: "c" type: "Convolution" convolution_param { %s '
            'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }' % fields)
    layer = make_layer(text)
    x = rng.standard_normal(shape)
    _, (top,) = run(layer, x)
    expected = naive_conv(x, layer.blobs[0].data, layer.blobs[1].data, (1, 1), (pad, pad), (1, 1), group)
    numpy.testing.assert_allclose(top.data, expected, rtol=1e-10, atol=1e-10)
    check_gradient(make_layer(text), [blob(x)], [Blob((), dtype=numpy.float64)], max_points=40)


def test_a_sample_is_computed_alike_in_any_batch():
    # cifar10_quick's conv2 and conv3 shapes in float32, where the products
    # are cut: image 0's output, and its weight and input gradients from
    # one image, are the same bits whatever batch it came in.
    rng = numpy.random.default_rng(5)
    for channels, outputs, size in ((32, 32, 16), (32, 64, 8)):
        geometry = ops.ConvGeometry((5, 5), (1, 1), (2, 2), (1, 1))
        x = rng.standard_normal((7, channels, size, size)).astype(numpy.float32)
        w = rng.standard_normal((outputs, channels, 5, 5)).astype(numpy.float32)
        bias = rng.standard_normal(outputs).astype(numpy.float32)
        results = []
        for n in (1, 3, 7):
            op = ops.Convolution(geometry)
            y = numpy.empty((n, outputs, size, size), numpy.float32)
            op.forward(x[:n], w, bias, y)
            results.append(y[0].copy())
        assert all(numpy.array_equal(results[0], r) for r in results[1:])


@pytest.mark.parametrize("kernel, pad, dilation, group", [
    ((3, 3), (1, 1), (1, 1), 2),
    ((3, 2), (2, 1), (2, 1), 1),
    ((5, 5), (2, 2), (1, 1), 1),
])
def test_weight_gradient_from_the_input_gradients_columns(kernel, pad, dilation, group, monkeypatch):
    # The shared path (dy's channels-last columns give dW) against
    # rebuilding x's columns, with the layout and plan held fixed.
    from pycaffe_dist.ops import conv, conv_cost
    monkeypatch.setattr(conv_cost, "plan", lambda *a, **k: conv_cost.Plan(conv.ChannelsLast, True, conv.ChannelsLast))
    monkeypatch.setattr(conv, "COLUMN_BYTES", 3000)     # several chunks
    rng = numpy.random.default_rng(6)
    geometry = ops.ConvGeometry(kernel, (1, 1), pad, dilation)
    x = rng.standard_normal((5, 4, 7, 6))
    w = rng.standard_normal((6, 4 // group) + kernel)
    y = numpy.empty((5, 6) + geometry.out_shape((7, 6)))
    dy = rng.standard_normal(y.shape)
    grads = []
    for shared in (True, False):
        monkeypatch.setattr(conv, "SHARED_COLUMNS", shared)
        op = ops.Convolution(geometry, group)
        op.forward(x, w, None, y)
        dw, dx = numpy.full_like(w, 0.5), numpy.empty_like(x)
        op.backward(x, dy, w, dweight=dw, dx=dx)
        grads.append((dw, dx))
        assert any("wacc_t" in name for name in op.workspace._arrays) == shared   # the path taken
    for a, b in zip(*grads):
        numpy.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_which_layers_share_the_columns():
    from pycaffe_dist.ops.conv_cost import shares_columns
    assert shares_columns(1, 32, 32) and shares_columns(1, 32, 64)      # cifar10_quick's conv2, conv3
    assert not shares_columns(2, 96, 256)                               # CaffeNet's conv2
    assert not shares_columns(1, 256, 384)                              # and conv3


@pytest.mark.parametrize("group", [1, 2])
def test_bias_inside_the_channels_first_gemm(group, monkeypatch):
    # A row of ones under the columns meets the bias as the weights' last
    # column: the same output as adding the bias afterwards, for every chunk.
    from pycaffe_dist.ops import conv, conv_columns, conv_cost
    monkeypatch.setattr(conv_cost, "plan", lambda *a, **k: conv_cost.Plan(conv.ChannelsFirst, False, None))
    monkeypatch.setattr(conv, "COLUMN_BYTES", 3000)     # several chunks
    rng = numpy.random.default_rng(7)
    geometry = ops.ConvGeometry((3, 3), (1, 1), (1, 1), (1, 1))
    x = rng.standard_normal((5, 4, 7, 6))
    w = rng.standard_normal((6, 4 // group, 3, 3))
    bias = rng.standard_normal(6)
    outputs = []
    for fused in (True, False):
        monkeypatch.setattr(conv_columns, "FUSED_BIAS", fused)
        y = numpy.empty((5, 6, 7, 6))
        op = ops.Convolution(geometry, group)
        op.forward(x, w, bias, y)
        dw = numpy.zeros_like(w)
        op.backward(x, numpy.ones_like(y), w, dweight=dw)    # the columns again, ones row and all
        outputs += [y, dw]
    expected = naive_conv(x, w, bias, (1, 1), (1, 1), (1, 1), group)
    numpy.testing.assert_allclose(outputs[0], expected, rtol=1e-12, atol=1e-12)
    numpy.testing.assert_allclose(outputs[0], outputs[2], rtol=1e-12, atol=1e-12)
    numpy.testing.assert_allclose(outputs[1], outputs[3], rtol=1e-12, atol=1e-12)
