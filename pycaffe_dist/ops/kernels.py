"""CuPy kernels for the ops that pay on a GPU, each with a numpy twin.

The engine runs one xp code path on numpy and CuPy; these kernels replace
that path on CuPy arrays where many small xp calls would each launch a
kernel (pooling's chains, LRN's window sums, the solver's dozen flat-buffer
passes). The numpy twins are the functions the engine runs on CPU:

  kernel                      numpy twin
  im2col / col2im             ops.im2col.Im2col.forward / backward
  max_pool_*                  ops.pooling.MaxPooling.forward / mask / backward
  ave_pool_*                  ops.average_pooling.AveragePooling.forward / backward
  lrn_*                       ops.lrn.LRN (ACROSS_CHANNELS)
  softmax_loss_*              layers.loss.SoftmaxWithLoss.forward / backward
  SOLVER_RULES[type]          solvers.base.Solver.apply_update with solvers.updates.RULES

Each kernel is declared once, here, as CUDA C source plus a signature.
Nothing is compiled at import: a kernel is built on its first call with
CuPy arrays, once per (dtype, device), so a machine without a GPU never
compiles one. Every kernel body walks its index space with a grid-stride
loop, which is also what lets `host_library` build the same sources with a
C++ compiler (one block of one thread) and run them on numpy arrays: the
tests check the kernel code against its twin on machines with no GPU, and
`nvrtc_check` compiles the sources to PTX where NVRTC is installed.
"""
import ctypes
import os
import subprocess
import tempfile

import numpy

from .. import backend

# -- the kernels, declared once -------------------------------------------------------
# (name, signature, source). Signature kinds: "T*" array of the data type,
# "T" scalar of the data type, "i" int32 scalar. "n" is the thread count.
_LOOP = "for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < n; " \
        "idx += (long long)blockDim.x * gridDim.x)"

RAW_KERNELS = {}


def _raw(name, signature, body):
    params = ", ".join(("const T* " if kind == "cT*" else "T* " if kind == "T*" else
                        "const T " if kind == "T" else "const int ") + arg
                       for arg, kind in signature)
    RAW_KERNELS[name] = (signature, f'extern "C" __global__ void {name}(const long long n, {params}) {{\n'
                                    f'  {_LOOP} {{\n{body}\n  }}\n}}\n')


_GEOMETRY = [("H", "i"), ("W", "i"), ("OH", "i"), ("OW", "i"), ("kh", "i"), ("kw", "i"),
             ("sh", "i"), ("sw", "i"), ("ph", "i"), ("pw", "i")]

# One thread per (n, c, oh, ow): its kh*kw column entries.
_raw("im2col", [("x", "cT*"), ("col", "T*")] + _GEOMETRY + [("dh", "i"), ("dw", "i")], """
    const int ow = idx % OW, oh = (idx / OW) % OH;
    const long long nc = idx / ((long long)OW * OH);
    const T* plane = x + nc * H * W;
    T* out = col + nc * kh * kw * OH * OW + oh * OW + ow;
    for (int i = 0; i < kh; ++i) {
      const int h = oh * sh - ph + i * dh;
      for (int j = 0; j < kw; ++j) {
        const int w = ow * sw - pw + j * dw;
        out[(long long)(i * kw + j) * OH * OW] =
            (h >= 0 && h < H && w >= 0 && w < W) ? plane[h * W + w] : T(0);
      }
    }""")

# One thread per input element, gathering every column entry that read it:
# no atomics, and the same order of additions on every run.
_raw("col2im", [("col", "cT*"), ("dx", "T*")] + _GEOMETRY + [("dh", "i"), ("dw", "i")], """
    const int w = idx % W, h = (idx / W) % H;
    const long long nc = idx / ((long long)W * H);
    const T* in = col + nc * kh * kw * OH * OW;
    T sum = 0;
    for (int i = 0; i < kh; ++i) {
      const int hs = h + ph - i * dh;
      if (hs < 0 || hs % sh != 0 || hs / sh >= OH) continue;
      for (int j = 0; j < kw; ++j) {
        const int ws = w + pw - j * dw;
        if (ws < 0 || ws % sw != 0 || ws / sw >= OW) continue;
        sum += in[(long long)(i * kw + j) * OH * OW + (hs / sh) * OW + ws / sw];
      }
    }
    dx[idx] = sum;""")

# One thread per output; the first maximum in row-major order wins (strictly
# greater takes over), as Caffe's loop and the numpy twin do. The mask is
# h * W + w in the unpadded plane, stored in the data type as Caffe's top.
_raw("max_pool_forward", [("x", "cT*"), ("y", "T*"), ("mask", "T*")] + _GEOMETRY, """
    const int ow = idx % OW, oh = (idx / OW) % OH;
    const long long nc = idx / ((long long)OW * OH);
    const int h0 = max(oh * sh - ph, 0), h1 = min(oh * sh - ph + kh, H);
    const int w0 = max(ow * sw - pw, 0), w1 = min(ow * sw - pw + kw, W);
    const T* plane = x + nc * H * W;
    int best = -1;
    T top = 0;
    for (int h = h0; h < h1; ++h)
      for (int w = w0; w < w1; ++w)
        if (best < 0 || plane[h * W + w] > top) { best = h * W + w; top = plane[best]; }
    y[idx] = top;
    mask[idx] = T(best);""")

# One thread per input element: the sum of the gradients of the windows
# whose maximum it was (gathered; windows overlap when stride < kernel).
_raw("max_pool_backward", [("dy", "cT*"), ("mask", "cT*"), ("dx", "T*")] + _GEOMETRY, """
    const int w = idx % W, h = (idx / W) % H;
    const long long nc = idx / ((long long)W * H);
    const int oh0 = (h + ph < kh) ? 0 : (h + ph - kh) / sh + 1, oh1 = min((h + ph) / sh + 1, OH);
    const int ow0 = (w + pw < kw) ? 0 : (w + pw - kw) / sw + 1, ow1 = min((w + pw) / sw + 1, OW);
    const T* g = dy + nc * OH * OW;
    const T* m = mask + nc * OH * OW;
    const T here = T(h * W + w);
    T sum = 0;
    for (int oh = oh0; oh < oh1; ++oh)
      for (int ow = ow0; ow < ow1; ++ow)
        if (m[oh * OW + ow] == here) sum += g[oh * OW + ow];
    dx[idx] = sum;""")

# Caffe's divisor: the window clipped to the padded input (padding counts,
# the overhang past it does not).
_raw("ave_pool_forward", [("x", "cT*"), ("y", "T*")] + _GEOMETRY, """
    const int ow = idx % OW, oh = (idx / OW) % OH;
    const long long nc = idx / ((long long)OW * OH);
    int h0 = oh * sh - ph, w0 = ow * sw - pw;
    int h1 = min(h0 + kh, H + ph), w1 = min(w0 + kw, W + pw);
    const T pool_size = T((h1 - h0) * (w1 - w0));
    h0 = max(h0, 0); w0 = max(w0, 0); h1 = min(h1, H); w1 = min(w1, W);
    const T* plane = x + nc * H * W;
    T sum = 0;
    for (int h = h0; h < h1; ++h)
      for (int w = w0; w < w1; ++w) sum += plane[h * W + w];
    y[idx] = sum / pool_size;""")

_raw("ave_pool_backward", [("dy", "cT*"), ("dx", "T*")] + _GEOMETRY, """
    const int w = idx % W, h = (idx / W) % H;
    const long long nc = idx / ((long long)W * H);
    const int oh0 = (h + ph < kh) ? 0 : (h + ph - kh) / sh + 1, oh1 = min((h + ph) / sh + 1, OH);
    const int ow0 = (w + pw < kw) ? 0 : (w + pw - kw) / sw + 1, ow1 = min((w + pw) / sw + 1, OW);
    const T* g = dy + nc * OH * OW;
    T sum = 0;
    for (int oh = oh0; oh < oh1; ++oh) {
      const int hs = oh * sh - ph, he = min(hs + kh, H + ph);
      for (int ow = ow0; ow < ow1; ++ow) {
        const int ws = ow * sw - pw, we = min(ws + kw, W + pw);
        sum += g[oh * OW + ow] / T((he - hs) * (we - ws));
      }
    }
    dx[idx] = sum;""")

# LRN across channels: one thread per (n, h, w) walks the channels with a
# running window sum of squares (local_size is odd, as Caffe requires).
_raw("lrn_scale", [("x", "cT*"), ("scale", "T*"), ("C", "i"), ("HW", "i"), ("size", "i"),
                   ("alpha_over_size", "T"), ("k", "T")], """
    const long long base = (idx / HW) * C * HW + idx % HW;
    const int pre = (size - 1) / 2;
    T window = 0;
    for (int c = 0; c < pre && c < C; ++c) { const T v = x[base + (long long)c * HW]; window += v * v; }
    for (int c = 0; c < C; ++c) {
      if (c + pre < C) { const T v = x[base + (long long)(c + pre) * HW]; window += v * v; }
      if (c - pre - 1 >= 0) { const T v = x[base + (long long)(c - pre - 1) * HW]; window -= v * v; }
      scale[base + (long long)c * HW] = k + alpha_over_size * window;
    }""")

_raw("lrn_output", [("x", "cT*"), ("scale", "cT*"), ("y", "T*"), ("beta", "T")], """
    y[idx] = x[idx] * pow(scale[idx], -beta);""")

# dx = dy * scale^-beta - (2 alpha beta / size) * x * window_sum(dy * y / scale)
_raw("lrn_backward", [("x", "cT*"), ("scale", "cT*"), ("dy", "cT*"), ("dx", "T*"), ("C", "i"),
                      ("HW", "i"), ("size", "i"), ("beta", "T"), ("ratio", "T")], """
    const long long base = (idx / HW) * C * HW + idx % HW;
    const int pre = (size - 1) / 2;
    T window = 0;
    #define LRN_TERM(c) (dy[base + (long long)(c) * HW] * x[base + (long long)(c) * HW] \\
                         * pow(scale[base + (long long)(c) * HW], -beta - T(1)))
    for (int c = 0; c < pre && c < C; ++c) window += LRN_TERM(c);
    for (int c = 0; c < C; ++c) {
      if (c + pre < C) window += LRN_TERM(c + pre);
      if (c - pre - 1 >= 0) window -= LRN_TERM(c - pre - 1);
      const long long at = base + (long long)c * HW;
      dx[at] = dy[at] * pow(scale[at], -beta) - ratio * x[at] * window;
    }
    #undef LRN_TERM""")

# Softmax with loss, one thread per (outer, inner) position: the softmax over
# the classes, the clamped log loss of the labelled class, and whether the
# position counts (1), is ignored (0) or has a label out of range (-1).
_raw("softmax_loss_forward", [("x", "cT*"), ("label", "cT*"), ("prob", "T*"), ("loss", "T*"),
                              ("valid", "T*"), ("classes", "i"), ("inner", "i"),
                              ("has_ignore", "i"), ("ignore_label", "i")], """
    const long long base = (idx / inner) * classes * inner + idx % inner;
    T top = x[base];
    for (int c = 1; c < classes; ++c) top = max(top, x[base + (long long)c * inner]);
    T sum = 0;
    for (int c = 0; c < classes; ++c) {
      const T e = exp(x[base + (long long)c * inner] - top);
      prob[base + (long long)c * inner] = e;
      sum += e;
    }
    for (int c = 0; c < classes; ++c) prob[base + (long long)c * inner] /= sum;
    const int l = int(label[idx]);
    if (has_ignore && l == ignore_label) { loss[idx] = 0; valid[idx] = 0; }
    else if (l < 0 || l >= classes) { loss[idx] = 0; valid[idx] = -1; }
    else {
      loss[idx] = -log(max(prob[base + (long long)l * inner], T(1.17549435e-38)));
      valid[idx] = 1;
    }""")

# dx = (prob - onehot(label)) * valid * scale[0], one thread per element;
# scale is loss_weight / normalizer, left on the device.
_raw("softmax_loss_backward", [("prob", "cT*"), ("label", "cT*"), ("valid", "cT*"), ("scale", "cT*"),
                               ("dx", "T*"), ("classes", "i"), ("inner", "i")], """
    const long long at = idx % inner + (idx / ((long long)classes * inner)) * inner;
    const int c = (idx / inner) % classes;
    const T hit = (int(label[at]) == c) ? T(1) : T(0);
    dx[idx] = valid[at] > 0 ? (prob[idx] - hit) * scale[0] : T(0);""")

# -- the solver updates: one elementwise kernel per solver type ---------------------------
# Fused: iter_size (and clipping) scale, weight decay with decay_mult (L2 or
# L1), the update value with lr_mult, and the step w -= update. `g` keeps the
# update value afterwards, as the numpy path leaves it.
SOLVER_ARRAYS_IN = ("lr_mult", "decay_mult")
SOLVER_SCALARS = ("gscale", "rate", "weight_decay", "l1", "momentum", "momentum2", "delta",
                  "rms_decay", "correction")
_SOLVER_HEAD = """
    const T grad = g * gscale + weight_decay * decay_mult * (l1 ? T((w > 0) - (w < 0)) : w);
    const T r = rate * lr_mult;
    T u;"""
_SOLVER_TAIL = """
    g = u;
    w -= u;"""
SOLVER_RULES = {
    "SGD": (1, "h0 = r * grad + momentum * h0; u = h0;"),
    "Nesterov": (1, "const T before = h0; h0 = momentum * h0 + r * grad;\n"
                    "    u = (T(1) + momentum) * h0 - momentum * before;"),
    "AdaGrad": (1, "h0 += grad * grad; u = r * grad / (sqrt(h0) + delta);"),
    "RMSProp": (1, "h0 = rms_decay * h0 + (T(1) - rms_decay) * grad * grad;\n"
                   "    u = r * grad / (sqrt(h0) + delta);"),
    "AdaDelta": (2, "h0 = momentum * h0 + (T(1) - momentum) * grad * grad;\n"
                    "    u = grad * sqrt((h1 + delta) / (h0 + delta));\n"
                    "    h1 = momentum * h1 + (T(1) - momentum) * u * u; u *= r;"),
    "Adam": (2, "h0 = momentum * h0 + (T(1) - momentum) * grad;\n"
                "    h1 = momentum2 * h1 + (T(1) - momentum2) * grad * grad;\n"
                "    u = r * correction * h0 / (sqrt(h1) + delta);"),
}


def solver_outputs(solver_type):
    return ("w", "g") + tuple(f"h{k}" for k in range(SOLVER_RULES[solver_type][0]))


def solver_params(solver_type):
    """(in_params, out_params) of the type's ElementwiseKernel."""
    return (", ".join([f"T {a}" for a in SOLVER_ARRAYS_IN]
                      + [f"{'int32' if s == 'l1' else 'T'} {s}" for s in SOLVER_SCALARS]),
            ", ".join(f"T {o}" for o in solver_outputs(solver_type)))


def solver_body(solver_type):
    return _SOLVER_HEAD + "\n    " + SOLVER_RULES[solver_type][1] + _SOLVER_TAIL


# -- launching -------------------------------------------------------------------------
_FLOATS = (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64))
_BLOCK = 256
_MAX_BLOCKS = 65535


def _dtype_name(dtype):
    dtype = numpy.dtype(dtype)
    if dtype == numpy.float32:
        return "float"
    if dtype == numpy.float64:
        return "double"
    raise TypeError(f"GPU kernels take float32 or float64 arrays, not {dtype}")


def module_source(dtype):
    """All raw kernels as one CUDA C source for `dtype`."""
    return f"typedef {_dtype_name(dtype)} T;\n" + "\n".join(src for _, src in RAW_KERNELS.values())


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
    arrays = {"w": w, "g": g, "lr_mult": solver._lr_mult, "decay_mult": solver._decay_mult}
    for k, h in enumerate(solver.history):
        arrays[f"h{k}"] = h
    scalars = {"gscale": 1.0 / p.iter_size if p.iter_size > 1 else 1.0, "rate": rate,
               "weight_decay": p.weight_decay, "l1": int(p.regularization_type == "L1"),
               "momentum": p.momentum, "momentum2": p.momentum2, "delta": p.delta,
               "rms_decay": p.rms_decay,
               "correction": (1.0 - b2 ** t) ** 0.5 / (1.0 - b1 ** t) if solver.type == "Adam" else 1.0}
    _kernels(kernels).solver(solver.type, arrays, scalars)


# -- checking the sources without a GPU ---------------------------------------------------
# Enough of CUDA for a C++ compiler: one block of one thread runs each grid-stride loop whole.
_HOST_PRELUDE = """
#include <cmath>
#include <algorithm>
using std::max; using std::min; using std::pow; using std::exp; using std::log; using std::sqrt;
struct HostIndex { unsigned x, y, z; };
static const HostIndex blockIdx = {0, 0, 0}, threadIdx = {0, 0, 0}, blockDim = {1, 1, 1}, gridDim = {1, 1, 1};
#define __global__
#define __device__
"""


def _host_solver_source(solver_type):
    """An ElementwiseKernel body as a loop: arrays by reference, scalars by value, as CuPy binds them."""
    outs = solver_outputs(solver_type)
    params = ", ".join([f"const T* {a}_" for a in SOLVER_ARRAYS_IN] + [f"T* {o}_" for o in outs]
                       + [f"{'int' if s == 'l1' else 'T'} {s}" for s in SOLVER_SCALARS])
    binds = "".join(f"const T {a} = {a}_[i]; " for a in SOLVER_ARRAYS_IN) + "".join(
        f"T& {o} = {o}_[i]; " for o in outs)
    return (f'extern "C" void {solver_type.lower()}_update(long long n, {params}) {{\n'
            f"  for (long long i = 0; i < n; ++i) {{ {binds}\n{solver_body(solver_type)}\n  }}\n}}\n")


class HostKernels:
    """The same sources built with a C++ compiler and run on numpy arrays
    (serially), for tests and checks on machines without a GPU. With
    `syntax_only` the sources are only checked, and nothing can be launched."""

    def __init__(self, dtype, compiler="g++", syntax_only=False):
        self.dtype = numpy.dtype(dtype)
        source = (_HOST_PRELUDE + module_source(dtype)
                  + "".join(_host_solver_source(s) for s in SOLVER_RULES))
        self._dir = tempfile.TemporaryDirectory(prefix="pycaffe_kernels_")
        src, lib = os.path.join(self._dir.name, "k.cpp"), os.path.join(self._dir.name, "k.so")
        with open(src, "w") as f:
            f.write(source)
        build = ["-fsyntax-only"] if syntax_only else ["-O0", "-shared", "-fPIC", "-o", lib]
        done = subprocess.run([compiler, "-Wall", "-Werror", "-Wno-unused-variable", *build, src],
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{compiler} rejected the kernel sources:\n{done.stderr}")
        self.library = None if syntax_only else ctypes.CDLL(lib)

    def _arg(self, kind, value):
        if kind in ("T*", "cT*"):
            if not (isinstance(value, numpy.ndarray) and value.dtype == self.dtype and value.flags.c_contiguous):
                raise TypeError(f"expected a contiguous {self.dtype} array, got {type(value)}")
            return ctypes.c_void_p(value.ctypes.data)
        if kind == "i":
            return ctypes.c_int(int(value))
        return (ctypes.c_float if self.dtype == numpy.float32 else ctypes.c_double)(value)

    def launch(self, name, n, args, dtype):
        signature, _ = RAW_KERNELS[name]
        getattr(self.library, name)(ctypes.c_longlong(n), *[self._arg(kind, a) for (_, kind), a
                                                              in zip(signature, args)])

    def solver(self, solver_type, arrays, scalars):
        outs = solver_outputs(solver_type)
        args = [self._arg("cT*", arrays[a]) for a in SOLVER_ARRAYS_IN] + \
               [self._arg("T*", arrays[o]) for o in outs] + \
               [self._arg("i" if s == "l1" else "T", scalars[s]) for s in SOLVER_SCALARS]
        getattr(self.library, f"{solver_type.lower()}_update")(ctypes.c_longlong(arrays["w"].size), *args)


def nvrtc_check(arch="compute_75"):
    """Compile every kernel to PTX with NVRTC (no GPU needed; needs the
    cupy-cuda12x and nvidia-cuda-nvrtc-cu12 wheels). Returns {name: PTX
    bytes}; raises RuntimeError with NVRTC's log on an error."""
    from cupy_backends.cuda.libs import nvrtc
    sources = {f"raw_{_dtype_name(d)}": module_source(d) for d in (numpy.float32, numpy.float64)}
    for s in SOLVER_RULES:   # the bodies as CuPy binds them (see _host_solver_source)
        sources[f"{s}_float"] = "typedef float T;\n" + _host_solver_source(s).replace(
            'extern "C" void', 'extern "C" __global__ void')
    sizes = {}
    for name, source in sources.items():
        program = nvrtc.createProgram(source, name + ".cu", [], [])
        try:
            nvrtc.compileProgram(program, [f"-arch={arch}", "--std=c++11"])
            sizes[name] = len(nvrtc.getPTX(program))
        except nvrtc.NVRTCError as e:
            raise RuntimeError(f"NVRTC rejected {name}: {e}\n{nvrtc.getProgramLog(program)}") from None
        finally:
            nvrtc.destroyProgram(program)
    return sizes
