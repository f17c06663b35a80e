"""CuPy kernels for the ops that pay on a GPU, each with a numpy twin.

The engine runs one xp code path on numpy and CuPy; these kernels replace
that path on CuPy arrays where many small xp calls would each launch a
kernel (pooling's chains, LRN's window sums, the solver's dozen flat-buffer
passes). The numpy twins are the functions the engine runs on CPU:

  kernel                      numpy twin
  im2col / col2im             ops.im2col.Im2col.forward / backward
  max_pool_*                  ops.max_pooling.MaxPooling.forward / mask / backward
  ave_pool_*                  ops.average_pooling.AveragePooling.forward / backward
  lrn_*                       ops.lrn.LRN (ACROSS_CHANNELS)
  softmax_loss_*              layers.loss.SoftmaxWithLoss.forward / backward
  SOLVER_RULES[type]          solvers.base.Solver.apply_update with solvers.updates.RULES

Each kernel is declared once, as CUDA C source plus a signature, in
ops/kernel_sources.py. Nothing is compiled at import: a kernel is built on
its first call with CuPy arrays, once per (dtype, device), so a machine
without a GPU never compiles one. Every function below takes `kernels`:
None for CuPy, or an ops.kernel_check.HostKernels, which runs the same
sources built with a C++ compiler on numpy arrays; the tests compare each
kernel with its twin that way on machines with no GPU.
"""
import numpy

from .. import backend
from .kernel_sources import (RAW_KERNELS, SOLVER_ARRAYS_IN, SOLVER_SCALARS, module_source, solver_body,
                             solver_outputs, solver_params)


# -- launching -------------------------------------------------------------------------
_FLOATS = (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64))
_BLOCK = 256
_MAX_BLOCKS = 65535



def _scalar_args(signature, args, dtype):
    out = []
    for (_, kind), a in zip(signature, args):
        out.append(numpy.int32(a) if kind == "i" else numpy.dtype(dtype).type(a) if kind == "T" else a)
    return out


class _CudaKernels:
    """The CuPy objects, made on first use and cached per (dtype, device)."""

    def __init__(self):
        self._modules = {}
        self._solvers = {}

    def launch(self, name, n, args, dtype):
        cupy = backend.cupy
        key = (numpy.dtype(dtype), cupy.cuda.Device().id)
        if key not in self._modules:
            self._modules[key] = cupy.RawModule(code=module_source(dtype), options=("--std=c++11",))
        signature, _ = RAW_KERNELS[name]
        kernel = self._modules[key].get_function(name)
        blocks = max(1, min(_MAX_BLOCKS, -(-n // _BLOCK)))
        kernel((blocks,), (_BLOCK,), tuple([numpy.int64(n)] + _scalar_args(signature, args, dtype)))

    def solver(self, solver_type, arrays, scalars):
        cupy = backend.cupy
        if solver_type not in self._solvers:   # CuPy compiles it per dtype and device on first call
            self._solvers[solver_type] = cupy.ElementwiseKernel(
                *solver_params(solver_type), solver_body(solver_type), f"pycaffe_dist_{solver_type.lower()}_update")
        outs = solver_outputs(solver_type)
        self._solvers[solver_type](*[arrays[a] for a in SOLVER_ARRAYS_IN],
                                   *[numpy.int32(scalars["l1"]) if s == "l1" else scalars[s]
                                     for s in SOLVER_SCALARS],
                                   *[arrays[o] for o in outs])


_cuda = _CudaKernels()


def on_gpu(array):
    """Whether `array` is a float32 or float64 CuPy array, so the kernels here
    apply (other dtypes keep the xp path)."""
    return (backend.cupy is not None and isinstance(array, backend.cupy.ndarray)
            and array.dtype in _FLOATS)


def _kernels(kernels):
    return _cuda if kernels is None else kernels


# -- the ops (each takes `kernels`: None for CuPy, or a HostKernels) --------------------------
def _pool_geometry(g):
    (H, W), (OH, OW) = g.in_size, g.out_size
    return [H, W, OH, OW, *g.kernel, *g.stride, *g.pad]


def im2col(op, x, col, kernels=None):
    """Twin of Im2col.forward (2-D)."""
    g = op.geometry
    (H, W), (OH, OW) = x.shape[2:], col.shape[4:]
    n = x.shape[0] * x.shape[1] * OH * OW
    _kernels(kernels).launch("im2col", n, [x, col, H, W, OH, OW, *g.kernel, *g.stride, *g.pad,
                                           *g.dilation], x.dtype)


def col2im(op, col, dx, kernels=None):
    """Twin of Im2col.backward (2-D)."""
    g = op.geometry
    (H, W), (OH, OW) = dx.shape[2:], col.shape[4:]
    _kernels(kernels).launch("col2im", dx.size, [col, dx, H, W, OH, OW, *g.kernel, *g.stride, *g.pad,
                                                 *g.dilation], dx.dtype)


def max_pool_forward(op, x, y, kernels=None):
    """Twin of MaxPooling.forward: y, and the argmax mask kept in op.workspace."""
    xp = backend.get_array_module(x)
    mask = op.workspace.get("gpu_mask", y.shape, y.dtype, xp)
    _kernels(kernels).launch("max_pool_forward", y.size, [x, y, mask] + _pool_geometry(op.geometry), x.dtype)
    op._tracked = True


def max_pool_mask(op, out):
    """Twin of MaxPooling.mask."""
    out[...] = op.workspace.get("gpu_mask", out.shape, out.dtype, backend.get_array_module(out))


def max_pool_backward(op, dy, dx, x=None, kernels=None):
    """Twin of MaxPooling.backward: dy routed to each window's first maximum."""
    xp = backend.get_array_module(dy)
    if not op._tracked:
        if x is None:
            raise RuntimeError("max pooling backward needs a tracked forward first")
        max_pool_forward(op, x, op.workspace.get("retrack", dy.shape, dy.dtype, xp), kernels)
    mask = op.workspace.get("gpu_mask", dy.shape, dy.dtype, xp)
    _kernels(kernels).launch("max_pool_backward", dx.size, [dy, mask, dx] + _pool_geometry(op.geometry),
                             dy.dtype)


def ave_pool_forward(op, x, y, kernels=None):
    """Twin of AveragePooling.forward."""
    _kernels(kernels).launch("ave_pool_forward", y.size, [x, y] + _pool_geometry(op.geometry), x.dtype)


def ave_pool_backward(op, dy, dx, kernels=None):
    """Twin of AveragePooling.backward."""
    _kernels(kernels).launch("ave_pool_backward", dx.size, [dy, dx] + _pool_geometry(op.geometry), dy.dtype)


def lrn_forward(op, x, y, kernels=None):
    """Twin of LRN.forward across channels; scale (and x, if y is x) kept for backward."""
    xp = backend.get_array_module(x)
    k = _kernels(kernels)
    op._saved_x = None
    if y is x:
        op._saved_x = op.workspace.get("x", x.shape, x.dtype, xp)
        xp.copyto(op._saved_x, x)
        x = op._saved_x
    n, c, h, w = x.shape
    scale = op.workspace.get("scale", x.shape, x.dtype, xp)
    k.launch("lrn_scale", n * h * w, [x, scale, c, h * w, op.size, op.alpha / op.size, op.k], x.dtype)
    k.launch("lrn_output", x.size, [x, scale, y, op.beta], x.dtype)


def lrn_backward(op, dy, dx, x, kernels=None):
    """Twin of LRN.backward across channels."""
    xp = backend.get_array_module(dy)
    if op._saved_x is not None:
        x = op._saved_x
    n, c, h, w = x.shape
    scale = op.workspace.get("scale", x.shape, x.dtype, xp)
    _kernels(kernels).launch("lrn_backward", n * h * w, [x, scale, dy, dx, c, h * w, op.size, op.beta,
                                                         2.0 * op.alpha * op.beta / op.size], x.dtype)


def softmax_loss_forward(layer, bottom, top, kernels=None):
    """Twin of SoftmaxWithLoss.forward: softmax, per-position loss and validity in one kernel."""
    xp = layer.xp
    outer, classes, inner = layer.dims
    x = bottom[0].data
    dtype = x.dtype
    prob = top[1].data if len(top) > 1 else _scratch(layer, "_prob_buf", x.shape, dtype, xp)
    label = bottom[1].data.reshape(-1)
    if label.dtype != dtype:
        label = label.astype(dtype)
    loss = _scratch(layer, "_gpu_loss", (outer * inner,), dtype, xp)
    valid = _scratch(layer, "_gpu_valid", (outer * inner,), dtype, xp)
    has_ignore = layer.ignore_label is not None
    _kernels(kernels).launch("softmax_loss_forward", outer * inner,
                             [x, label, prob, loss, valid, classes, inner, int(has_ignore),
                              layer.ignore_label if has_ignore else 0], dtype)
    if bool((valid < 0).any()):
        layer.read_labels(bottom[1])   # raises the layer's error naming the label
    layer._prob = prob.reshape(layer.dims)
    layer._gpu_label, layer._gpu_valid_mask = label, valid
    layer._valid = valid.reshape(outer, inner) if has_ignore else None
    layer._norm = layer.normalizer(layer._valid)
    top[0].data[...] = loss.sum() / layer._norm


def softmax_loss_backward(layer, top, bottom, kernels=None):
    """Twin of SoftmaxWithLoss.backward (after softmax_loss_forward)."""
    xp = layer.xp
    _, classes, inner = layer.dims
    dx = bottom[0].diff
    scale = xp.asarray(top[0].diff / layer._norm, dtype=dx.dtype).reshape(1)
    _kernels(kernels).launch("softmax_loss_backward", dx.size,
                             [layer._prob, layer._gpu_label, layer._gpu_valid_mask, scale, dx, classes, inner],
                             dx.dtype)


def _scratch(owner, name, shape, dtype, xp):
    array = getattr(owner, name, None)
    if array is None or array.shape != tuple(shape) or array.dtype != dtype \
            or backend.get_array_module(array) is not xp:
        array = xp.empty(shape, dtype)
        setattr(owner, name, array)
    return array


def solver_update(solver, rate, kernels=None):
    """Twin of Solver.apply_update after clipping: iter_size scale, weight
    decay, update value and step in one elementwise kernel."""
    p = solver.param
    g, w = solver.net.flat_diff, solver.net.flat_data
    b1, b2, t = p.momentum, p.momentum2, solver.iter + 1
    lr_mult, decay_mult = solver.per_element_mults()
    arrays = {"w": w, "g": g, "lr_mult": lr_mult, "decay_mult": decay_mult}
    for k, h in enumerate(solver.history):
        arrays[f"h{k}"] = h
    scalars = {"gscale": 1.0 / p.iter_size if p.iter_size > 1 else 1.0, "rate": rate,
               "weight_decay": p.weight_decay, "l1": int(p.regularization_type == "L1"),
               "momentum": p.momentum, "momentum2": p.momentum2, "delta": p.delta,
               "rms_decay": p.rms_decay,
               "correction": (1.0 - b2 ** t) ** 0.5 / (1.0 - b1 ** t) if solver.type == "Adam" else 1.0}
    _kernels(kernels).solver(solver.type, arrays, scalars)
