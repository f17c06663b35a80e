"""Deconvolution and Im2col: forward against naive loops written here,
Deconvolution as the adjoint of Convolution, FCN-style bilinear upsampling,
numeric gradients and errors."""
import itertools

import numpy
import pytest

from pycaffe_dist.blob import Blob
from pycaffe_dist.gradient_check import check_gradient
from pycaffe_dist.layers import LayerError
from tests.layers.test_common import assert_same_on_both_backends, needs_gpu
from tests.layers.test_vision import F64, blob, conv_layout, make_layer, run  # noqa: F401  (conv_layout: a fixture)


def naive_deconv(x, w, b, stride, pad, dilation, group):
    """Scatter every input value through the kernel: y[p*s + k*d - pad] += x[p] * w[k]."""
    n, c = x.shape[:2]
    kernel = w.shape[2:]
    dims = len(kernel)
    o = w.shape[1] * group
    full = [stride[d] * (x.shape[2 + d] - 1) + dilation[d] * (kernel[d] - 1) + 1 for d in range(dims)]
    y = numpy.zeros((n, o) + tuple(full))
    cg, og = c // group, o // group
    for ic in range(c):
        g = ic // cg
        for pos in itertools.product(*[range(s) for s in x.shape[2:]]):
            for off in itertools.product(*[range(k) for k in kernel]):
                at = tuple(pos[d] * stride[d] + off[d] * dilation[d] for d in range(dims))
                y[(slice(None), slice(g * og, (g + 1) * og)) + at] += (
                    x[(slice(None), ic) + pos][:, None] * w[(ic, slice(None)) + off][None, :])
    y = y[(slice(None), slice(None)) + tuple(slice(p, f - p) for p, f in zip(pad, full))]
    if b is not None:
        y += b.reshape((-1,) + (1,) * dims)
    return y


DECONV_CASES = [
    # (bottom shape, prototxt fields, stride, pad, dilation, group)
    ((2, 3, 4, 5), "num_output: 2 kernel_size: 3", (1, 1), (0, 0), (1, 1), 1),
    ((2, 4, 3, 4), "num_output: 6 kernel_size: 4 stride: 2 pad: 1 group: 2", (2, 2), (1, 1), (1, 1), 2),
    ((1, 2, 4, 3), "num_output: 3 kernel_h: 3 kernel_w: 2 stride_h: 3 stride_w: 1 pad_h: 1 dilation: 2",
     (3, 1), (1, 0), (2, 2), 1),
    ((2, 3, 3, 3), "num_output: 2 kernel_size: 1 bias_term: false", (1, 1), (0, 0), (1, 1), 1),
    ((1, 2, 3, 2, 2), "num_output: 2 kernel_size: 2 stride: 2 stride: 1 stride: 2", (2, 1, 2), (0, 0, 0),
     (1, 1, 1), 1),
]


def deconv_layer(fields):
    return make_layer('name: "d" type: "Deconvolution" convolution_param { %s '
                      'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }' % fields)


@pytest.mark.parametrize("shape, fields, stride, pad, dilation, group", DECONV_CASES)
@pytest.mark.usefixtures("conv_layout")
def test_deconvolution_forward_matches_naive_scatter(shape, fields, stride, pad, dilation, group):
    rng = numpy.random.default_rng(20)
    layer = deconv_layer(fields)
    x = rng.standard_normal(shape)
    _, (top,) = run(layer, x)
    w = layer.blobs[0].data
    assert w.shape[:2] == (shape[1], layer.num_output // group)   # (C_in, num_output / group, *kernel)
    b = layer.blobs[1].data if len(layer.blobs) > 1 else None
    expected = naive_deconv(x, w, b, stride, pad, dilation, group)
    assert top.shape == expected.shape
    numpy.testing.assert_allclose(top.data, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("fields, shape", [
    ("num_output: 3 kernel_size: 3 stride: 2 pad: 1", (2, 2, 3, 4)),
    ("num_output: 4 kernel_size: 2 stride: 2 group: 2", (2, 2, 3, 3)),
    ("num_output: 2 kernel_h: 3 kernel_w: 2 dilation: 2", (1, 3, 3, 2)),
])
@pytest.mark.usefixtures("conv_layout")
def test_deconvolution_gradients(fields, shape):
    rng = numpy.random.default_rng(21)
    check_gradient(deconv_layer(fields), [blob(rng.standard_normal(shape))], [Blob((), dtype=F64)], max_points=60)


@pytest.mark.parametrize("fields, shape", [
    ("num_output: 3 kernel_size: 3 stride: 2 pad: 1", (2, 4, 7, 5)),
    ("num_output: 4 kernel_size: 3 stride: 1 pad: 2 group: 2 dilation: 2", (2, 2, 5, 6)),
    ("num_output: 2 kernel_size: 2 stride: 2", (1, 3, 4, 6, 2)),
])
@pytest.mark.usefixtures("conv_layout")
def test_deconvolution_is_the_adjoint_of_convolution(fields, shape):
    # With the same weights, <conv(x), y> == <x, deconv(y)> for every x and y:
    # Deconvolution applies the transposed linear map.
    rng = numpy.random.default_rng(22)
    conv = make_layer('name: "c" type: "Convolution" convolution_param { %s bias_term: false '
                      'weight_filler { type: "gaussian" } }' % fields)
    x = rng.standard_normal(shape)
    _, (conv_top,) = run(conv, x)
    deconv = make_layer('name: "d" type: "Deconvolution" convolution_param { num_output: %d %s bias_term: false }'
                        % (shape[1], fields.split(" ", 2)[2]))
    deconv.blobs = [blob(conv.blobs[0].data)]     # shared weights: (C_conv_out, C_in / group, *k)
    y = rng.standard_normal(conv_top.shape)
    _, (deconv_top,) = run(deconv, y)
    assert deconv_top.shape == x.shape
    numpy.testing.assert_allclose((conv_top.data * y).sum(), (x * deconv_top.data).sum(), rtol=1e-10)


def test_deconvolution_backward_matches_convolution_forward():
    # The bottom gradient of Deconvolution is Convolution's forward of the top gradient.
    rng = numpy.random.default_rng(23)
    fields = "num_output: 3 kernel_size: 4 stride: 2 pad: 1"
    deconv = deconv_layer(fields)
    bottom, top = run(deconv, rng.standard_normal((2, 5, 3, 4)))
    top[0].diff[...] = rng.standard_normal(top[0].shape)
    deconv.backward(top, [True], bottom)
    conv = make_layer('name: "c" type: "Convolution" convolution_param { num_output: 5 kernel_size: 4 stride: 2 '
                      'pad: 1 bias_term: false }')
    conv.blobs = [blob(deconv.blobs[0].data)]
    _, (conv_top,) = run(conv, top[0].diff.copy())
    numpy.testing.assert_allclose(bottom[0].diff, conv_top.data, rtol=1e-10, atol=1e-12)
    numpy.testing.assert_allclose(deconv.blobs[1].diff, top[0].diff.sum(axis=(0, 2, 3)), rtol=1e-10)


def test_fcn_bilinear_upsampling_interpolates():
    # FCN's fixed upsampling: factor f, kernel 2f - f % 2, stride f, pad
    # ceil((f - 1) / 2), one group per channel, bilinear filler. A linear ramp
    # comes back as the same ramp sampled at the upsampled pixel centres.
    f, channels = 2, 3
    layer = make_layer('name: "up" type: "Deconvolution" convolution_param { num_output: %d group: %d '
                       'kernel_size: %d stride: %d pad: %d bias_term: false weight_filler { type: "bilinear" } }'
                       % (channels, channels, 2 * f - f % 2, f, (f - 1 + 1) // 2))
    h, w = 5, 6
    i, j = numpy.meshgrid(numpy.arange(h), numpy.arange(w), indexing="ij")
    x = numpy.stack([a * i + b * j + c for a, b, c in [(1.0, 2.0, 0.5), (-0.5, 0.25, 3.0), (0.0, 1.0, -1.0)]])
    _, (top,) = run(layer, x[None])
    assert top.shape == (1, channels, f * h, f * w)
    oi, oj = numpy.meshgrid(numpy.arange(f * h), numpy.arange(f * w), indexing="ij")
    ci, cj = (oi + 0.5) / f - 0.5, (oj + 0.5) / f - 0.5     # output pixel centres in input coordinates
    for ch, (a, b, c) in enumerate([(1.0, 2.0, 0.5), (-0.5, 0.25, 3.0), (0.0, 1.0, -1.0)]):
        expected = a * ci + b * cj + c
        # The outermost ring reads the zero padding; everything inside interpolates.
        numpy.testing.assert_allclose(top.data[0, ch, 1:-1, 1:-1], expected[1:-1, 1:-1], rtol=1e-12, atol=1e-12)


def test_deconvolution_errors_name_the_problem():
    layer = make_layer('name: "bad" type: "Deconvolution" convolution_param { num_output: 3 kernel_size: 2 '
                       'group: 2 }')
    with pytest.raises(LayerError, match="'bad'.*divisible by group"):
        run(layer, numpy.zeros((1, 4, 3, 3)))


# -- Im2col ---------------------------------------------------------------------------------
def naive_im2col(x, kernel, stride, pad, dilation):
    """Caffe's column matrix per image: row (c * kh + i) * kw + j, column oh * OW + ow."""
    n, c, h, w = x.shape
    xp = numpy.pad(x, [(0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])])
    oh = (h + 2 * pad[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    ow = (w + 2 * pad[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    col = numpy.zeros((n, c * kernel[0] * kernel[1], oh, ow))
    for ch, i, j, r, s in itertools.product(range(c), range(kernel[0]), range(kernel[1]), range(oh), range(ow)):
        col[:, (ch * kernel[0] + i) * kernel[1] + j, r, s] = xp[:, ch, r * stride[0] + i * dilation[0],
                                                               s * stride[1] + j * dilation[1]]
    return col


@pytest.mark.parametrize("fields, kernel, stride, pad, dilation", [
    ("kernel_size: 3", (3, 3), (1, 1), (0, 0), (1, 1)),
    ("kernel_size: 3 stride: 2 pad: 1", (3, 3), (2, 2), (1, 1), (1, 1)),
    ("kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 pad_h: 1 pad_w: 0 dilation: 2", (2, 3), (1, 2), (1, 0),
     (2, 2)),
])
def test_im2col_forward_matches_caffe_layout(fields, kernel, stride, pad, dilation):
    rng = numpy.random.default_rng(24)
    x = rng.standard_normal((2, 3, 6, 7))
    layer = make_layer('name: "i" type: "Im2col" convolution_param { %s }' % fields)
    _, (top,) = run(layer, x)
    expected = naive_im2col(x, kernel, stride, pad, dilation)
    assert top.shape == expected.shape
    numpy.testing.assert_array_equal(top.data, expected)


@pytest.mark.parametrize("fields, shape", [
    ("kernel_size: 3 stride: 2 pad: 1", (2, 2, 5, 6)),
    ("kernel_size: 2 dilation: 2", (1, 2, 5, 4)),
    ("kernel_size: 2 pad: 1", (1, 2, 3, 3, 3)),
])
def test_im2col_gradients(fields, shape):
    rng = numpy.random.default_rng(25)
    layer = make_layer('name: "i" type: "Im2col" convolution_param { %s }' % fields)
    check_gradient(layer, [blob(rng.standard_normal(shape))], [Blob((), dtype=F64)], max_points=60)


def test_im2col_gemm_is_convolution():
    # Caffe's column layout is what a convolution multiplies by its weights.
    rng = numpy.random.default_rng(26)
    x = rng.standard_normal((2, 3, 6, 5))
    cols = make_layer('name: "i" type: "Im2col" convolution_param { kernel_size: 3 pad: 1 stride: 2 }')
    _, (col,) = run(cols, x)
    conv = make_layer('name: "c" type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 pad: 1 '
                      'stride: 2 bias_term: false weight_filler { type: "gaussian" } }')
    _, (y,) = run(conv, x)
    w = conv.blobs[0].data.reshape(4, -1)
    numpy.testing.assert_allclose(numpy.einsum("ok,nkhw->nohw", w, col.data), y.data, rtol=1e-10, atol=1e-12)


@needs_gpu
@pytest.mark.parametrize("text, shape", [
    ('name: "d" type: "Deconvolution" convolution_param { num_output: 3 kernel_size: 4 stride: 2 pad: 1 '
     'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }', (2, 4, 3, 5)),
    ('name: "i" type: "Im2col" convolution_param { kernel_size: 3 stride: 2 pad: 1 }', (2, 3, 5, 6)),
])
def test_numpy_and_cupy_agree(text, shape):
    assert_same_on_both_backends(text, [numpy.random.default_rng(27).standard_normal(shape)])
