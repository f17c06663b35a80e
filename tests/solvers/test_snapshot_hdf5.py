"""snapshot_format: HDF5: Caffe's file layout, and a resume that continues to the bit."""
import numpy
import pytest

from pycaffe_dist import backend
from pycaffe_dist.net import Net
from pycaffe_dist.proto import caffe_pb2
from pycaffe_dist.proto.errors import ProtoError
from tests.solvers.test_least_squares import make_solver

h5py = pytest.importorskip("h5py")

KW = dict(momentum=0.9, weight_decay=0.1, iter_size=2, lr_policy="step")


def hdf5_solver(solver_type, tmp_path, diff=False):
    solver, _, _ = make_solver(solver_type, 6, **KW)
    solver.param.snapshot_format = caffe_pb2.SolverParameter.HDF5
    solver.param.snapshot_prefix = str(tmp_path / "ls")
    solver.param.snapshot_diff = diff
    return solver


def test_files_have_caffes_layout(tmp_path):
    solver = hdf5_solver("Adam", tmp_path, diff=True)
    solver.step(2)
    model, state = solver.snapshot()
    assert model == str(tmp_path / "ls_iter_2.caffemodel.h5")
    assert state == str(tmp_path / "ls_iter_2.solverstate.h5")
    weights, bias = solver.net.params["ip"]
    with h5py.File(model, "r") as f:
        numpy.testing.assert_array_equal(f["data/ip/0"][()], weights.data)
        numpy.testing.assert_array_equal(f["data/ip/1"][()], bias.data)
        numpy.testing.assert_array_equal(f["diff/ip/0"][()], weights.diff)
    with h5py.File(state, "r") as f:
        assert f["iter"][()] == 2 and f["iter"].shape == () and f["iter"].dtype == numpy.int32
        assert f["current_step"][()] == solver.lr_state["current_step"]
        assert f["learned_net"][()] == model.encode()
        assert sorted(f["history"], key=int) == ["0", "1", "2", "3"]   # Adam: m and v per blob
        assert f["history/0"].shape == weights.shape and f["history/3"].shape == bias.shape
        numpy.testing.assert_array_equal(f["history/2"][()], solver.history[1][:weights.count].reshape(weights.shape))


@pytest.mark.parametrize("solver_type", ["SGD", "Adam", "AdaDelta"])
def test_snapshot_resume_is_bit_exact(solver_type, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    straight, _, _ = make_solver(solver_type, 6, **KW)
    straight.step(6)

    first = hdf5_solver(solver_type, tmp_path)
    first.step(3)
    _, state = first.snapshot()

    backend.set_random_seed(99)   # a different stream: restore must bring the saved one back
    resumed, _, _ = make_solver(solver_type, 6, **KW)
    resumed.restore(state)
    assert resumed.iter == 3
    resumed.step(3)
    for a, b in zip(straight.net.params["ip"], resumed.net.params["ip"]):
        assert numpy.array_equal(a.data, b.data)
    for a, b in zip(straight.history, resumed.history):
        assert numpy.array_equal(a, b)


def test_net_loads_hdf5_weights_by_copy_from(tmp_path):
    solver = hdf5_solver("SGD", tmp_path)
    solver.step(1)
    model, _ = solver.snapshot()
    net = Net(solver.param.net_param, dtype=numpy.float64)
    net.copy_from(model)
    for a, b in zip(solver.net.params["ip"], net.params["ip"]):
        numpy.testing.assert_array_equal(a.data, b.data)
    with pytest.raises(ProtoError, match="no such file"):
        net.copy_from(str(tmp_path / "missing.caffemodel.h5"))


def test_history_count_mismatch_is_named(tmp_path):
    solver = hdf5_solver("Adam", tmp_path)
    solver.step(1)
    _, state = solver.snapshot()
    sgd, _, _ = make_solver("SGD", 6, **KW)
    with pytest.raises(ProtoError, match="holds 4 history blobs, but a SGD solver on this net needs 2"):
        sgd.restore(state)
