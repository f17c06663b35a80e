"""RNN, LSTM, LSTMUnit: forward against step-by-step references, gradients, cont, expose_hidden."""
import numpy
import pytest

from pycaffe_dist.gradient_check import check_gradient
from pycaffe_dist.layers import LayerError
from pycaffe_dist.net import Net, TEST
from pycaffe_dist.proto import io
from tests.layers.test_common import (assert_same_on_both_backends, blob_of, forward, make_layer,
                                      needs_gpu, random_input, tops)

T, N, D, H, S = 4, 3, 2, 3, 5
FILLERS = ('weight_filler { type: "uniform" min: -0.6 max: 0.6 } '
           'bias_filler { type: "uniform" min: -0.3 max: 0.3 }')


def recurrent_layer(kind, expose=False):
    return make_layer('name: "r" type: "%s" recurrent_param { num_output: %d %s %s }'
                      % (kind, H, FILLERS, "expose_hidden: true" if expose else ""))


def sigmoid(x):
    return 1.0 / (1.0 + numpy.exp(-x))


def cont_with_resets():
    cont = numpy.ones((T, N))
    cont[0] = 0
    cont[2, 1] = 0     # stream 1 starts a new sequence at step 2
    return cont


# -- references, one time step and one stream at a time ----------------------------------
def lstm_reference(x, cont, params, static=None, h0=None, c0=None):
    w_xc, b_c = params[0], params[1]
    w_static = params[2] if static is not None else None
    w_hc = params[-1]
    h = numpy.zeros((N, H)) if h0 is None else h0.copy()
    c = numpy.zeros((N, H)) if c0 is None else c0.copy()
    out = numpy.zeros((T, N, H))
    for t in range(T):
        for n in range(N):
            gates = w_xc @ x[t, n].reshape(-1) + b_c + w_hc @ (cont[t, n] * h[n])
            if static is not None:
                gates += w_static @ static[n].reshape(-1)
            i, f, o, g = gates[:H], gates[H:2 * H], gates[2 * H:3 * H], gates[3 * H:]
            c[n] = cont[t, n] * sigmoid(f) * c[n] + sigmoid(i) * numpy.tanh(g)
            h[n] = sigmoid(o) * numpy.tanh(c[n])
            out[t, n] = h[n]
    return out, h, c


def rnn_reference(x, cont, params, static=None, h0=None):
    w_xh, b_h = params[0], params[1]
    w_static = params[2] if static is not None else None
    w_hh, w_ho, b_o = params[-3:]
    h = numpy.zeros((N, H)) if h0 is None else h0.copy()
    out = numpy.zeros((T, N, H))
    for t in range(T):
        for n in range(N):
            a = w_xh @ x[t, n].reshape(-1) + b_h + w_hh @ (cont[t, n] * h[n])
            if static is not None:
                a += w_static @ static[n].reshape(-1)
            h[n] = numpy.tanh(a)
            out[t, n] = numpy.tanh(w_ho @ h[n] + b_o)
    return out, h


REFERENCES = {"LSTM": lstm_reference, "RNN": rnn_reference}


def params_of(layer):
    return [b.data.copy() for b in layer.blobs]


# -- blobs as Caffe's unrolled nets own them -------------------------------------------------
@pytest.mark.parametrize("kind, static, shapes", [
    ("LSTM", False, [(4 * H, D), (4 * H,), (4 * H, H)]),
    ("LSTM", True, [(4 * H, D), (4 * H,), (4 * H, S), (4 * H, H)]),
    ("RNN", False, [(H, D), (H,), (H, H), (H, H), (H,)]),
    ("RNN", True, [(H, D), (H,), (H, S), (H, H), (H, H), (H,)]),
])
def test_learnable_blobs_match_caffe_order_and_shapes(kind, static, shapes):
    layer = recurrent_layer(kind)
    bottom = [blob_of(random_input((T, N, D))), blob_of(cont_with_resets())]
    if static:
        bottom.append(blob_of(random_input((N, S), seed=1)))
    (y,) = forward(layer, bottom, tops())
    assert [b.shape for b in layer.blobs] == shapes
    assert y.shape == (T, N, H)


def test_input_axes_after_the_second_are_flattened():
    layer = recurrent_layer("LSTM")
    x = random_input((T, N, 2, 3))
    forward(layer, [blob_of(x), blob_of(cont_with_resets())], tops())
    assert layer.blobs[0].shape == (4 * H, 6)


# -- forward against the references -------------------------------------------------------------
@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
@pytest.mark.parametrize("static", [False, True])
def test_forward_matches_step_by_step_reference(kind, static):
    layer = recurrent_layer(kind)
    x, cont = random_input((T, N, D)), cont_with_resets()
    bottom = [blob_of(x), blob_of(cont)]
    s = random_input((N, S), seed=1) if static else None
    if static:
        bottom.append(blob_of(s))
    (y,) = forward(layer, bottom, tops())
    expected = REFERENCES[kind](x, cont, params_of(layer), static=s)[0]
    numpy.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_cont_zero_starts_the_stream_afresh(kind):
    # With cont = 0 at step 2, steps 2.. of stream 1 equal a run over those steps alone.
    layer = recurrent_layer(kind)
    x, cont = random_input((T, N, D)), cont_with_resets()
    (y,) = forward(layer, [blob_of(x), blob_of(cont)], tops())
    fresh = recurrent_layer(kind)
    fresh.blobs = layer.blobs
    tail_cont = numpy.ones((2, N))
    tail_cont[0] = 0
    (tail,) = forward(fresh, [blob_of(x[2:]), blob_of(tail_cont)], tops())
    numpy.testing.assert_allclose(y[2:, 1], tail[:, 1], rtol=1e-12)
    assert not numpy.allclose(y[2:, 0], tail[:, 0])   # stream 0 goes on remembering


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_state_carries_over_between_forwards(kind):
    # As in Caffe: without expose_hidden, the next forward starts where the last ended.
    whole = recurrent_layer(kind)
    x = random_input((2 * T, N, D))
    cont = numpy.ones((2 * T, N))
    cont[0] = 0
    pair = recurrent_layer(kind)
    (y_whole,) = forward(whole, [blob_of(x), blob_of(cont)], tops())
    pair.blobs = whole.blobs
    (first,) = forward(pair, [blob_of(x[:T]), blob_of(cont[:T])], tops())
    saved = pair.get_state()
    (second,) = forward(pair, [blob_of(x[T:]), blob_of(cont[T:])], tops())
    numpy.testing.assert_allclose(numpy.concatenate([first, second]), y_whole, rtol=1e-12)
    # A restored layer continues the same way (exact resume).
    restored = recurrent_layer(kind)
    restored.blobs = whole.blobs
    restored.setup([blob_of(x[T:]), blob_of(cont[T:])], tops())
    restored.set_state(saved)
    top = tops()
    restored.reshape([blob_of(x[T:]), blob_of(cont[T:])], top)
    restored.forward([blob_of(x[T:]), blob_of(cont[T:])], top)
    assert numpy.array_equal(top[0].data, second)


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_expose_hidden_takes_and_gives_the_states(kind):
    n_states = 2 if kind == "LSTM" else 1
    layer = recurrent_layer(kind, expose=True)
    x, cont = random_input((T, N, D)), numpy.ones((T, N))
    states0 = [random_input((1, N, H), seed=5 + k) for k in range(n_states)]
    outs = forward(layer, [blob_of(x), blob_of(cont)] + [blob_of(s) for s in states0],
                   tops(1 + n_states))
    expected = REFERENCES[kind](x, cont, params_of(layer), None, *[s[0] for s in states0])
    numpy.testing.assert_allclose(outs[0], expected[0], rtol=1e-12, atol=1e-12)
    for got, want in zip(outs[1:], expected[1:]):
        numpy.testing.assert_allclose(got, want[None], rtol=1e-12, atol=1e-12)
    # The exposed states are not carried: a second forward starts from the bottoms again.
    again = forward(layer, [blob_of(x), blob_of(cont)] + [blob_of(s) for s in states0], tops(1 + n_states))
    numpy.testing.assert_array_equal(again[0], outs[0])


# -- gradients -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
@pytest.mark.parametrize("static", [False, True])
def test_gradient(kind, static):
    layer = recurrent_layer(kind)
    bottom = [blob_of(random_input((T, N, D))), blob_of(cont_with_resets())]
    if static:
        bottom.append(blob_of(random_input((N, S), seed=1)))
    checked = [0, 2] if static else [0]
    assert check_gradient(layer, bottom, tops(), step=1e-4, threshold=1e-6, check_bottom=checked) > 0


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_gradient_with_exposed_hidden_states(kind):
    n_states = 2 if kind == "LSTM" else 1
    layer = recurrent_layer(kind, expose=True)
    cont = cont_with_resets()
    cont[0] = 1   # so the initial states matter
    bottom = [blob_of(random_input((T, N, D))), blob_of(cont), blob_of(random_input((N, S), seed=1))]
    bottom += [blob_of(random_input((1, N, H), seed=5 + k)) for k in range(n_states)]
    checked = [0, 2] + [3 + k for k in range(n_states)]
    check_gradient(layer, bottom, tops(1 + n_states), step=1e-4, threshold=1e-6, check_bottom=checked)


def test_no_gradient_reaches_cont():
    layer = recurrent_layer("LSTM")
    assert not layer.allow_force_backward(1) and layer.allow_force_backward(0)
    assert not make_layer('name: "u" type: "LSTMUnit"').allow_force_backward(2)


# -- LSTMUnit --------------------------------------------------------------------------------------
def unit_bottoms(cont):
    return [blob_of(random_input((1, N, H), seed=2)), blob_of(random_input((1, N, 4 * H), seed=3)),
            blob_of(numpy.asarray(cont, dtype=float).reshape(1, N))]


def test_lstm_unit_forward_matches_reference():
    layer = make_layer('name: "u" type: "LSTMUnit"')
    bottom = unit_bottoms([1, 0, 1])
    c, h = forward(layer, bottom, tops(2))
    c_prev, x, cont = (b.data[0] for b in bottom)
    for n in range(N):
        i, f, o, g = (x[n, k * H:(k + 1) * H] for k in range(4))
        want_c = cont[n] * sigmoid(f) * c_prev[n] + sigmoid(i) * numpy.tanh(g)
        numpy.testing.assert_allclose(c[0, n], want_c, rtol=1e-12)
        numpy.testing.assert_allclose(h[0, n], sigmoid(o) * numpy.tanh(want_c), rtol=1e-12)


def test_lstm_unit_gradient():
    layer = make_layer('name: "u" type: "LSTMUnit"')
    check_gradient(layer, unit_bottoms([1, 0, 1]), tops(2), step=1e-4, threshold=1e-6, check_bottom=[0, 1])


def test_lstm_unit_rejects_shapes_that_do_not_fit():
    layer = make_layer('name: "u" type: "LSTMUnit"')
    bottom = [blob_of(numpy.zeros((1, N, H))), blob_of(numpy.zeros((1, N, 3 * H))), blob_of(numpy.ones((1, N)))]
    with pytest.raises(LayerError, match="want 4H"):
        forward(layer, bottom, tops(2))


def test_bad_cont_shape_names_the_layer():
    with pytest.raises(LayerError, match="'r'.*cont must be T x N"):
        forward(recurrent_layer("RNN"), [blob_of(numpy.zeros((T, N, D))), blob_of(numpy.ones((T, N + 1)))],
                tops())


# -- in a net, and weights round trip ------------------------------------------------------------
NET = '''
name: "seq"
layer { name: "data" type: "Input" top: "x" top: "cont" top: "target"
        input_param { shape { dim: %(T)d dim: %(N)d dim: %(D)d } shape { dim: %(T)d dim: %(N)d }
                      shape { dim: %(T)d dim: %(N)d dim: %(H)d } } }
layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "h"
        recurrent_param { num_output: %(H)d weight_filler { type: "uniform" min: -0.1 max: 0.1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "h" bottom: "target" top: "loss" }
''' % dict(T=T, N=N, D=D, H=H)


def test_lstm_in_a_net_trains_and_its_weights_round_trip(tmp_path):
    param, source = io.parse_net_text(NET)
    net = Net(param, source=source, dtype=numpy.float64)
    net.blobs["x"].data[...] = random_input((T, N, D))
    net.blobs["cont"].data[...] = cont_with_resets()
    net.blobs["target"].data[...] = random_input((T, N, H), seed=4)
    net.forward_backward()
    assert [b.shape for b in net.params["lstm"]] == [(4 * H, D), (4 * H,), (4 * H, H)]
    assert numpy.abs(net.params["lstm"][2].diff).sum() > 0
    path = str(tmp_path / "seq.caffemodel")
    net.save(path)
    other = Net(param, TEST, source=source, dtype=numpy.float64)
    other.copy_from(path)
    for a, b in zip(net.params["lstm"], other.params["lstm"]):
        numpy.testing.assert_array_equal(a.data, b.data)


@needs_gpu
@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_same_on_both_backends(kind):
    text = ('name: "r" type: "%s" recurrent_param { num_output: %d %s }' % (kind, H, FILLERS))
    assert_same_on_both_backends(text, [random_input((T, N, D)), cont_with_resets(),
                                        random_input((N, S), seed=1)], propagate=[True, False, True])
