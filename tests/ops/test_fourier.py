"""Fourier-domain convolution (ops/fourier.py) against numpy.fft, against
convolution written out in the test (float64 and float32), through the
Convolution and Deconvolution layers, and its dispatch rule."""
import numpy
import pytest

from pycaffe_dist.ops import fourier
from pycaffe_dist.ops.conv import ConvGeometry, Convolution
from tests.ops.test_winograd import check_layer_against_im2col, direct, run

SHAPES = [  # n, c, o, h, w, kernel, pad
    (3, 5, 4, 9, 9, (5, 5), 2),      # odd padded size (13)
    (2, 4, 6, 8, 8, (3, 3), 1),      # even (10): a Nyquist bin
    (4, 3, 2, 7, 10, (3, 5), 0),     # rectangular image and kernel, no padding
    (1, 6, 3, 12, 11, (5, 3), 1),
    (2, 2, 5, 5, 6, (2, 2), 1),      # even kernel
]


def geometry_of(kernel, pad):
    return ConvGeometry(kernel, (1, 1), (pad, pad), (1, 1))


def test_the_input_transform_is_the_padded_images_dft():
    rng = numpy.random.default_rng(1)
    x = rng.standard_normal((3, 4, 7, 10))
    op = fourier.Fourier(geometry_of((3, 3), 2))
    sh, k = op._sizes(x.shape)
    out = numpy.empty((k, sh, 2, 4, 3))
    op._transform_input(x, op._matrices(x.shape, x.dtype), sh, k, out)
    want = numpy.fft.rfft2(numpy.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2))))     # (n, c, S_h, K)
    numpy.testing.assert_allclose(out[:, :, 0], want.real.transpose(3, 2, 1, 0), atol=1e-12)
    numpy.testing.assert_allclose(out[:, :, 1], want.imag.transpose(3, 2, 1, 0), atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_gradients_equal_direct_convolution(shape):
    n, c, o, h, wd, kernel, pad = shape
    rng = numpy.random.default_rng(sum(shape[:5]))
    x = rng.standard_normal((n, c, h, wd))
    w = rng.standard_normal((o, c) + kernel)
    b = rng.standard_normal(o)
    geometry = geometry_of(kernel, pad)
    ho, wo = geometry.out_shape((h, wd))
    dy = rng.standard_normal((n, o, ho, wo))
    y, dw, db, dx = run(fourier.Fourier(geometry), x, w, b, dy)
    numpy.testing.assert_allclose(y, direct_rect(x, w, b, pad), rtol=1e-11, atol=1e-11)
    # dW[o, c, i, j] = <dy[:, o], x shifted by (i, j)>; dx the adjoint of y.
    xp = numpy.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    want_dw = numpy.zeros_like(w)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            want_dw[:, :, i, j] = numpy.einsum("nohw,nchw->oc", dy, xp[:, :, i:i + ho, j:j + wo])
    numpy.testing.assert_allclose(dw, want_dw, rtol=1e-11, atol=1e-11)
    numpy.testing.assert_allclose(db, dy.sum(axis=(0, 2, 3)), rtol=1e-12)
    probe = rng.standard_normal(x.shape)           # <dx, probe> = <dy, conv(probe) without bias>
    assert numpy.vdot(dx, probe) == pytest.approx(numpy.vdot(dy, direct_rect(probe, w, 0 * b, pad)), rel=1e-10)


@pytest.mark.parametrize("shape", [(3, 4, 6, 9, 1, 2), (2, 6, 9, 8, 2, 3)])
def test_groups_equal_direct_convolution(shape):
    n, c, o, size, pad, group = shape
    rng = numpy.random.default_rng(sum(shape))
    x = rng.standard_normal((n, c, size, size))
    w = rng.standard_normal((o, c // group, 5, 5))
    b = rng.standard_normal(o)
    geometry = geometry_of((5, 5), pad)
    dy = rng.standard_normal((n, o) + geometry.out_shape((size, size)))
    got = run(fourier.Fourier(geometry, group), x, w, b, dy)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fourier, "ENABLED", False)
        want = run(Convolution(geometry, group), x, w, b, dy)
    numpy.testing.assert_allclose(got[0], direct(x, w, b, pad, group), rtol=1e-11, atol=1e-11)
    for a, expected in zip(got, want):
        numpy.testing.assert_allclose(a, expected, rtol=1e-11, atol=1e-11)


def direct_rect(x, w, bias, pad):
    """Caffe's convolution for any kernel shape, summed tap by tap."""
    n, c, h, wd = x.shape
    o, _, rh, rw = w.shape
    xp = numpy.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = h + 2 * pad - rh + 1, wd + 2 * pad - rw + 1
    y = numpy.zeros((n, o, ho, wo))
    for i in range(rh):
        for j in range(rw):
            y += numpy.einsum("nchw,oc->nohw", xp[:, :, i:i + ho, j:j + wo], w[:, :, i, j])
    return y + bias.reshape(1, -1, 1, 1)


def test_what_forward_keeps_is_remade_for_another_input_or_other_weights():
    """Backward with an x that forward did not see transforms that x; with
    weights changed in place since forward, the product weights are made
    again; and so for another image size with the same weights."""
    rng = numpy.random.default_rng(4)
    geometry = geometry_of((3, 3), 1)
    x1, x2 = rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((2, 3, 6, 6))
    w, b, dy = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4), rng.standard_normal((2, 4, 6, 6))
    op = fourier.Fourier(geometry)
    op.forward(x1, w, b, numpy.empty_like(dy))
    w[0, 1, 2, 0] += 1.0
    dw, dx = numpy.zeros_like(w), numpy.empty_like(x2)
    op.backward(x2, dy, w, dw, dx=dx)
    dw_direct, dx_direct = numpy.zeros_like(w), numpy.empty_like(x2)
    Convolution(geometry).backward(x2, dy, w, dw_direct, dx=dx_direct)
    numpy.testing.assert_allclose(dw, dw_direct, rtol=1e-11, atol=1e-11)
    numpy.testing.assert_allclose(dx, dx_direct, rtol=1e-11, atol=1e-11)
    x3 = rng.standard_normal((2, 3, 9, 7))
    y3 = numpy.empty((2, 4, 9, 7))
    op.forward(x3, w, b, y3)
    numpy.testing.assert_allclose(y3, direct_rect(x3, w, b, 1), rtol=1e-11, atol=1e-11)


def test_float32_error_stays_within_its_bound():
    """Relative to the largest value, against a float64 reference, at
    cifar10's conv2 shape (a few images); im2col's own float32 error is
    printed beside it. Measured (y, dW, dx): 3.8e-7, 9.2e-7, 2.3e-7 against
    im2col's 8.0e-7, 3.4e-7, 9.5e-7; Winograd F(2x2, 5x5) is held to 2e-5."""
    rng = numpy.random.default_rng(7)
    n, c, o, size, r = 8, 32, 32, 16, 5
    geometry = geometry_of((r, r), 2)
    x64, w64 = rng.standard_normal((n, c, size, size)), rng.standard_normal((o, c, r, r)) / (r * c ** 0.5)
    b64, dy64 = rng.standard_normal(o), rng.standard_normal((n, o, size, size))
    errors = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fourier, "ENABLED", False)
        want = run(Convolution(geometry), x64, w64, b64, dy64)
        for name, op in (("fourier", fourier.Fourier(geometry)), ("im2col", Convolution(geometry))):
            got = run(op, x64.astype(numpy.float32), w64.astype(numpy.float32), b64.astype(numpy.float32),
                      dy64.astype(numpy.float32))
            errors[name] = [float(numpy.abs(g - v).max() / numpy.abs(v).max()) for g, v in zip(got, want)]
    print(f"float32 relative error (y, dW, db, dx): fourier {errors['fourier']}, im2col {errors['im2col']}")
    assert max(errors["fourier"]) < 5e-6


def test_which_convolutions_take_the_fourier_path():
    def takes(kernel=5, pad=2, c=32, o=32, size=16, n=100, stride=1, dilation=1, group=1, needs_dx=True):
        geometry = ConvGeometry((kernel, kernel), (stride, stride), (pad, pad), (dilation, dilation))
        return fourier.use_fourier(geometry, group, c, o, (size, size), n, needs_dx)
    assert takes()                                        # cifar10's conv2
    assert takes(n=64) and takes(n=64, group=2)          # tests/layers/test_vision_steady.py's Fourier layers
    assert not takes(c=96, o=256, size=27, n=16, group=2)     # CaffeNet's conv2: 12M product weights per group
    assert takes(c=64, o=64, n=16)                        # also Winograd's, which it beat (0.85 fwd+bwd)
    assert not takes(c=64, o=64, n=4, size=32)            # test_vision_steady.py's Winograd F(2x2, 5x5)
    assert takes(c=32, o=64, size=8)                      # cifar10's conv3
    assert takes(pad=0, c=20, o=50, size=12, n=64)        # LeNet's conv2
    assert not takes(c=3, size=32, needs_dx=False)        # cifar10's conv1: 3 channels
    assert not takes(n=10)                                # a small batch: the weights' products dominate
    assert not takes(kernel=3, pad=1)                     # 3x3: broke even
    assert not takes(kernel=3, pad=1, c=256, o=384, size=13, n=16)    # CaffeNet's conv3
    assert not takes(stride=2) and not takes(dilation=2) and not takes(pad=5)
    geometry = ConvGeometry((3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1))
    assert not fourier.use_fourier(geometry, 1, 64, 64, (8, 8, 8), 100)


LAYERS = [
    'name: "c" type: "Convolution" convolution_param { num_output: 4 kernel_size: 5 pad: 2 '
    'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" } }',
    'name: "c" type: "Convolution" convolution_param { num_output: 3 kernel_h: 3 kernel_w: 2 pad: 1 '
    'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" } }',
    'name: "c" type: "Convolution" convolution_param { num_output: 6 kernel_size: 3 pad: 1 group: 2 '
    'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" } }',
    'name: "d" type: "Deconvolution" convolution_param { num_output: 4 kernel_size: 3 pad: 1 '
    'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" } }',
]


@pytest.mark.parametrize("text", LAYERS)
def test_layers_on_the_fourier_path_pass_gradient_checks_and_match_im2col(text, monkeypatch):
    """Small layers sent down the Fourier path (MAX_COST_RATIO raised):
    numeric gradients through the layer, and the layer's outputs and
    gradients equal to the same layer with the path switched off."""
    monkeypatch.setattr(fourier, "MAX_COST_RATIO", float("inf"))
    taken = []
    original = fourier.Fourier.forward
    monkeypatch.setattr(fourier.Fourier, "forward", lambda self, *a: taken.append(1) or original(self, *a))
    original_backward = fourier.Fourier.backward
    monkeypatch.setattr(fourier.Fourier, "backward",
                        lambda self, *a, **k: taken.append(2) or original_backward(self, *a, **k))
    check_layer_against_im2col(monkeypatch, fourier, text)
    assert 1 in taken and 2 in taken


def test_layers_sharing_the_scratch_do_not_disturb_each_other():
    """All Fourier ops on a thread share their scratch: layers of other
    shapes and pads, run in turn, give what each gives alone."""
    rng = numpy.random.default_rng(11)
    layers = []
    for r, pad, c, o, size in ((5, 2, 8, 6, 9), (3, 0, 6, 4, 12), (3, 1, 4, 8, 7)):
        geometry = geometry_of((r, r), pad)
        x = rng.standard_normal((3, c, size, size))
        w, b = rng.standard_normal((o, c, r, r)), rng.standard_normal(o)
        dy = rng.standard_normal((3, o) + geometry.out_shape((size, size)))
        layers.append((fourier.Fourier(geometry), x, w, b, dy))
    alone = []
    for layer in layers:
        fourier._LOCAL.workspace = None
        alone.append(run(*layer))
    for _ in range(2):
        for layer, want in zip(layers, alone):
            for got, expected in zip(run(*layer), want):
                assert numpy.array_equal(got, expected)


def test_two_threads_match_one_and_repeat_to_the_bit(monkeypatch):
    from pycaffe_dist.ops import threads
    rng = numpy.random.default_rng(3)
    geometry = geometry_of((5, 5), 2)
    x = rng.standard_normal((7, 16, 9, 9)).astype(numpy.float32)
    w = rng.standard_normal((24, 16, 5, 5)).astype(numpy.float32)
    b = rng.standard_normal(24).astype(numpy.float32)
    dy = rng.standard_normal((7, 24, 9, 9)).astype(numpy.float32)
    results = {}
    for count in (1, 2, 2, 3):
        monkeypatch.setattr(threads, "count", lambda xp=None, count=count: count)
        op = fourier.Fourier(geometry)
        got = run(op, x, w, b, dy)
        # threads.Choice runs an op's second calls' lanes in turn on this thread: the same bits
        for a, want in zip(run(op, x, w, b, dy), got):
            assert numpy.array_equal(a, want)
        if count in results:        # the same thread count gives the same bits
            for a, want in zip(got, results[count]):
                assert numpy.array_equal(a, want)
        results[count] = got
    for count in (2, 3):
        for a, want in zip(results[count], results[1]):
            numpy.testing.assert_allclose(a, want, rtol=0, atol=2e-5 * float(numpy.abs(want).max()))
