"""Solvers against closed-form updates on a least-squares problem (as Caffe's solver tests).

The net is MemoryData -> InnerProduct(1) -> EuclideanLoss in float64. The
reference below recomputes every iteration by hand from the formulas in
formats/README.md: gradients of sum((Xw + b - y)^2) / 2B, iter_size
accumulation, weight decay, learning-rate policy, and each update rule.
"""
import numpy
import pytest
from google.protobuf import text_format

from pycaffe_dist import backend
from pycaffe_dist.proto import caffe_pb2
from pycaffe_dist.solvers import Solver

NET = '''
name: "least_squares"
layer { name: "data" type: "MemoryData" top: "data" top: "y"
        memory_data_param { batch_size: %(batch)d channels: %(dim)d height: 1 width: 1 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "pred"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        inner_product_param { num_output: 1
          weight_filler { type: "gaussian" std: 1.0 } bias_filler { type: "gaussian" std: 1.0 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "pred" bottom: "y" top: "loss" }
'''

BATCH, DIM, ITER_SIZE_MAX = 4, 3, 2


def make_solver(solver_type, iters, iter_size=1, weight_decay=0.0, momentum=0.0,
                lr_policy="fixed", extra="", regularization="L2"):
    text = '''
      base_lr: 0.01 lr_policy: "%s" gamma: 0.5 stepsize: 2 power: 0.75
      momentum: %g weight_decay: %g regularization_type: "%s" iter_size: %d
      max_iter: %d type: "%s" random_seed: 1701 display: 0 snapshot_after_train: false
      delta: 1e-8 %s
    ''' % (lr_policy, momentum, weight_decay, regularization, iter_size, iters, solver_type, extra)
    param = text_format.Parse(text, caffe_pb2.SolverParameter())
    net = text_format.Parse(NET % {"batch": BATCH, "dim": DIM}, caffe_pb2.NetParameter())
    param.net_param.CopyFrom(net)
    solver = Solver(param, dtype=numpy.float64)
    rng = numpy.random.default_rng(3)
    n = BATCH * ITER_SIZE_MAX * 2
    X = rng.normal(size=(n, DIM, 1, 1))
    y = rng.normal(size=n)
    solver.net.layers[0].set_input_arrays(X, y)
    return solver, X.reshape(n, DIM), y


def f32(x):
    """Solver settings are proto floats: use the value the file really holds."""
    return float(numpy.float32(x))


def reference(solver_type, iters, X, y, w0, b0, iter_size=1, weight_decay=0.0, momentum=0.0,
              lr_policy="fixed", p=None, regularization="L2"):
    """Closed-form training written from the formulas, independent of the solver code."""
    weight_decay, momentum = f32(weight_decay), f32(momentum)
    base, delta, rms, beta2 = f32(0.01), f32(1e-8), f32(0.98), f32(0.999)
    w, b = w0.astype(numpy.float64).copy(), b0.astype(numpy.float64).copy()
    lr_mult, decay_mult = numpy.array([1.0, 2.0]), numpy.array([1.0, 0.0])
    hist = [[numpy.zeros_like(w), numpy.zeros_like(b)] for _ in range(2)]
    pos = 0
    for it in range(iters):
        gw, gb = numpy.zeros_like(w), numpy.zeros_like(b)
        for _ in range(iter_size):
            Xb, yb = X[pos:pos + BATCH], y[pos:pos + BATCH]
            pos = (pos + BATCH) % len(X)
            r = Xb @ w.T + b - yb[:, None]            # B x 1
            gw += r.T @ Xb / BATCH
            gb += r.sum(axis=0) / BATCH
        rate = {"fixed": base, "step": base * 0.5 ** (it // 2),
                "inv": base * (1 + 0.5 * it) ** -0.75}[lr_policy]
        new = []
        for k, (param, g) in enumerate(((w, gw), (b, gb))):
            g = g / iter_size
            reg = param if regularization == "L2" else numpy.sign(param)
            g = g + weight_decay * decay_mult[k] * reg
            lr = rate * lr_mult[k]
            h1, h2 = hist[0][k], hist[1][k]
            if solver_type == "SGD":
                h1[...] = lr * g + momentum * h1
                step = h1.copy()
            elif solver_type == "Nesterov":
                prev = h1.copy()
                h1[...] = momentum * h1 + lr * g
                step = (1 + momentum) * h1 - momentum * prev
            elif solver_type == "AdaGrad":
                h1 += g * g
                step = lr * g / (numpy.sqrt(h1) + delta)
            elif solver_type == "RMSProp":
                h1[...] = rms * h1 + (1 - rms) * g * g
                step = lr * g / (numpy.sqrt(h1) + delta)
            elif solver_type == "AdaDelta":
                h1[...] = momentum * h1 + (1 - momentum) * g * g
                u = g * numpy.sqrt((h2 + delta) / (h1 + delta))
                h2[...] = momentum * h2 + (1 - momentum) * u * u
                step = lr * u
            elif solver_type == "Adam":
                b1, b2, t = momentum, beta2, it + 1
                h1[...] = b1 * h1 + (1 - b1) * g
                h2[...] = b2 * h2 + (1 - b2) * g * g
                step = lr * numpy.sqrt(1 - b2 ** t) / (1 - b1 ** t) * h1 / (numpy.sqrt(h2) + delta)
            new.append(param - step)
        w, b = new
    return w, b


def initial(solver):
    ip = solver.net.params["ip"]
    return ip[0].data.copy(), ip[1].data.copy()


CASES = [
    ("SGD", dict()),
    ("SGD", dict(momentum=0.9, weight_decay=0.1)),
    ("SGD", dict(momentum=0.5, weight_decay=0.1, iter_size=2, lr_policy="step")),
    ("SGD", dict(weight_decay=0.3, regularization="L1", lr_policy="inv")),
    ("Nesterov", dict(momentum=0.9, weight_decay=0.1, iter_size=2)),
    ("AdaGrad", dict(weight_decay=0.1, iter_size=2)),
    ("RMSProp", dict(weight_decay=0.1)),
    ("AdaDelta", dict(momentum=0.95, weight_decay=0.1, iter_size=2)),
    ("Adam", dict(momentum=0.9, weight_decay=0.1, iter_size=2)),
]


@pytest.mark.parametrize("solver_type,kw", CASES)
def test_matches_closed_form(solver_type, kw):
    extra = "rms_decay: 0.98" if solver_type == "RMSProp" else ""
    iters = 5
    solver, X, y = make_solver(solver_type, iters, extra=extra, **kw)
    w0, b0 = initial(solver)
    solver.step(iters)
    w, b = reference(solver_type, iters, X, y, w0, b0, **kw)
    numpy.testing.assert_allclose(solver.net.params["ip"][0].data, w, rtol=1e-10, atol=1e-12)
    numpy.testing.assert_allclose(solver.net.params["ip"][1].data, b, rtol=1e-10, atol=1e-12)
    assert solver.iter == iters


@pytest.mark.parametrize("solver_type", ["SGD", "Adam", "AdaDelta"])
def test_snapshot_resume_is_bit_exact(solver_type, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    kw = dict(momentum=0.9, weight_decay=0.1, iter_size=2, lr_policy="step")
    straight, _, _ = make_solver(solver_type, 6, **kw)
    straight.step(6)

    first, X, y = make_solver(solver_type, 6, **kw)
    first.param.snapshot_prefix = str(tmp_path / "ls")
    first.step(3)
    model, state = first.snapshot()
    assert model.endswith("ls_iter_3.caffemodel") and state.endswith("ls_iter_3.solverstate")

    backend.set_random_seed(99)   # a different stream: restore must bring the saved one back
    resumed, _, _ = make_solver(solver_type, 6, **kw)
    resumed.restore(state)
    assert resumed.iter == 3
    resumed.step(3)
    for a, b in zip(straight.net.params["ip"], resumed.net.params["ip"]):
        assert numpy.array_equal(a.data, b.data)
    assert numpy.array_equal(straight.history[0], resumed.history[0])


def test_clip_gradients_scales_to_the_threshold():
    solver, X, y = make_solver("SGD", 1)
    solver.param.clip_gradients = 1e-3
    w0, b0 = initial(solver)
    solver.step(1)
    step = numpy.concatenate([(w0 - solver.net.params["ip"][0].data).ravel(),
                              (b0 - solver.net.params["ip"][1].data).ravel() / 2.0])
    # With lr 0.01 and lr_mult (1, 2), the clipped gradient has L2 norm 1e-3.
    assert numpy.linalg.norm(step / f32(0.01)) == pytest.approx(f32(1e-3), rel=1e-9)
