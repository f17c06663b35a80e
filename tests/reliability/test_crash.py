"""Crash safety: SIGKILL at random moments, and a disk that fills while snapshotting."""
import errno
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from pycaffe_dist import Net, TEST
from pycaffe_dist.cli import main
from pycaffe_dist.proto import caffe_pb2, io

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A wide input so that each snapshot takes a visible share of the time (fsync included)
# and the kills land inside write_atomic often.
NET = '''
name: "wide"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 4 dim: %d } shape { dim: 4 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }
'''

SOLVER = '''
net: "wide.prototxt"
base_lr: 0.01 momentum: 0.9 lr_policy: "fixed" display: 1 max_iter: %d
snapshot: %d snapshot_prefix: "snaps/wide" random_seed: 5
'''


def setup(folder, width=20000, max_iter=100000000, snapshot=1):
    (folder / "wide.prototxt").write_text(NET % width)
    (folder / "solver.prototxt").write_text(SOLVER % (max_iter, snapshot))


def train(folder, *flags):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.Popen([sys.executable, "-m", "pycaffe_dist", "train", "--solver", "solver.prototxt", *flags],
                            cwd=folder, env=env, stderr=subprocess.PIPE, text=True)


def wait_for_training(proc):
    deadline = time.time() + 60
    while time.time() < deadline:
        line = proc.stderr.readline()
        if "] Iteration " in line or not line:
            return
    proc.kill()
    raise AssertionError("training did not start")


def finals(folder):
    """Snapshots under their final names; temp files start with '.' and end with '.tmp'."""
    names = os.listdir(folder) if folder.exists() else []
    return sorted(n for n in names if not n.startswith("."))


def test_sigkill_at_random_moments_leaves_every_snapshot_loadable(tmp_path):
    setup(tmp_path)
    snaps = tmp_path / "snaps"
    rng = random.Random(9)
    leftovers = set()
    for _ in range(20):
        resume = sorted((n for n in finals(snaps) if n.endswith(".solverstate")),
                        key=lambda n: int(n.split("_iter_")[1].split(".")[0]))
        flags = ["--snapshot", str(snaps / resume[-1])] if resume else []
        proc = train(tmp_path, *flags)
        wait_for_training(proc)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        leftovers.update(n for n in os.listdir(snaps) if n.endswith(".tmp"))
        for name in finals(snaps):
            assert name.endswith((".caffemodel", ".solverstate")), name
            if name.endswith(".caffemodel"):
                net = Net(str(tmp_path / "wide.prototxt"), TEST)
                net.copy_from(str(snaps / name))
            else:
                state = io.read_binary(str(snaps / name), caffe_pb2.SolverState)
                assert (tmp_path / state.learned_net).exists(), name    # the weights it names were written first
    states = [n for n in finals(snaps) if n.endswith(".solverstate")]
    assert len(states) > 20
    # A temp file from a kill mid-write is never taken for a snapshot: the run above
    # resumed from the newest final name each time, and one more resume finishes cleanly.
    newest = max(states, key=lambda n: int(n.split("_iter_")[1].split(".")[0]))
    it = io.read_binary(str(snaps / newest), caffe_pb2.SolverState).iter
    setup(tmp_path, max_iter=it + 2)
    proc = train(tmp_path, "--snapshot", str(snaps / newest))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Optimization Done." in err
    print("temp files left by kills mid-write:", len(leftovers))


def test_injected_enospc_gives_one_line_and_keeps_the_previous_snapshot(tmp_path, monkeypatch, capsys):
    setup(tmp_path, width=6, max_iter=20, snapshot=10)
    monkeypatch.chdir(tmp_path)
    real_fdopen = os.fdopen
    writes = []

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, payload):
            writes.append(len(payload))
            if len(writes) > 2:       # the first snapshot (.caffemodel, .solverstate) fits
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(payload)

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(io.os, "fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, mode)))
    status = main(["train", "--solver", "solver.prototxt"])
    monkeypatch.setattr(io.os, "fdopen", real_fdopen)
    err = capsys.readouterr().err
    assert status == 1
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last == "pycaffe-dist train: error: snaps/wide_iter_20.caffemodel: No space left on device"
    assert sorted(os.listdir("snaps")) == ["wide_iter_10.caffemodel", "wide_iter_10.solverstate"]
    Net("wide.prototxt", TEST).copy_from("snaps/wide_iter_10.caffemodel")
    setup(tmp_path, width=6, max_iter=12, snapshot=0)
    assert main(["train", "--solver", "solver.prototxt", "--snapshot", "snaps/wide_iter_10.solverstate"]) == 0


def test_a_full_tmpfs_gives_one_line_and_keeps_the_previous_snapshot(tmp_path):
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(snaps)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here; the injected ENOSPC test covers this")
    try:
        # 6000 weights: 24 KB per .caffemodel and per .solverstate; one snapshot fits in 64 KB, two do not.
        setup(tmp_path, width=2000, max_iter=20, snapshot=10)
        proc = train(tmp_path)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, err
        assert "Traceback" not in err
        assert err.strip().splitlines()[-1].startswith("pycaffe-dist train: error: snaps/wide_iter_20.")
        assert err.strip().endswith("No space left on device")
        assert finals(snaps) == ["wide_iter_10.caffemodel", "wide_iter_10.solverstate"]
        assert not [n for n in os.listdir(snaps) if n.endswith(".tmp")]
        Net(str(tmp_path / "wide.prototxt"), TEST).copy_from(str(snaps / "wide_iter_10.caffemodel"))
        state = io.read_binary(str(snaps / "wide_iter_10.solverstate"), caffe_pb2.SolverState)
        assert state.iter == 10
    finally:
        subprocess.run(["umount", str(snaps)], check=False)
