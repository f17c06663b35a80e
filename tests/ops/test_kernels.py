"""The CuPy kernels (ops/kernels.py) against their numpy twins.

Each test runs the kernel source two ways: built with the C++ compiler and
run serially on numpy arrays ("host", everywhere g++ exists), and through
CuPy on a GPU ("cuda", skipped without one). Both are compared with the
numpy code the engine runs on CPU, on random inputs and the edge cases
(padding, ties in max pooling, ignore_label, in-place LRN).
"""
import shutil
import types

import numpy
import pytest
from google.protobuf import text_format

from pycaffe_dist import backend
from pycaffe_dist.blob import Blob
from pycaffe_dist.data.prefetch import Pipeline
from pycaffe_dist.layers import layer_class
from pycaffe_dist.ops import AveragePooling, ConvGeometry, Im2col, LRN, MaxPooling, PoolGeometry, kernels, pooled_size
from pycaffe_dist.ops import kernel_check, kernel_sources
from pycaffe_dist.proto import caffe_pb2
from pycaffe_dist.solvers import updates
from pycaffe_dist.solvers.base import Solver

DTYPE = numpy.float64


@pytest.fixture(scope="module")
def host():
    if shutil.which("g++") is None:
        pytest.skip("no g++ to build the kernel sources for the host")
    return kernel_check.HostKernels(DTYPE)


class _Host:
    """Run a kernel function on numpy arrays with the host build."""

    def __init__(self, built):
        self.built = built

    def put(self, a):
        return numpy.ascontiguousarray(a, DTYPE)

    def get(self, a):
        return a

    def call(self, fn, *args):
        return fn(*args, kernels=self.built)


class _Cuda:
    def put(self, a):
        return backend.cupy.asarray(numpy.ascontiguousarray(a, DTYPE))

    def get(self, a):
        return backend.to_host(a)

    def call(self, fn, *args):
        return fn(*args)


@pytest.fixture(params=["host", "cuda"])
def device(request):
    if request.param == "cuda":
        if not backend.cupy_available:
            pytest.skip("needs a GPU with cupy: the CUDA build of the kernels is checked there")
        return _Cuda()
    return _Host(request.getfixturevalue("host"))


def rng(seed=0):
    return numpy.random.default_rng(seed)


# -- im2col / col2im ----------------------------------------------------------------
@pytest.mark.parametrize("shape, kernel, stride, pad, dilation", [
    ((2, 3, 7, 6), (3, 3), (1, 1), (0, 0), (1, 1)),
    ((2, 3, 7, 6), (3, 2), (2, 1), (1, 2), (1, 2)),
    ((1, 2, 5, 9), (2, 4), (3, 2), (2, 1), (2, 1)),
])
def test_im2col_col2im_match_numpy(device, shape, kernel, stride, pad, dilation):
    g = ConvGeometry(kernel, stride, pad, dilation)
    out = g.out_shape(shape[2:])
    x = rng().normal(size=shape)
    cols = rng(1).normal(size=shape[:2] + kernel + out)
    twin = Im2col(g)
    want_col = numpy.empty(shape[:2] + kernel + out)
    twin.forward(x, want_col)
    want_dx = numpy.empty(shape)
    twin.backward(cols, want_dx)

    op = Im2col(g)
    col = device.put(numpy.full(want_col.shape, numpy.nan))
    device.call(kernels.im2col, op, device.put(x), col)
    numpy.testing.assert_allclose(device.get(col), want_col, rtol=0, atol=0)
    dx = device.put(numpy.full(shape, numpy.nan))
    device.call(kernels.col2im, op, device.put(cols), dx)
    numpy.testing.assert_allclose(device.get(dx), want_dx, rtol=1e-13, atol=1e-13)


# -- pooling --------------------------------------------------------------------------
POOLS = [  # (shape, kernel, stride, pad)
    ((2, 3, 8, 8), (2, 2), (2, 2), (0, 0)),        # LeNet's
    ((2, 3, 9, 7), (3, 3), (2, 2), (0, 0)),        # overlapping, ceil mode leaves a partial window
    ((1, 4, 7, 8), (3, 3), (2, 2), (1, 1)),        # cifar's, padded
    ((1, 2, 6, 5), (3, 2), (1, 2), (2, 1)),        # pad beside the kernel size
    ((1, 3, 10, 9), (1, 2), (4, 3), (0, 0)),       # rounding up adds windows that start past the input
]


def pool_geometry(shape, kernel, stride, pad):
    out = tuple(pooled_size(s, k, t, p) for s, k, t, p in zip(shape[2:], kernel, stride, pad))
    return PoolGeometry(kernel, stride, pad, shape[2:], out), shape[:2] + out


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("shape, kernel, stride, pad", POOLS)
def test_max_pooling_matches_numpy(device, shape, kernel, stride, pad, ties):
    g, out_shape = pool_geometry(shape, kernel, stride, pad)
    # With ties, most windows hold their maximum twice: the first in row-major order must win.
    x = rng().integers(-2, 2, size=shape).astype(DTYPE) if ties else rng().normal(size=shape)
    dy = rng(1).normal(size=out_shape)
    twin = MaxPooling(g)
    want_y, want_mask, want_dx = numpy.empty(out_shape), numpy.empty(out_shape), numpy.empty(shape)
    twin.forward(x, want_y)
    twin.mask(want_mask)
    twin.backward(dy, want_dx)

    op = MaxPooling(g)
    y = device.put(numpy.full(out_shape, numpy.nan))
    device.call(kernels.max_pool_forward, op, device.put(x), y)
    mask = device.put(numpy.empty(out_shape))
    kernels.max_pool_mask(op, mask)
    dx = device.put(numpy.full(shape, numpy.nan))
    device.call(kernels.max_pool_backward, op, device.put(dy), dx)
    numpy.testing.assert_array_equal(device.get(y), want_y)
    numpy.testing.assert_array_equal(device.get(mask), want_mask)
    numpy.testing.assert_allclose(device.get(dx), want_dx, rtol=1e-14, atol=0)


@pytest.mark.parametrize("shape, kernel, stride, pad", POOLS)
def test_average_pooling_matches_numpy(device, shape, kernel, stride, pad):
    g, out_shape = pool_geometry(shape, kernel, stride, pad)
    x, dy = rng().normal(size=shape), rng(1).normal(size=out_shape)
    twin = AveragePooling(g)
    want_y, want_dx = numpy.empty(out_shape), numpy.empty(shape)
    twin.forward(x, want_y)
    twin.backward(dy, want_dx)

    op = AveragePooling(g)
    y, dx = device.put(numpy.empty(out_shape)), device.put(numpy.empty(shape))
    device.call(kernels.ave_pool_forward, op, device.put(x), y)
    device.call(kernels.ave_pool_backward, op, device.put(dy), dx)
    numpy.testing.assert_allclose(device.get(y), want_y, rtol=1e-12, atol=1e-14)
    numpy.testing.assert_allclose(device.get(dx), want_dx, rtol=1e-12, atol=1e-14)


# -- LRN ---------------------------------------------------------------------------------
@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("shape, size, alpha, beta, k", [
    ((2, 7, 3, 4), 5, 1e-1, 0.75, 1.0),
    ((2, 7, 3, 4), 3, 2e-1, 0.6, 2.0),
    ((1, 2, 3, 3), 5, 5e-1, 1.0, 1.0),     # fewer channels than the window
])
def test_lrn_across_channels_matches_numpy(device, shape, size, alpha, beta, k, in_place):
    x, dy = rng().normal(size=shape) * 2, rng(1).normal(size=shape)
    twin = LRN(size, alpha, beta, k, across_channels=True)
    want_y, want_dx = numpy.empty(shape), numpy.empty(shape)
    twin.forward(x, want_y)
    twin.backward(dy, want_dx, x)

    op = LRN(size, alpha, beta, k, across_channels=True)
    xd = device.put(x)
    y = xd if in_place else device.put(numpy.empty(shape))
    device.call(kernels.lrn_forward, op, xd, y)
    numpy.testing.assert_allclose(device.get(y), want_y, rtol=1e-12)
    if in_place:   # the top is then changed; backward must use the saved bottom
        y[...] = 0
    dx = device.put(numpy.empty(shape))
    device.call(kernels.lrn_backward, op, device.put(dy), dx, xd)
    numpy.testing.assert_allclose(device.get(dx), want_dx, rtol=1e-11, atol=1e-13)


# -- SoftmaxWithLoss ----------------------------------------------------------------------
def softmax_loss_layer(extra, xp):
    param = text_format.Parse('name: "loss" type: "SoftmaxWithLoss" ' + extra, caffe_pb2.LayerParameter())
    layer = layer_class(param.type)(param, 0)
    layer.dtype, layer.xp = DTYPE, xp
    return layer


def blobs_on(xp, *arrays):
    out = []
    for a in arrays:
        blob = Blob(a.shape, dtype=DTYPE, xp=xp)
        blob.data[...] = xp.asarray(a)
        out.append(blob)
    return out


@pytest.mark.parametrize("extra", [
    "",
    "loss_param { ignore_label: 2 }",
    "loss_param { ignore_label: 0 normalization: FULL }",
    "loss_param { ignore_label: 1 normalization: BATCH_SIZE } loss_weight: 3",
    "loss_param { ignore_label: 4 normalization: NONE }",
    "loss_param { normalize: false }",
])
@pytest.mark.parametrize("shape", [(6, 5), (2, 5, 3, 2)])
def test_softmax_loss_matches_numpy(device, extra, shape):
    x = rng().normal(size=shape) * 3
    labels = rng(1).integers(0, 5, size=(shape[0],) + shape[2:]).astype(DTYPE)
    results = []
    for xp, run in ((numpy, None), (backend.cupy if isinstance(device, _Cuda) else numpy, device)):
        layer = softmax_loss_layer(extra, xp)
        bottom = blobs_on(xp, x, labels)
        top = [Blob((), dtype=DTYPE, xp=xp), Blob((), dtype=DTYPE, xp=xp)]
        layer.setup(bottom, top)
        layer.reshape(bottom, top)
        top[0].diff[...] = 3.0 if "loss_weight" in extra else 1.0
        if run is None:
            layer.forward(bottom, top)
            layer.backward(top, [True, False], bottom)
        else:
            run.call(kernels.softmax_loss_forward, layer, bottom, top)
            run.call(kernels.softmax_loss_backward, layer, top, bottom)
        results.append([backend.to_host(a) for a in (top[0].data, top[1].data, bottom[0].diff)])
    for got, want in zip(results[1], results[0]):
        numpy.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_softmax_loss_kernel_names_a_label_out_of_range(host):
    layer = softmax_loss_layer("loss_param { ignore_label: 9 }", numpy)
    bottom = blobs_on(numpy, rng().normal(size=(3, 4)), numpy.array([1.0, 9.0, 4.0]))
    top = [Blob((), dtype=DTYPE)]
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    with pytest.raises(Exception, match="label value 4 is out of range"):
        kernels.softmax_loss_forward(layer, bottom, top, kernels=host)


# -- the solver updates -------------------------------------------------------------------
def fake_solver(solver_type, xp, values, **fields):
    """What apply_update reads of a Solver, on flat buffers of `values`."""
    param = caffe_pb2.SolverParameter(type=solver_type, **fields)
    w, g, lr_mult, decay_mult, *history = [xp.asarray(v.copy()) for v in values]
    n = w.size
    rule, count = updates.RULES[solver_type]
    return types.SimpleNamespace(
        param=param, path="<test>", type=solver_type, iter=4, is_root=True, rule=rule,
        net=types.SimpleNamespace(xp=xp, flat_data=w, flat_diff=g), history=history[:count],
        dtype=numpy.dtype(DTYPE), _scratch=[], _lane_runs={}, _update_choice=None,
        per_element_mults=lambda: (lr_mult, decay_mult),
        # the numpy update's blocks: one element each, so every element has its own multipliers
        _blocks=[(i, i + 1, DTYPE(values[2][i]), DTYPE(values[3][i])) for i in range(n)],
        learning_rate=lambda: 0.05)


@pytest.mark.parametrize("solver_type", sorted(updates.RULES))
@pytest.mark.parametrize("fields", [
    dict(momentum=0.9, weight_decay=5e-3, delta=1e-6, momentum2=0.99, rms_decay=0.95),
    dict(momentum=0.8, weight_decay=1e-2, regularization_type="L1", iter_size=3, delta=1e-4,
         momentum2=0.999, rms_decay=0.9),
    dict(momentum=0.0, weight_decay=0.0, delta=1e-8, momentum2=0.9),
])
def test_fused_solver_update_matches_numpy(device, solver_type, fields):
    n = 257
    r = rng()
    values = [r.normal(size=n), r.normal(size=n), r.choice([0.0, 1.0, 2.0], size=n),
              r.choice([0.0, 1.0], size=n), r.uniform(0, 1, size=n), r.uniform(0, 1, size=n)]
    values[0][:5] = 0.0                       # sign(0) = 0 under L1
    twin = fake_solver(solver_type, numpy, values, **fields)
    for _ in range(2):                        # twice: the history written by the first step is read
        Solver.apply_update(twin)
    xp = backend.cupy if isinstance(device, _Cuda) else numpy
    fused = fake_solver(solver_type, xp, values, **fields)
    for _ in range(2):
        device.call(kernels.solver_update, fused, 0.05)
    for got, want in zip([fused.net.flat_data, fused.net.flat_diff] + fused.history,
                         [twin.net.flat_data, twin.net.flat_diff] + twin.history):
        numpy.testing.assert_allclose(backend.to_host(got), want, rtol=1e-12, atol=1e-14)


# -- the sources themselves ---------------------------------------------------------------
def test_kernels_compile_for_float32_with_warnings_as_errors():
    if shutil.which("g++") is None:
        pytest.skip("no g++ to build the kernel sources for the host")
    kernel_check.HostKernels(numpy.float32, syntax_only=True)


def test_a_broken_kernel_source_is_rejected(monkeypatch):
    if shutil.which("g++") is None:
        pytest.skip("no g++ to build the kernel sources for the host")
    signature, source = kernel_sources.RAW_KERNELS["lrn_output"]
    monkeypatch.setitem(kernel_sources.RAW_KERNELS, "lrn_output", (signature, source.replace("-beta", "-betta")))
    with pytest.raises(RuntimeError, match="betta"):
        kernel_check.HostKernels(numpy.float64, syntax_only=True)


def test_nvrtc_compiles_every_kernel_to_ptx():
    nvrtc = pytest.importorskip("cupy_backends.cuda.libs.nvrtc",
                                reason="NVRTC checks need the cupy-cuda12x and nvidia-cuda-nvrtc-cu12 wheels "
                                       "(226 MB to download, 511 MB installed)")
    try:
        nvrtc.getVersion()
    except Exception as e:  # noqa: BLE001 - cupy without the NVRTC library
        pytest.skip(f"cupy is installed but NVRTC does not load ({e}); pip install nvidia-cuda-nvrtc-cu12")
    sizes = kernel_check.nvrtc_check()
    assert set(sizes) >= {"raw_float", "raw_double"} | {f"{s}_float" for s in kernel_sources.SOLVER_RULES}
    assert all(size > 0 for size in sizes.values())


def test_nothing_is_compiled_for_numpy_arrays():
    assert not kernels.on_gpu(numpy.zeros(3))
    assert kernels._cuda._modules == {} and kernels._cuda._solvers == {} or backend.cupy_available


# -- the dispatch lines ---------------------------------------------------------------------
NET = '''
layer { name: "data" type: "MemoryData" top: "data" top: "label"
        memory_data_param { batch_size: 4 channels: 3 height: 9 width: 9 } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        convolution_param { num_output: 4 kernel_size: 3 pad: 1
          weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "pool1" type: "Pooling" bottom: "conv" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm" type: "LRN" bottom: "pool1" top: "norm" lrn_param { local_size: 3 alpha: 0.5 } }
layer { name: "pool2" type: "Pooling" bottom: "norm" top: "pool2"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "cols" type: "Im2col" bottom: "pool2" top: "cols" convolution_param { kernel_size: 2 pad: 1 } }
layer { name: "ip" type: "InnerProduct" bottom: "cols" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss"
        loss_param { ignore_label: 2 } }
'''


def train(solver_type):
    param = text_format.Parse(
        f'base_lr: 0.05 lr_policy: "fixed" momentum: 0.9 weight_decay: 0.01 type: "{solver_type}" '
        'random_seed: 5 display: 0 snapshot_after_train: false max_iter: 3', caffe_pb2.SolverParameter())
    param.net_param.CopyFrom(text_format.Parse(NET, caffe_pb2.NetParameter()))
    solver = Solver(param, dtype=DTYPE)
    r = rng(2)
    solver.net.layers[0].set_input_arrays(r.normal(size=(8, 3, 9, 9)), r.integers(0, 5, size=8).astype(DTYPE))
    solver.solve()
    return solver.net.flat_data.copy(), solver.net.flat_diff.copy()


@pytest.mark.parametrize("solver_type", ["SGD", "Adam"])
def test_training_through_the_dispatch_lines_matches_numpy(host, monkeypatch, solver_type):
    """Three steps of a net using every kernel, once on the numpy path and once
    with the dispatch lines sending numpy arrays to the host build: the
    wiring (arguments, buffers, saved state) is what runs on a GPU."""
    want = train(solver_type)
    calls = []
    monkeypatch.setattr(kernels, "on_gpu", lambda a: isinstance(a, numpy.ndarray))
    monkeypatch.setattr(kernels, "_cuda", types.SimpleNamespace(
        launch=lambda name, *a: (calls.append(name), host.launch(name, *a)),
        solver=lambda name, *a: (calls.append(name), host.solver(name, *a))))
    got = train(solver_type)
    assert set(calls) == set(kernel_sources.RAW_KERNELS) | {solver_type}
    for g, w in zip(got, want):
        numpy.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12)


# -- the prefetch pipeline's device copies ---------------------------------------------------
class _Batches:
    """A source of numbered records; a batch decodes to (data, labels) arrays."""

    def __init__(self):
        self.next_record = 0

    def read(self, n):
        start, self.next_record = self.next_record, self.next_record + n
        return list(range(start, start + n))

    def state(self):
        return self.next_record

    def close(self):
        pass


def _decode(records):
    values = numpy.asarray(records, dtype=numpy.float32)
    return numpy.outer(values, numpy.arange(3, dtype=numpy.float32)), values


def test_prefetch_device_copy_needs_a_gpu():
    if backend.cupy_available:
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="needs a usable GPU"):
        Pipeline(_Batches(), _decode, 4, device=True)


@pytest.mark.skipif(not backend.cupy_available, reason="needs a GPU with cupy")
@pytest.mark.parametrize("workers", [0, 2])
def test_prefetch_copies_batches_to_the_gpu(workers):
    with Pipeline(_Batches(), _decode, 4, workers=workers, device=True) as pipeline:
        for k in range(5):
            data, labels = pipeline.next()
            assert isinstance(data, backend.cupy.ndarray) and isinstance(labels, backend.cupy.ndarray)
            want = _decode(list(range(4 * k, 4 * k + 4)))
            numpy.testing.assert_array_equal(backend.to_host(data), want[0])
            numpy.testing.assert_array_equal(backend.to_host(labels), want[1])


def test_prefetch_device_copy_moves_every_array_of_a_batch():
    """Arrays alone, in tuples (named ones keep their type) and as attributes
    move; other values stay. A stand-in for cupy.asarray marks what moved."""
    import collections

    from pycaffe_dist.data.prefetch import _DeviceCopy

    moved = types.SimpleNamespace(asarray=lambda a: ("on device", a))
    a, b = numpy.zeros(2), numpy.ones(3)
    Pair = collections.namedtuple("Pair", "data labels")
    assert _DeviceCopy._moved(moved, a) == ("on device", a)
    pair = _DeviceCopy._moved(moved, Pair(a, None))
    assert type(pair) is Pair and pair.data == ("on device", a) and pair.labels is None
    record = types.SimpleNamespace(data=a, labels=b, skipped=[(1, "k", "bad")])
    out = _DeviceCopy._moved(moved, record)
    assert out.data == ("on device", a) and out.labels == ("on device", b) and out.skipped == record.skipped
    assert record.data is a   # the decoded batch itself is left alone
