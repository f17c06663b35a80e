"""`pycaffe-dist train --workers/--strategy/--deterministic` and parallel_param as the default."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from pycaffe_dist.cli import main

from . import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    helpers.write_dataset(str(tmp_path / "lmdb"), 64)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def solver(workdir, max_iter=20, extra="", **fields):
    return helpers.write_solver(str(workdir), "cli", 4, max_iter, "lmdb", 'snapshot_prefix: "snaps/cli" ' + extra,
                                display=5, **fields)


def test_workers_flag_trains_synchronously_and_the_root_alone_logs_and_snapshots(workdir, capfd):
    os.makedirs("snaps")
    assert main(["train", "--solver", solver(workdir, extra="snapshot: 10"), "--workers", "2"]) == 0
    err = capfd.readouterr().err
    assert "Training with 2 process workers (sync)" in err
    assert len(re.findall(r"Iteration 10 \(", err)) == 1           # one display line: the root's
    assert err.count("Optimization Done.") == 1
    assert sorted(os.listdir("snaps")) == ["cli_iter_10.caffemodel", "cli_iter_10.solverstate",
                                           "cli_iter_20.caffemodel", "cli_iter_20.solverstate"]
    # A parallel run's snapshot resumes in a plain one-worker run.
    assert main(["train", "--solver", solver(workdir, 30), "--snapshot", "snaps/cli_iter_20.solverstate"]) == 0
    assert "Iteration 30, loss" in capfd.readouterr().err


def test_parallel_param_is_the_default_and_flags_override_it(workdir, capfd):
    path = solver(workdir, extra='parallel_param { strategy: "hogwild" workers: 2 }')
    assert main(["train", "--solver", path]) == 0
    assert "Training with 2 process workers (hogwild)" in capfd.readouterr().err
    assert main(["train", "--solver", path, "--mode", "thread"]) == 0
    assert "Training with 2 thread workers (hogwild)" in capfd.readouterr().err
    assert main(["train", "--solver", path, "--strategy", "sync", "--workers", "1", "--deterministic",
                 "--shards", "2"]) == 0
    assert "Training with 1 process worker (sync, deterministic, 2 shards)" in capfd.readouterr().err


def test_conflicting_settings_and_failing_workers_are_one_line_errors(workdir, capfd):
    path = solver(workdir)
    assert main(["train", "--solver", path, "--workers", "2", "--strategy", "hogwild", "--deterministic"]) == 1
    assert "pycaffe-dist train: error: hogwild updates without locks" in capfd.readouterr().err
    assert main(["train", "--solver", path, "--strategy", "ring"]) == 2
    with open("cli_net.prototxt", "a") as f:
        f.write('layer { name: "bad" type: "NoSuchLayer" top: "bad" }\n')
    assert main(["train", "--solver", path, "--workers", "2"]) == 1
    assert re.search(r"pycaffe-dist train: error: worker 0 raised NetError: .*cli_net.prototxt:\d+:\d+: "
                     r"layer 'bad': unknown layer type 'NoSuchLayer'", capfd.readouterr().err)


def children_of(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(entry))
    return kids


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to find the worker processes")
def test_ctrl_c_stops_every_worker_snapshots_once_and_exits_cleanly(workdir):
    path = solver(workdir, 10 ** 7, snapshot_after_train="true")
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "pycaffe_dist", "train", "--solver", path, "--workers", "2"],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        for _ in range(600):
            workers = [k for k in children_of(proc.pid) if "spawn_main" in open("/proc/%d/cmdline" % k).read()]
            if len(workers) == 2:
                break
            time.sleep(0.05)
        time.sleep(1.5)                               # let them build their nets and train a little
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Optimization stopped early." in err
    snapshots = [n for n in os.listdir("snaps") if n.endswith(".caffemodel")]
    assert len(snapshots) == 1
    assert not helpers.processes_alive(workers)
