"""A failing, killed or orphaned worker stops the whole run, names the rank, and leaves no process."""
import functools
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from pycaffe_dist import parallel
from pycaffe_dist.parallel import WorkerError

from . import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return helpers.write_dataset(str(tmp_path_factory.mktemp("shutdown_data") / "lmdb"), 64)


def wait_for_pids(folder, count, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = helpers.read_pids(folder, count)
        if pids:
            return pids
        time.sleep(0.05)
    raise AssertionError("the workers never started")


def wait_gone(pids, timeout=10):
    deadline = time.monotonic() + timeout
    while helpers.processes_alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return helpers.processes_alive(pids)


@pytest.mark.parametrize("strategy", ["sync", "hogwild"])
def test_a_worker_process_that_raises_stops_the_run_and_is_named(tmp_path, data, strategy):
    folder = str(tmp_path)
    path = helpers.write_solver(folder, "s", 4, 100000, data)
    setup = functools.partial(helpers.fail_on_rank, 1, 3, folder)
    with pytest.raises(WorkerError) as caught:
        parallel.train(path, workers=3, strategy=strategy, mode="process", setup=setup)
    assert caught.value.rank == 1
    assert str(caught.value) == "worker 1 raised ValueError: boom at iteration 3"
    assert "in on_start" in caught.value.details        # the worker's own traceback
    assert not helpers.processes_alive(helpers.read_pids(folder, 3))


def test_a_hogwild_thread_that_raises_stops_the_others(tmp_path, data):
    folder = str(tmp_path)
    path = helpers.write_solver(folder, "s", 4, 100000, data)
    before = threading.active_count()
    with pytest.raises(WorkerError, match="worker 1 raised ValueError: boom at iteration 3"):
        parallel.train(path, workers=2, strategy="hogwild", setup=functools.partial(helpers.fail_on_rank, 1, 3, folder))
    time.sleep(0.2)
    assert not [t for t in threading.enumerate() if t.name.startswith("pycaffe-dist-worker")]
    assert threading.active_count() <= before + 2     # at most the data layers' daemon prefetchers


@pytest.mark.parametrize("strategy", ["sync", "hogwild"])
def test_a_killed_worker_stops_the_run_with_a_clear_message(tmp_path, data, strategy):
    folder = str(tmp_path)
    path = helpers.write_solver(folder, "s", 4, 10 ** 7, data)
    outcome = {}

    def run():
        try:
            parallel.train(path, workers=2, strategy=strategy, mode="process",
                           setup=functools.partial(helpers.record_pid, folder))
        except WorkerError as e:
            outcome["error"] = e

    runner = threading.Thread(target=run)
    runner.start()
    pids = wait_for_pids(folder, 2)
    time.sleep(0.3)                            # let them train
    os.kill(pids[1], signal.SIGKILL)
    runner.join(30)
    assert not runner.is_alive()
    error = outcome["error"]
    assert error.rank == 1 and str(error) == "worker 1 (pid %d) was killed by SIGKILL" % pids[1]
    assert not helpers.processes_alive(pids)


def test_a_bad_net_is_reported_once_with_its_position(tmp_path, caplog):
    folder = str(tmp_path)
    net = os.path.join(folder, "bad.prototxt")
    with open(net, "w") as f:
        f.write('layer { name: "x" type: "NoSuchLayer" top: "x" }\n')
    path = os.path.join(folder, "solver.prototxt")
    with open(path, "w") as f:
        f.write(helpers.solver_text(net, 10))
    # Every worker builds the net and fails alike; the launcher names the
    # first report (rank 0's usually, rank 1's when rank 0's interpreter starts
    # late on a busy machine) and waits no longer than its grace for others.
    with caplog.at_level(logging.ERROR, logger="pycaffe_dist"):
        with pytest.raises(WorkerError, match=r"^worker [01] raised NetError: .*bad.prototxt:1:.*unknown layer type"):
            parallel.train(path, workers=2)
    # A user's mistake is said once, by the error; no worker traceback is logged.
    assert not [r for r in caplog.records if "failed:" in r.getMessage() or "Traceback" in r.getMessage()]


ORPHAN = '''
import functools, sys
sys.path.insert(0, %(root)r)
from pycaffe_dist import parallel
from tests.parallel import helpers
if __name__ == "__main__":
    parallel.train(%(path)r, workers=2, setup=functools.partial(helpers.record_pid, %(folder)r))
'''


def test_workers_do_not_outlive_a_killed_parent(tmp_path, data):
    folder = str(tmp_path)
    path = helpers.write_solver(folder, "s", 4, 10 ** 7, data)
    script = os.path.join(folder, "parent.py")
    with open(script, "w") as f:
        f.write(ORPHAN % {"root": ROOT, "path": path, "folder": folder})
    parent = subprocess.Popen([sys.executable, script], stderr=subprocess.DEVNULL)
    try:
        pids = wait_for_pids(folder, 2)
        parent.kill()
        parent.wait()
        assert not wait_gone(pids)
    finally:
        parent.kill()
