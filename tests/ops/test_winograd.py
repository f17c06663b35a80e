"""Winograd convolution (ops/winograd.py) against convolution written out
in the test, against the im2col path, in float64 and float32, through the
Convolution and Deconvolution layers, and on two threads."""
import numpy
import pytest

from pycaffe_dist.ops import winograd
from pycaffe_dist.ops.conv import ConvGeometry, Convolution

VARIANTS = [(2, 3), (4, 3), (2, 5)]


def direct(x, w, bias, pad, group):
    """Caffe's convolution (cross-correlation), summed term by term."""
    n, c, h, wd = x.shape
    o, cg, r, _ = w.shape
    xp = numpy.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = h + 2 * pad - r + 1, wd + 2 * pad - r + 1
    y = numpy.zeros((n, o, ho, wo))
    og = o // group
    for k in range(group):
        xs = xp[:, k * cg:(k + 1) * cg]
        for i in range(r):
            for j in range(r):
                y[:, k * og:(k + 1) * og] += numpy.einsum("nchw,oc->nohw", xs[:, :, i:i + ho, j:j + wo],
                                                          w[k * og:(k + 1) * og, :, i, j])
    return y + bias.reshape(1, -1, 1, 1)


@pytest.mark.parametrize("m, r", VARIANTS)
def test_transform_matrices_compute_a_correlation(m, r):
    bt, g, at = winograd.matrices(m, r)
    assert bt.shape == (m + r - 1, m + r - 1) and g.shape == (m + r - 1, r) and at.shape == (m, m + r - 1)
    rng = numpy.random.default_rng(m * 10 + r)
    for _ in range(5):
        d, k = rng.standard_normal(m + r - 1), rng.standard_normal(r)
        numpy.testing.assert_allclose(at @ ((g @ k) * (bt @ d)), [d[j:j + r] @ k for j in range(m)],
                                      rtol=1e-12, atol=1e-12)


def run(op, x, w, b, dy):
    o = w.shape[0]
    y = numpy.empty(dy.shape, x.dtype)
    op.forward(x, w, b, y)
    dw, db, dx = numpy.zeros_like(w), numpy.zeros(o, x.dtype), numpy.empty_like(x)
    op.backward(x, dy, w, dw, db, dx)
    return y, dw, db, dx


SHAPES = [  # n, c, o, h, w, pad, group
    (3, 6, 4, 7, 7, 1, 1),
    (2, 4, 6, 8, 9, 0, 2),
    (4, 2, 2, 5, 6, 2, 1),
    (2, 8, 4, 13, 13, 1, 2),
    (1, 3, 5, 11, 10, 4, 1),
]


@pytest.mark.parametrize("m, r", VARIANTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_gradients_equal_direct_convolution(m, r, shape, monkeypatch):
    n, c, o, h, wd, pad, group = shape
    pad = min(pad, r - 1)
    monkeypatch.setattr(winograd, "CHUNK_BYTES", 1 << 12)    # several chunks per batch
    rng = numpy.random.default_rng(sum(shape) + m + r)
    x = rng.standard_normal((n, c, h, wd))
    w = rng.standard_normal((o, c // group, r, r))
    b = rng.standard_normal(o)
    geometry = ConvGeometry((r, r), (1, 1), (pad, pad), (1, 1))
    ho, wo = geometry.out_shape((h, wd))
    dy = rng.standard_normal((n, o, ho, wo))
    y, dw, db, dx = run(winograd.Winograd(geometry, group, m), x, w, b, dy)
    numpy.testing.assert_allclose(y, direct(x, w, b, pad, group), rtol=1e-11, atol=1e-11)
    # The gradients as the derivatives of <y, dy>, with the test's own formula:
    # dW[o, c, i, j] = <dy[:, o], x shifted by (i, j)>, dx the adjoint of y.
    xp = numpy.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    og, cg = o // group, c // group
    want_dw = numpy.zeros_like(w)
    for k in range(group):
        for i in range(r):
            for j in range(r):
                want_dw[k * og:(k + 1) * og, :, i, j] = numpy.einsum(
                    "nohw,nchw->oc", dy[:, k * og:(k + 1) * og], xp[:, k * cg:(k + 1) * cg, i:i + ho, j:j + wo])
    numpy.testing.assert_allclose(dw, want_dw, rtol=1e-11, atol=1e-11)
    numpy.testing.assert_allclose(db, dy.sum(axis=(0, 2, 3)), rtol=1e-12)
    probe = rng.standard_normal(x.shape)           # <dx, probe> = <dy, conv(probe) without bias>
    assert numpy.vdot(dx, probe) == pytest.approx(numpy.vdot(dy, direct(probe, w, 0 * b, pad, group)), rel=1e-10)


@pytest.mark.parametrize("m, r, bound", [(2, 3, 2e-6), (4, 3, 2e-5), (2, 5, 2e-5)])
def test_float32_error_stays_within_each_variants_bound(m, r, bound):
    """Relative to the largest value, against a float64 reference; im2col's
    own float32 error is printed beside it for comparison."""
    rng = numpy.random.default_rng(7)
    n, c, o, size = 4, 64, 32, 14
    geometry = ConvGeometry((r, r), (1, 1), (r // 2, r // 2), (1, 1))
    x64, w64 = rng.standard_normal((n, c, size, size)), rng.standard_normal((o, c, r, r)) / (r * c ** 0.5)
    b64, dy64 = numpy.zeros(o), rng.standard_normal((n, o, size, size))
    want = [a for a in run(Convolution(geometry), x64, w64, b64, dy64)]
    errors = {}
    for name, op in (("winograd", winograd.Winograd(geometry, 1, m)), ("im2col", Convolution(geometry))):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(winograd, "ENABLED", name == "winograd")
            got = run(op, x64.astype(numpy.float32), w64.astype(numpy.float32), b64.astype(numpy.float32),
                      dy64.astype(numpy.float32))
        errors[name] = [float(numpy.abs(g - v).max() / numpy.abs(v).max()) for g, v in zip(got, want)]
    print(f"F({m},{r}) float32 relative error (y, dW, db, dx): winograd {errors['winograd']}, "
          f"im2col {errors['im2col']}")
    assert max(errors["winograd"]) < bound


def test_which_convolutions_take_the_winograd_path():
    def m_for(kernel, stride=1, pad=1, dilation=1, group=1, c=256, o=384, spatial=(13, 13)):
        geometry = ConvGeometry((kernel, kernel), (stride, stride), (pad, pad), (dilation, dilation))
        return winograd.tile_size(geometry, group, c, o, spatial)
    assert m_for(3) == 2                                  # CaffeNet conv3: 13x13 is ragged for 4x4 tiles
    assert m_for(3, spatial=(56, 56)) == 4                # VGG-sized maps: F(4x4, 3x3)
    assert m_for(5, pad=2, group=2, c=96, o=256, spatial=(27, 27)) == 2   # CaffeNet conv2
    assert m_for(5, pad=2, c=32, o=32, spatial=(16, 16)) is None          # cifar10's: too shallow
    assert m_for(3, stride=2) is None
    assert m_for(3, dilation=2) is None
    assert m_for(3, pad=3) is None
    assert m_for(7, pad=3) is None
    assert m_for(1, pad=0) is None
    geometry = ConvGeometry((3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1))
    assert winograd.tile_size(geometry, 1, 256, 256, (8, 8, 8)) is None   # 3-D


def test_two_threads_match_one_and_repeat_to_the_bit(monkeypatch):
    from pycaffe_dist.ops import threads
    rng = numpy.random.default_rng(3)
    geometry = ConvGeometry((3, 3), (1, 1), (1, 1), (1, 1))
    x = rng.standard_normal((6, 64, 13, 13)).astype(numpy.float32)
    w = rng.standard_normal((128, 32, 3, 3)).astype(numpy.float32)
    b = rng.standard_normal(128).astype(numpy.float32)
    dy = rng.standard_normal((6, 128, 13, 13)).astype(numpy.float32)
    monkeypatch.setattr(winograd, "CHUNK_BYTES", 1 << 16)
    results = {}
    for count in (1, 2, 2):
        monkeypatch.setattr(threads, "count", lambda xp=None, count=count: count)
        got = run(winograd.Winograd(geometry, 2, 2), x, w, b, dy)
        if count in results:        # the same thread count gives the same bits
            for a, want in zip(got, results[count]):
                assert numpy.array_equal(a, want)
        results[count] = got
    for a, want in zip(results[2], results[1]):
        numpy.testing.assert_allclose(a, want, rtol=0, atol=2e-5 * float(numpy.abs(want).max()))


LAYERS = [
    'name: "c" type: "Convolution" convolution_param { num_output: 6 kernel_size: 3 pad: 1 group: 2 '
    'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" } }',
    'name: "c" type: "Convolution" convolution_param { num_output: 4 kernel_size: 5 pad: 2 '
    'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" } }',
    'name: "d" type: "Deconvolution" convolution_param { num_output: 4 kernel_size: 3 pad: 1 '
    'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" } }',
]


@pytest.mark.parametrize("text", LAYERS)
def test_layers_on_the_winograd_path_pass_gradient_checks_and_match_im2col(text, monkeypatch):
    """Small layers sent down the Winograd path (MIN_DEPTH lowered): numeric
    gradients through the layer, and the layer's outputs and gradients
    equal to the same layer with Winograd switched off."""
    monkeypatch.setattr(winograd, "MIN_DEPTH", {3: 0, 5: 0})
    taken = []
    original = winograd.Winograd.forward
    monkeypatch.setattr(winograd.Winograd, "forward", lambda self, *a: taken.append(self.m) or original(self, *a))
    check_layer_against_im2col(monkeypatch, winograd, text)
    assert taken


def check_layer_against_im2col(monkeypatch, path, text):
    """A Convolution/Deconvolution layer given by `text` on the path
    `path` (a module with an ENABLED switch) passes numeric gradient checks
    and equals, outputs and gradients, the same layer with the path off."""
    from pycaffe_dist.blob import Blob
    from pycaffe_dist.gradient_check import check_gradient
    from tests.layers.test_vision import blob, make_layer
    x = numpy.random.default_rng(5).standard_normal((2, 4, 6, 7))
    check_gradient(make_layer(text), [blob(x)], [Blob((), dtype=numpy.float64)], max_points=60)
    layer, bottom, top = make_layer(text), [blob(x)], [Blob((), dtype=numpy.float64)]
    layer.setup(bottom, top)
    results = []
    for enabled in (True, False):
        monkeypatch.setattr(path, "ENABLED", enabled)
        for b in layer.blobs:
            b.diff[...] = 0
        layer.forward(bottom, top)
        top[0].diff[...] = numpy.random.default_rng(6).standard_normal(top[0].shape)
        layer.backward(top, [True], bottom)
        results.append([top[0].data.copy(), bottom[0].diff.copy()] + [b.diff.copy() for b in layer.blobs])
    for got, want in zip(*results):
        numpy.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)


def test_layers_sharing_the_scratch_do_not_disturb_each_other():
    """All Winograd ops on a thread share one set of buffers (the padded
    input among them, whose border each call must zero again): two layers
    of other shapes and pads, run in turn, give what each gives alone."""
    rng = numpy.random.default_rng(11)
    layers = []
    for r, pad, c, o, size in ((5, 2, 8, 6, 9), (3, 0, 6, 4, 12), (3, 1, 4, 8, 7)):
        geometry = ConvGeometry((r, r), (1, 1), (pad, pad), (1, 1))
        x = rng.standard_normal((3, c, size, size))
        w, b = rng.standard_normal((o, c, r, r)), rng.standard_normal(o)
        dy = rng.standard_normal((3, o) + geometry.out_shape((size, size)))
        layers.append((winograd.Winograd(geometry, 1, 2), x, w, b, dy, pad))
    alone = []
    for layer in layers:
        winograd._LOCAL.workspace = None          # fresh buffers: this layer alone
        alone.append(run(*layer[:5]))
    for _ in range(2):
        for (op, x, w, b, dy, pad), want in zip(layers, alone):
            for got, expected in zip(run(op, x, w, b, dy), want):
                assert numpy.array_equal(got, expected)
            numpy.testing.assert_allclose(want[0], direct(x, w, b, pad, 1), rtol=1e-11, atol=1e-11)
