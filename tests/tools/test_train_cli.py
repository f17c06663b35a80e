"""`pycaffe-dist train|test|time` run in-process and as a real command."""
import os
import re
import subprocess
import sys

import numpy
import pytest

from pycaffe_dist import Net, TEST
from pycaffe_dist.cli import main
from pycaffe_dist.proto import caffe_pb2, io

NET = '''
name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 8 dim: 6 } shape { dim: 8 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip1" bottom: "label" top: "acc" include { phase: TEST } }
'''

SOLVER = '''
net: "tiny.prototxt"
test_iter: 2 test_interval: 10
base_lr: 0.1 momentum: 0.9 lr_policy: "step" gamma: 0.5 stepsize: 10
display: 5 max_iter: 20 snapshot: 10 snapshot_prefix: "snaps/tiny" random_seed: 5
'''


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    (tmp_path / "tiny.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_train_logs_caffe_lines_and_writes_snapshots(workdir, capsys):
    assert main(["train", "--solver", "solver.prototxt"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"Iteration 5 \([0-9.e+-]+ iter/s, [0-9.]+s/5 iters\), loss = [0-9.e-]+", err)
    assert re.search(r"Iteration 10, lr = 0\.05\b", err)
    assert "Iteration 10, Testing net (#0)" in err
    assert re.search(r"Test net output #0: loss = [0-9.e-]+ \(\* 1 = [0-9.e-]+ loss\)", err)
    assert re.search(r"Test net output #1: acc = 1\b", err)
    assert "Optimization Done." in err
    names = sorted(os.listdir(workdir / "snaps"))
    assert names == ["tiny_iter_10.caffemodel", "tiny_iter_10.solverstate",
                     "tiny_iter_20.caffemodel", "tiny_iter_20.solverstate"]
    state = io.read_binary(str(workdir / "snaps/tiny_iter_10.solverstate"), caffe_pb2.SolverState)
    assert state.iter == 10 and state.learned_net.endswith("tiny_iter_10.caffemodel")
    assert len(state.history) == 2


def test_resume_from_snapshot_reaches_the_same_weights(workdir):
    assert main(["train", "-solver", "solver.prototxt"]) == 0
    straight = io.read_binary("snaps/tiny_iter_20.caffemodel", caffe_pb2.NetParameter)
    os.remove("snaps/tiny_iter_20.caffemodel")
    assert main(["train", "-solver", "solver.prototxt", "-snapshot", "snaps/tiny_iter_10.solverstate"]) == 0
    resumed = io.read_binary("snaps/tiny_iter_20.caffemodel", caffe_pb2.NetParameter)
    assert straight.SerializeToString() == resumed.SerializeToString()


def test_weights_fine_tune_and_test_command(workdir, capsys):
    assert main(["train", "--solver", "solver.prototxt"]) == 0
    net = Net("tiny.prototxt", TEST, weights="snaps/tiny_iter_20.caffemodel")
    w = net.params["ip1"][0].data.copy()
    capsys.readouterr()
    assert main(["test", "--model", "tiny.prototxt", "--weights", "snaps/tiny_iter_20.caffemodel",
                 "--iterations", "3"]) == 0
    err = capsys.readouterr().err
    assert "Batch 2, acc = 1" in err and re.search(r"\] acc = 1\n", err)
    assert main(["train", "--solver", "solver.prototxt", "--weights", "snaps/tiny_iter_20.caffemodel"]) == 0
    assert "Finetuning from snaps/tiny_iter_20.caffemodel" in capsys.readouterr().err
    assert w.shape == (3, 6)


def test_time_prints_per_layer_and_averages(workdir, capsys):
    assert main(["time", "--model", "tiny.prototxt", "--iterations", "3"]) == 0
    err = capsys.readouterr().err
    for layer in ("data", "ip1", "loss"):
        assert re.search(r"%s\tforward: [0-9.]+ ms\." % layer, err)
        assert re.search(r"%s\tbackward: [0-9.]+ ms\." % layer, err)
    assert "Average Forward-Backward:" in err and "Total Time:" in err


@pytest.mark.parametrize("argv,expected", [
    (["train"], "the following arguments are required: -solver/--solver"),
    (["train", "--solver", "missing.prototxt"], "missing.prototxt: no such file"),
    (["train", "--solver", "tiny.prototxt"], "has no field named"),
    (["train", "--solver", "solver.prototxt", "--weights", "a", "--snapshot", "b"], "not both"),
    (["test", "--model", "tiny.prototxt", "--weights", "nope.caffemodel"], "nope.caffemodel: no such file"),
    (["frobnicate"], "unknown command"),
])
def test_user_mistakes_give_one_line_and_nonzero_status(workdir, capsys, argv, expected):
    status = main(argv)
    assert status != 0
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_bad_layer_type_is_reported_with_position(workdir, capsys):
    (workdir / "tiny.prototxt").write_text(NET.replace('"InnerProduct"', '"InnerProdcut"'))
    assert main(["train", "--solver", "solver.prototxt"]) == 1
    err = capsys.readouterr().err
    assert "tiny.prototxt:6:" in err and "unknown layer type 'InnerProdcut'" in err


def test_console_script_runs_as_a_process(workdir):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    done = subprocess.run([sys.executable, "-m", "pycaffe_dist", "train", "--solver", "solver.prototxt"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^I\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ \w+\.py:\d+\] Iteration 20, loss = ", done.stderr, re.M)
    assert numpy.isfinite(float(re.findall(r"Iteration 20, loss = ([0-9.e+-]+)", done.stderr)[0]))
