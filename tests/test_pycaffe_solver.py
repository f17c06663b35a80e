"""pycaffe's solver classes on least squares: updates checked against the formulas."""
import os

import numpy
import pytest

import pycaffe_dist as caffe

NET = '''
name: "ls"
layer { name: "input" type: "Input" top: "data" top: "y"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "pred"
        inner_product_param { num_output: 1 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "pred" bottom: "y" top: "loss" }
'''

SOLVER = '''
net: "ls.prototxt"
type: "%s"
base_lr: 0.1
lr_policy: "fixed"
momentum: 0.9
max_iter: 6
display: 0
test_iter: 1
test_interval: 1000
test_initialization: false
snapshot_prefix: "snaps/ls"
random_seed: 3
'''

X = numpy.random.default_rng(0).normal(size=(4, 3)).astype(numpy.float32)
Y = numpy.random.default_rng(1).normal(size=(4, 1)).astype(numpy.float32)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ls.prototxt").write_text(NET)
    for kind in ("SGD", "Nesterov", "Adam"):
        (tmp_path / ("%s.prototxt" % kind)).write_text(SOLVER % kind)
    return tmp_path


def feed(solver):
    for net in [solver.net] + solver.test_nets:
        net.blobs["data"].data[...] = X
        net.blobs["y"].data[...] = Y


def gradient(w, b):
    r = X @ w.T + b - Y                 # EuclideanLoss: sum(r^2) / (2 * batch)
    return r.T @ X / 4, r.sum(0) / 4


def test_sgd_steps_follow_momentum_formula(workdir):
    solver = caffe.SGDSolver("SGD.prototxt")
    feed(solver)
    assert solver.lr == pytest.approx(0.1) and solver.param.base_lr == pytest.approx(0.1)
    w, b = [p.data.astype(numpy.float64).copy() for p in solver.net.params["ip"]]
    hw, hb = numpy.zeros_like(w), numpy.zeros_like(b)
    for _ in range(3):
        gw, gb = gradient(w, b)
        hw, hb = 0.1 * gw + 0.9 * hw, 0.1 * gb + 0.9 * hb
        w, b = w - hw, b - hb
    solver.step(3)
    assert solver.iter == 3
    numpy.testing.assert_allclose(solver.net.params["ip"][0].data, w, rtol=1e-4, atol=1e-6)
    numpy.testing.assert_allclose(solver.net.params["ip"][1].data, b, rtol=1e-4, atol=1e-6)
    # The test net shares the trained weights.
    assert numpy.shares_memory(solver.test_nets[0].params["ip"][0].data, solver.net.params["ip"][0].data)


def test_class_sets_the_rule_and_get_solver_reads_the_type(workdir):
    assert type(caffe.get_solver("Nesterov.prototxt")) is caffe.NesterovSolver
    assert type(caffe.get_solver("Adam.prototxt")) is caffe.AdamSolver
    assert isinstance(caffe.get_solver("SGD.prototxt"), caffe.Solver)
    # AdamSolver on a file that says SGD trains with Adam, as in Caffe.
    solver = caffe.AdamSolver("SGD.prototxt")
    feed(solver)
    w, b = [p.data.astype(numpy.float64).copy() for p in solver.net.params["ip"]]
    gw, _ = gradient(w, b)
    solver.step(1)
    b1, b2 = 0.9, 0.999
    m, v = (1 - b1) * gw, (1 - b2) * gw ** 2
    expected = w - 0.1 * numpy.sqrt(1 - b2) / (1 - b1) * m / (numpy.sqrt(v) + 1e-8)
    numpy.testing.assert_allclose(solver.net.params["ip"][0].data, expected, rtol=1e-4, atol=1e-6)


def test_callbacks_see_gradients_before_the_update(workdir):
    solver = caffe.SGDSolver("SGD.prototxt")
    feed(solver)
    events, grads = [], []

    def on_start():
        events.append("start")

    def on_gradients_ready():
        events.append("ready")
        grads.append(solver.net.params["ip"][0].diff.copy())

    solver.add_callback(on_start, on_gradients_ready)
    w, b = [p.data.astype(numpy.float64).copy() for p in solver.net.params["ip"]]
    solver.step(2)
    assert events == ["start", "ready", "start", "ready"]
    numpy.testing.assert_allclose(grads[0], gradient(w, b)[0], rtol=1e-4, atol=1e-6)


def test_apply_update_and_manual_loop(workdir):
    solver = caffe.SGDSolver("SGD.prototxt")
    feed(solver)
    w, b = [p.data.astype(numpy.float64).copy() for p in solver.net.params["ip"]]
    solver.net.clear_param_diffs()
    solver.net.forward()
    solver.net.backward()
    solver.apply_update()
    assert solver.iter == 0
    numpy.testing.assert_allclose(solver.net.params["ip"][0].data, w - 0.1 * gradient(w, b)[0], rtol=1e-4)


def test_snapshot_restore_solve_and_share_weights(workdir):
    solver = caffe.SGDSolver("SGD.prototxt")
    feed(solver)
    solver.step(2)
    solver.snapshot()
    assert os.path.exists("snaps/ls_iter_2.caffemodel") and os.path.exists("snaps/ls_iter_2.solverstate")
    at_two = solver.net.params["ip"][0].data.copy()
    solver.step(2)
    after = solver.net.params["ip"][0].data.copy()
    solver.restore("snaps/ls_iter_2.solverstate")
    assert solver.iter == 2
    numpy.testing.assert_array_equal(solver.net.params["ip"][0].data, at_two)
    solver.step(2)
    numpy.testing.assert_array_equal(solver.net.params["ip"][0].data, after)
    solver.solve()
    assert solver.iter == solver.param.max_iter == 6
    resumed = caffe.SGDSolver("SGD.prototxt")
    feed(resumed)
    resumed.solve(resume="snaps/ls_iter_2.solverstate")
    assert resumed.iter == 6
    numpy.testing.assert_array_equal(resumed.net.params["ip"][0].data, solver.net.params["ip"][0].data)
    deploy = caffe.Net("ls.prototxt", caffe.TEST)
    solver.share_weights(deploy)
    numpy.testing.assert_array_equal(deploy.params["ip"][0].data, solver.net.params["ip"][0].data)
