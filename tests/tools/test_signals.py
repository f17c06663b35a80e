"""Caffe's signal behaviour, with real signals sent to a real training process."""
import os
import signal
import subprocess
import sys
import time

from pycaffe_dist.proto import caffe_pb2, io

from .test_train_cli import NET

SOLVER = '''
net: "tiny.prototxt"
base_lr: 0.01 lr_policy: "fixed" display: 200 max_iter: 100000000
snapshot_prefix: "snaps/tiny" random_seed: 5
'''

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def start(tmp_path, *flags):
    (tmp_path / "tiny.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "pycaffe_dist", "train", "--solver", "solver.prototxt", *flags],
                            cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.time() + 60
    while time.time() < deadline:           # wait until iterations are running
        line = proc.stderr.readline()
        lines.append(line)
        if "Iteration 200 " in line:
            return proc, lines
    proc.kill()
    raise AssertionError("training did not start:\n" + "".join(lines))


def finish(proc, lines, timeout=60):
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, "".join(lines) + err


def snapshots(tmp_path):
    folder = tmp_path / "snaps"
    return sorted(os.listdir(folder)) if folder.exists() else []


def test_sigint_stops_cleanly_with_a_final_snapshot(tmp_path):
    proc, lines = start(tmp_path)
    proc.send_signal(signal.SIGINT)
    status, log = finish(proc, lines)
    assert status == 0, log
    assert "Optimization stopped early." in log
    names = snapshots(tmp_path)
    assert len(names) == 2 and names[0].endswith(".caffemodel") and names[1].endswith(".solverstate")
    state = io.read_binary(str(tmp_path / "snaps" / names[1]), caffe_pb2.SolverState)
    assert names[0] == "tiny_iter_%d.caffemodel" % state.iter and state.iter >= 200


def test_sighup_snapshots_and_training_goes_on(tmp_path):
    proc, lines = start(tmp_path)
    proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 30
    while time.time() < deadline and len(snapshots(tmp_path)) < 2:
        time.sleep(0.05)
    assert proc.poll() is None, "SIGHUP must not stop training"
    first = snapshots(tmp_path)
    assert len(first) == 2
    proc.send_signal(signal.SIGINT)
    status, log = finish(proc, lines)
    assert status == 0
    assert len(snapshots(tmp_path)) == 4      # the SIGHUP snapshot and the final one


def test_sigint_none_is_ignored_and_sighup_stop_stops(tmp_path):
    proc, lines = start(tmp_path, "--sigint_effect", "none", "--sighup_effect", "stop")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert proc.poll() is None
    proc.send_signal(signal.SIGHUP)
    status, log = finish(proc, lines)
    assert status == 0 and "Optimization stopped early." in log
