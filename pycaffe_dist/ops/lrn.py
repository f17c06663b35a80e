"""Local response normalization, as Caffe's LRN layer computes it.

Both regions compute y = x * scale^-beta from a window sum of x^2:
  ACROSS_CHANNELS: scale = k + alpha/n * (sum of x^2 over n channels centred on c)
  WITHIN_CHANNEL:  scale = 1 + alpha/n^2 * (sum of x^2 over the n x n box centred
                   on (h, w)); Caffe builds this from square -> AVE pooling with
                   pad (n-1)/2 (whose divisor is always n^2) -> power(shift 1,
                   scale alpha, power -beta) -> product, so k is not used.
Both windows are symmetric and zero padded, so the backward pass is the same
window sum applied to dy * y / scale:
  dx = dy * scale^-beta - (2 alpha beta / window) * x * window_sum(dy * y / scale)
The window sums are slice adds over a zero-bordered buffer: n adds of whole
arrays instead of a loop over positions.
"""
from .. import backend
from . import kernels
from .workspace import Workspace


def negative_power(xp, base, beta, out, scratch):
    """out = base ** -beta, with sqrt-based shortcuts for Caffe's usual betas
    (a general float power is several times slower than sqrt). `scratch` is
    an array like `out`."""
    if beta == 0.75:
        xp.sqrt(base, out=out)
        xp.sqrt(out, out=scratch)
        out *= scratch
        xp.reciprocal(out, out=out)
    elif beta == 0.5:
        xp.sqrt(base, out=out)
        xp.reciprocal(out, out=out)
    elif beta == 1.0:
        xp.reciprocal(base, out=out)
    else:
        xp.power(base, -beta, out=out)
    return out


class LRN:
    """Forward and backward of one LRN configuration, buffers reused."""

    def __init__(self, local_size, alpha, beta, k, across_channels):
        self.size = int(local_size)
        self.alpha, self.beta, self.k = float(alpha), float(beta), float(k)
        self.across_channels = bool(across_channels)
        self.workspace = Workspace()
        self._saved_x = None

    # -- window sums ---------------------------------------------------------------
    def _padded(self, xp, x, name):
        """A zero-bordered buffer for x's window sums, and its interior view."""
        n, c, h, w = x.shape
        pre = (self.size - 1) // 2
        if self.across_channels:
            buf = self.workspace.get(name, (n, c + self.size - 1, h * w), x.dtype, xp, fill=0)
            return buf, buf[:, pre:pre + c].reshape(x.shape)
        buf = self.workspace.get(name, (n * c, h + self.size - 1, w + self.size - 1), x.dtype, xp, fill=0)
        return buf, buf[:, pre:pre + h, pre:pre + w].reshape(x.shape)

    def _window_sum(self, xp, buf, out):
        """out = sum over the window, read from the zero-bordered buffer."""
        n, c, h, w = out.shape
        if self.across_channels:
            total = out.reshape(n, c, h * w)
            xp.copyto(total, buf[:, 0:c])
            for t in range(1, self.size):
                total += buf[:, t:t + c]
            return
        # Separable box: columns first, then rows.
        partial = self.workspace.get("partial", (n * c, h + self.size - 1, w), out.dtype, xp)
        xp.copyto(partial, buf[:, :, 0:w])
        for t in range(1, self.size):
            partial += buf[:, :, t:t + w]
        total = out.reshape(n * c, h, w)
        xp.copyto(total, partial[:, 0:h])
        for t in range(1, self.size):
            total += partial[:, t:t + h]

    def _window(self):
        return self.size if self.across_channels else self.size * self.size

    # -- the op --------------------------------------------------------------------------
    def forward(self, x, y):
        """y = LRN(x); y may be x (in place), in which case x is kept for backward."""
        if self.across_channels and kernels.on_gpu(x):   # CuPy: two kernels (ops/kernels.py)
            return kernels.lrn_forward(self, x, y)
        xp = backend.get_array_module(x)
        self._saved_x = None
        if y is x:
            self._saved_x = self.workspace.get("x", x.shape, x.dtype, xp)
            xp.copyto(self._saved_x, x)
            x = self._saved_x
        buf, interior = self._padded(xp, x, "squares")
        xp.multiply(x, x, out=interior)
        scale = self.workspace.get("scale", x.shape, x.dtype, xp)
        self._window_sum(xp, buf, scale)
        scale *= self.alpha / self._window()
        scale += self.k if self.across_channels else 1.0
        powered = self.workspace.get("powered", x.shape, x.dtype, xp)
        negative_power(xp, scale, self.beta, powered, self.workspace.get("total", x.shape, x.dtype, xp))
        xp.multiply(x, powered, out=y)

    def backward(self, dy, dx, x):
        """dx from dy; `x` is the bottom data of the forward pass (ignored
        after an in-place forward, which kept its own copy)."""
        if self.across_channels and kernels.on_gpu(dy):   # CuPy: one kernel (ops/kernels.py)
            return kernels.lrn_backward(self, dy, dx, x)
        xp = backend.get_array_module(dy)
        if self._saved_x is not None:
            x = self._saved_x
        scale = self.workspace.get("scale", x.shape, x.dtype, xp)
        powered = self.workspace.get("powered", x.shape, x.dtype, xp)
        buf, interior = self._padded(xp, x, "ratios")
        # dy * y / scale, with y recomputed: the top may have been changed in place since.
        xp.multiply(dy, x, out=interior)
        interior *= powered
        interior /= scale
        total = self.workspace.get("total", x.shape, x.dtype, xp)
        self._window_sum(xp, buf, total)
        total *= x
        total *= 2.0 * self.alpha * self.beta / self._window()
        xp.multiply(dy, powered, out=dx)
        dx -= total
