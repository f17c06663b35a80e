"""Recurrent layers: RNN, LSTM and LSTMUnit, with `cont` sequence indicators.

Caffe builds a hidden unrolled net for each recurrent layer. Here the time
loop is written out directly: the input transform of all T steps is one
matrix product, each step is a few batched array operations, and backward
runs through time in the reverse loop. The learnable blobs are the ones
Caffe's unrolled nets own, in the same order and shapes, so trained
.caffemodel weights load unchanged (H = num_output, D = the input size per
step, S = the static input size):

    RNN:  W_xh (H x D), b_h (H), [W_xh_static (H x S)], W_hh (H x H),
          W_ho (H x H), b_o (H)
    LSTM: W_xc (4H x D), b_c (4H), [W_xc_static (4H x S)], W_hc (4H x H)
          (gate rows in the order i, f, o, g)

Bottoms: x (T x N x ...), cont (T x N), an optional static input x_static
(N x ...), and with `expose_hidden` the initial states h_0 (and c_0 for
LSTM), each 1 x N x H. Tops: the output sequence (T x N x H), and with
`expose_hidden` the final states h_T (and c_T).

`cont[t, n] == 0` starts a new sequence in stream n at step t: the previous
hidden state is multiplied by cont (and so is the LSTM forget gate). Without
`expose_hidden` each forward starts where the previous one ended (zeros at
first), as in Caffe, so long sequences can be fed in chunks.

Gradients are exact through the T steps of one forward. One thing goes
beyond Caffe: with `expose_hidden` the gradient also flows from the h_T/c_T
tops into the h_0/c_0 bottoms (Caffe drops both, truncating there).
"""
import logging

import numpy

from .. import backend
from .base import Layer, register
from .lstm_unit import lstm_cell_backward, lstm_cell_forward

log = logging.getLogger("pycaffe_dist")


class _Recurrent(Layer):
    """The shared frame: input transforms, the time loop, the parameter gradients.

    Subclasses name their blobs (`param_names`), the gate width per output
    unit (`gates`), the states carried between steps (`states`), and one
    step forward (`step`) and backward (`step_back`) of the cell.
    """

    gates = 1
    states = ("h",)

    def __init__(self, param, phase=0):
        super().__init__(param, phase)
        exposed = len(self.states) if param.recurrent_param.expose_hidden else 0
        self.exposed = bool(exposed)
        self.min_bottom, self.max_bottom = 2 + exposed, 3 + exposed
        self.exact_num_top = 1 + exposed
        self._carry = None   # states at the end of the previous forward

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1   # cont is an indicator, not an input

    # -- setup and shapes ----------------------------------------------------------
    def layer_setup(self, bottom, top):
        p = self.param.recurrent_param
        if p.num_output <= 0:
            raise self.error("recurrent_param.num_output must be positive")
        self.hidden = int(p.num_output)
        self.has_static = len(bottom) > 2 + (len(self.states) if self.exposed else 0)
        self.first_state_bottom = 3 if self.has_static else 2
        if len(bottom[0].shape) < 2:
            raise self.error("bottom[0] (x) must be T x N x ..., got shape %s" % (bottom[0].shape,))
        names = list(self.param_names)
        if not self.has_static:
            names.remove(self.static_name)
        self.index = {name: i for i, name in enumerate(names)}
        self.slot = {self.roles[name]: i for i, name in enumerate(names)}
        if not self.blobs:   # weights may come from elsewhere (shared, loaded)
            self.blobs = [self.make_blob(self._param_shape(name, bottom),
                                         p.bias_filler if name.startswith("b_") else p.weight_filler)
                          for name in names]
        elif len(self.blobs) != len(names):
            raise self.error("has %d learnable blobs, expected %d (%s)"
                             % (len(self.blobs), len(names), ", ".join(names)))
        self.param_propagate_down = [True] * len(self.blobs)

    def _param_shape(self, name, bottom):
        width, hidden = self.gates * self.hidden, self.hidden
        if name == self.static_name:
            return (width, _size(bottom[2].shape[1:]))
        return {"W_x": (width, _size(bottom[0].shape[2:])), "b_x": (width,), "W_h": (width, hidden),
                "W_ho": (hidden, hidden), "b_o": (hidden,)}[self.roles[name]]

    def blob(self, role):
        """The learnable Blob playing `role` (W_x, b_x, W_static, W_h, W_ho, b_o)."""
        return self.blobs[self.slot[role]]

    def add_gradient(self, role, gradient):
        """blob(role).diff += gradient() where that parameter is learned."""
        if self.param_propagate_down[self.slot[role]]:
            self.blob(role).diff[...] += gradient()

    def reshape(self, bottom, top):
        x, cont = bottom[0].shape, bottom[1].shape
        if len(x) < 2 or cont != x[:2]:
            raise self.error("cont must be T x N for x of shape T x N x ...; got cont %s for x %s"
                             % (cont, x))
        steps, streams = x[:2]
        inputs = self.blob("W_x").shape[1]
        if _size(x[2:]) != inputs:
            raise self.error("x %s has %d inputs per step but W_x takes %d" % (x, _size(x[2:]), inputs))
        if self.has_static:
            s = bottom[2].shape
            if len(s) < 1 or s[0] != streams or _size(s[1:]) != self.blob("W_static").shape[1]:
                raise self.error("x_static %s must be N x ... with N = %d and %d values per stream"
                                 % (s, streams, self.blob("W_static").shape[1]))
        state_shape = (1, streams, self.hidden)
        if self.exposed:
            for k, name in enumerate(self.states):
                given = bottom[self.first_state_bottom + k].shape
                if given != state_shape:
                    raise self.error("bottom %s_0 must have shape %s, got %s" % (name, state_shape, given))
            for t in top[1:]:
                t.reshape(state_shape)
        top[0].reshape((steps, streams, self.hidden))
        self.steps, self.streams = steps, streams

    # -- forward ----------------------------------------------------------------------
    def _initial_states(self, bottom, dtype):
        shape = (self.streams, self.hidden)
        if self.exposed:
            return [bottom[self.first_state_bottom + k].data.reshape(shape)
                    for k in range(len(self.states))]
        if self._carry is not None and all(s.shape == shape for s in self._carry):
            return [s.astype(dtype, copy=False) for s in self._carry]
        return [self.xp.zeros(shape, dtype) for _ in self.states]

    def forward(self, bottom, top):
        xp = self.xp
        steps, streams, hidden = self.steps, self.streams, self.hidden
        width = self.gates * hidden
        x = bottom[0].data.reshape(steps * streams, -1)
        dtype = x.dtype
        # The pre-activations of every step: x and static parts at once, the
        # recurrent part added step by step below.
        pre = (x @ self.blob("W_x").data.T).reshape(steps, streams, width)
        pre += self.blob("b_x").data
        if self.has_static:
            pre += bottom[2].data.reshape(streams, -1) @ self.blob("W_static").data.T
        cont = bottom[1].data.astype(dtype, copy=False)
        self.h_conted = xp.empty((steps, streams, hidden), dtype)
        self.start(steps, streams, dtype)
        w_h = self.blob("W_h").data
        states = self._initial_states(bottom, dtype)
        self.initial = states
        for t in range(steps):
            xp.multiply(states[0], cont[t][:, None], out=self.h_conted[t])
            pre[t] += self.h_conted[t] @ w_h.T
            states = self.step(t, pre[t], cont[t], states)
        self.pre, self.cont = pre, cont
        self.finish(top)
        if self.exposed:
            for t, s in zip(top[1:], states):
                t.data[...] = s.reshape(t.shape)
        else:
            self._carry = [s.copy() for s in states]
        if self.param.recurrent_param.debug_info:
            self._debug("Forward", [("top", n, t.data) for n, t in zip(self.top_names, top)])

    # -- backward ---------------------------------------------------------------------
    def backward(self, top, propagate_down, bottom):
        xp = self.xp
        steps, streams, hidden = self.steps, self.streams, self.hidden
        width = self.gates * hidden
        d_out = self.output_diff(top)             # dL/dh_t from the output path, T x N x H
        d_pre = xp.empty((steps, streams, width), d_out.dtype)
        carry = [t.diff.reshape(streams, hidden) for t in top[1:]] if self.exposed else \
            [xp.zeros((streams, hidden), d_out.dtype) for _ in self.states]
        w_h = self.blob("W_h").data
        for t in range(steps - 1, -1, -1):
            dh = d_out[t] + carry[0]
            others = self.step_back(t, dh, carry[1:], d_pre[t])
            carry = [(d_pre[t] @ w_h) * self.cont[t][:, None]] + others
        self._param_gradients(bottom, d_pre)
        flat = d_pre.reshape(steps * streams, width)
        if propagate_down[0]:
            bottom[0].diff[...] = (flat @ self.blob("W_x").data).reshape(bottom[0].shape)
        if self.has_static and propagate_down[2]:
            bottom[2].diff[...] = (d_pre.sum(axis=0) @ self.blob("W_static").data).reshape(bottom[2].shape)
        if self.exposed:
            for k, d in enumerate(carry):
                if propagate_down[self.first_state_bottom + k]:
                    bottom[self.first_state_bottom + k].diff[...] = d.reshape(1, streams, hidden)
        if self.param.recurrent_param.debug_info:
            self._debug("Backward", [("param", n, self.blobs[i].diff) for n, i in self.index.items()])

    def _param_gradients(self, bottom, d_pre):
        steps, streams, width = d_pre.shape
        flat = d_pre.reshape(steps * streams, width)
        pairs = [("W_x", lambda: flat.T @ bottom[0].data.reshape(steps * streams, -1)),
                 ("b_x", lambda: flat.sum(axis=0)),
                 ("W_h", lambda: flat.T @ self.h_conted.reshape(steps * streams, self.hidden))]
        if self.has_static:
            pairs.append(("W_static", lambda: d_pre.sum(axis=0).T @ bottom[2].data.reshape(streams, -1)))
        for role, gradient in pairs:
            self.add_gradient(role, gradient)

    # -- subclass hooks -----------------------------------------------------------------
    def start(self, steps, streams, dtype):
        """Allocate what `step` stores for backward."""

    def finish(self, top):
        """Write the output sequence into top[0] after the loop."""

    def output_diff(self, top):
        return top[0].diff

    # -- resume and debugging -------------------------------------------------------------
    def get_state(self):
        # The carried states make a resumed run continue to the bit; JSON
        # floats round-trip float32 and float64 exactly.
        if self._carry is None:
            return None
        return [backend.to_host(s).tolist() for s in self._carry]

    def set_state(self, state):
        if state:
            self._carry = [self.xp.asarray(numpy.asarray(s, dtype=self.dtype)) for s in state]

    top_names = property(lambda self: self.output_names + [s + "_T" for s in self.states])

    def _debug(self, direction, entries):
        for kind, name, values in entries:
            log.info("    [%s] Layer %s, %s blob %s %s: %g", direction, self.name, kind, name,
                     "data" if direction == "Forward" else "diff",
                     float(abs(values).mean()) if values.size else 0.0)


def _size(shape):
    return int(numpy.prod(shape, dtype=numpy.int64))


@register
class RNN(_Recurrent):
    """Elman RNN: h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t [+ W_xh_static x_static] + b_h),
    o_t = tanh(W_ho h_t + b_o); the top is o (T x N x H)."""

    type = "RNN"
    param_names = ("W_xh", "b_h", "W_xh_static", "W_hh", "W_ho", "b_o")
    roles = {"W_xh": "W_x", "b_h": "b_x", "W_xh_static": "W_static", "W_hh": "W_h",
             "W_ho": "W_ho", "b_o": "b_o"}
    static_name = "W_xh_static"
    output_names = ["o"]

    def start(self, steps, streams, dtype):
        self.h = self.xp.empty((steps, streams, self.hidden), dtype)

    def step(self, t, pre, cont, states):
        self.xp.tanh(pre, out=self.h[t])
        return [self.h[t]]

    def finish(self, top):
        xp = self.xp
        o = top[0].data
        xp.matmul(self.h, self.blob("W_ho").data.T, out=o)
        o += self.blob("b_o").data
        xp.tanh(o, out=o)

    def output_diff(self, top):
        # Through o = tanh(W_ho h + b_o): collect W_ho, b_o gradients on the way.
        o = top[0].data
        dz = top[0].diff * (1 - o * o)
        flat = dz.reshape(-1, self.hidden)
        self.add_gradient("W_ho", lambda: flat.T @ self.h.reshape(-1, self.hidden))
        self.add_gradient("b_o", lambda: flat.sum(axis=0))
        return dz @ self.blob("W_ho").data

    def step_back(self, t, dh, others, d_pre):
        h = self.h[t]
        self.xp.multiply(dh, 1 - h * h, out=d_pre)
        return []


@register
class LSTM(_Recurrent):
    """Long short-term memory: gates (i, f, o, g) = W_hc (cont_t h_{t-1}) + W_xc x_t
    [+ W_xc_static x_static] + b_c, then the LSTMUnit step; the top is h (T x N x H)."""

    type = "LSTM"
    gates = 4
    states = ("h", "c")
    param_names = ("W_xc", "b_c", "W_xc_static", "W_hc")
    roles = {"W_xc": "W_x", "b_c": "b_x", "W_xc_static": "W_static", "W_hc": "W_h"}
    static_name = "W_xc_static"
    output_names = ["h"]

    def start(self, steps, streams, dtype):
        xp, hidden = self.xp, self.hidden
        self.acts = xp.empty((steps, streams, 4 * hidden), dtype)
        self.c = xp.empty((steps, streams, hidden), dtype)
        self.tanh_c = xp.empty((steps, streams, hidden), dtype)
        self.h = xp.empty((steps, streams, hidden), dtype)

    def step(self, t, pre, cont, states):
        lstm_cell_forward(self.xp, states[1], pre, cont, self.acts[t], self.c[t], self.h[t],
                          self.tanh_c[t])
        return [self.h[t], self.c[t]]

    def finish(self, top):
        top[0].data[...] = self.h

    def step_back(self, t, dh, others, d_pre):
        c_prev = self.c[t - 1] if t > 0 else self.initial[1]
        return [lstm_cell_backward(self.xp, c_prev, self.acts[t], self.tanh_c[t], self.cont[t],
                                   others[0], dh, d_pre)]
