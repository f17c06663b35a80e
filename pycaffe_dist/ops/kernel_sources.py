"""The CUDA C of the CuPy kernels in ops/kernels.py, declared once.

Raw kernels are (signature, source) in RAW_KERNELS; every body walks its
index space with a grid-stride loop, so a C++ compiler can run the same
source as one block of one thread (ops/kernel_check.py). The solver updates
are ElementwiseKernel bodies, one per solver type, in SOLVER_RULES.
"""
import numpy

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
    y[idx] = (h1 > h0 && w1 > w0) ? sum / pool_size : T(0);   // a window past the input: 0""")

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
