"""LSTMUnit, one LSTM time step, and the cell arithmetic the LSTM layer reuses.

The gate pre-activations come as one 4H-wide vector per stream in Caffe's
order i, f, o, g; `cont` = 0 drops the previous cell state (a new sequence).
"""
from .base import Layer, register


def sigmoid(xp, x, out):
    """out = 1 / (1 + exp(-x)); the tanh form never overflows."""
    xp.multiply(x, 0.5, out=out)
    xp.tanh(out, out=out)
    out *= 0.5
    out += 0.5
    return out


# -- the LSTM cell, shared by LSTMUnit and LSTM -------------------------------------
def lstm_cell_forward(xp, c_prev, gates, cont, acts, c, h, tanh_c):
    """One LSTM step on (M, H) states and (M, 4H) gate pre-activations.

    i, f, o = sigmoid; g = tanh; c = cont * f * c_prev + i * g; h = o * tanh(c).
    `acts` receives (i, f, o, g) with f *before* the cont factor, which
    backward needs; `tanh_c` keeps tanh(c).
    """
    hidden = c_prev.shape[-1]
    sigmoid(xp, gates[:, :3 * hidden], acts[:, :3 * hidden])
    xp.tanh(gates[:, 3 * hidden:], out=acts[:, 3 * hidden:])
    i, f, o, g = (acts[:, k * hidden:(k + 1) * hidden] for k in range(4))
    xp.multiply(f, c_prev, out=c)
    c *= cont[:, None]
    c += i * g
    xp.tanh(c, out=tanh_c)
    xp.multiply(o, tanh_c, out=h)


def lstm_cell_backward(xp, c_prev, acts, tanh_c, cont, dc, dh, dgates):
    """Gradients of one step: fills `dgates` (M, 4H); returns d c_prev.

    `dc` and `dh` are the gradients reaching c and h from above; dc is not
    modified.
    """
    hidden = c_prev.shape[-1]
    i, f, o, g = (acts[:, k * hidden:(k + 1) * hidden] for k in range(4))
    d_i, d_f, d_o, d_g = (dgates[:, k * hidden:(k + 1) * hidden] for k in range(4))
    dc_total = dc + dh * o * (1 - tanh_c * tanh_c)
    kept = cont[:, None]
    xp.multiply(dc_total * g, i * (1 - i), out=d_i)
    xp.multiply(dc_total * c_prev * kept, f * (1 - f), out=d_f)
    xp.multiply(dh * tanh_c, o * (1 - o), out=d_o)
    xp.multiply(dc_total * i, 1 - g * g, out=d_g)
    return dc_total * f * kept


@register
class LSTMUnit(Layer):
    """One LSTM step: bottoms c_prev (1 x N x H), gate inputs (1 x N x 4H, order
    i, f, o, g) and cont (1 x N); tops c and h (1 x N x H). cont = 0 drops
    c_prev. No gradient reaches cont."""

    type = "LSTMUnit"
    exact_num_bottom = 3
    exact_num_top = 2

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2

    def reshape(self, bottom, top):
        c_prev, gates, cont = (b.shape for b in bottom)
        if len(c_prev) != 3 or len(gates) != 3 or len(cont) != 2:
            raise self.error("bottoms must be c_prev (1 x N x H), gate inputs (1 x N x 4H) and "
                             "cont (1 x N); got %s, %s and %s" % (c_prev, gates, cont))
        if gates[:2] != c_prev[:2] or cont != c_prev[:2] or gates[2] != 4 * c_prev[2]:
            raise self.error("shapes do not fit: c_prev %s, gate inputs %s (want 4H = %d), cont %s"
                             % (c_prev, gates, 4 * c_prev[2], cont))
        for t in top:
            t.reshape(c_prev)

    def _flat(self, bottom):
        m, hidden = bottom[0].shape[0] * bottom[0].shape[1], bottom[0].shape[2]
        return (m, hidden, bottom[0].data.reshape(m, hidden), bottom[1].data.reshape(m, 4 * hidden),
                bottom[2].data.reshape(m))

    def forward(self, bottom, top):
        m, hidden, c_prev, gates, cont = self._flat(bottom)
        xp = self.xp
        if getattr(self, "_acts", None) is None or self._acts.shape != (m, 4 * hidden):
            self._acts = xp.empty((m, 4 * hidden), gates.dtype)
            self._tanh_c = xp.empty((m, hidden), gates.dtype)
        lstm_cell_forward(xp, c_prev, gates, cont, self._acts, top[0].data.reshape(m, hidden),
                          top[1].data.reshape(m, hidden), self._tanh_c)

    def backward(self, top, propagate_down, bottom):
        if not (propagate_down[0] or propagate_down[1]):
            return
        m, hidden, c_prev, _, cont = self._flat(bottom)
        dgates = bottom[1].diff.reshape(m, 4 * hidden)
        dc_prev = lstm_cell_backward(self.xp, c_prev, self._acts, self._tanh_c, cont,
                                     top[0].diff.reshape(m, hidden), top[1].diff.reshape(m, hidden),
                                     dgates)
        if propagate_down[0]:
            bottom[0].diff[...] = dc_prev.reshape(bottom[0].shape)
        if not propagate_down[1]:
            dgates[...] = 0
