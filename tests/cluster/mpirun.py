"""Run a real `mpiexec -n N` job from a test, with a deadline so nothing hangs CI."""
import os
import shutil
import signal
import subprocess
import sys

import pytest

from pycaffe_dist.parallel import mpi

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROGRAMS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "programs")


def mpiexec_path():
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return beside if os.path.exists(beside) else shutil.which("mpiexec")


needs_mpi = pytest.mark.skipif(not (mpi.available and mpiexec_path()),
                               reason="needs mpi4py and mpiexec (pip install mpi4py mpich)")


def environment(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    # One BLAS thread per rank: ranks already outnumber the cores.
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for key in [k for k in env if k.startswith(("PMI_", "OMPI_", "PMIX_"))]:
        del env[key]            # a test run under mpiexec must not look like a rank to its children
    env.update(extra)
    return env


def run(n, args, timeout=60, cwd=None, env=None, check=True, runner=True):
    """`mpiexec -n n python args...` (args[0] a program in programs/, or "-m" and a module); returns CompletedProcess.

    Raises AssertionError with the job's output when it fails (check) or
    runs past `timeout` seconds (then the whole process group is killed).
    """
    if args[0] != "-m":
        # mpi4py's runner aborts the whole job when a rank raises, instead of
        # leaving the others waiting for it (train_job.py does that itself).
        args = (["-m", "mpi4py"] if runner else []) + [os.path.join(PROGRAMS, args[0])] + list(args[1:])
    command = [mpiexec_path(), "-n", str(n), sys.executable] + [str(a) for a in args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=cwd or ROOT, env=env or environment(), start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError("mpiexec -n %d %s ran past %d s:\n%s"
                             % (n, " ".join(map(str, args)), timeout, out)) from None
    result = subprocess.CompletedProcess(command, proc.returncode, out, "")
    if check and proc.returncode != 0:
        raise AssertionError("mpiexec -n %d %s exited with %d:\n%s"
                             % (n, " ".join(map(str, args)), proc.returncode, out))
    return result
