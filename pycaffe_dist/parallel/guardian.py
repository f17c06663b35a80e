"""A rank that is killed outright (SIGKILL, the OOM killer, a segfault) is named by its guardian.

A killed process cannot say anything, and Hydra (MPICH's mpiexec) ends
the whole job the moment one rank dies, naming only a pid. So under
Hydra each `pycaffe-dist train` rank runs as the child of a small
guardian process, the one mpiexec started: the child inherits the PMI
connection and is the real MPI rank; it writes what it is doing (the
iteration) into a pipe; the guardian waits for it, and when the child
dies of a signal prints which rank it was, its pid, the signal and the
last iteration, then exits with the child's status so mpiexec ends the
job as before. The child dies with its guardian (PR_SET_PDEATHSIG), so
Hydra's cleanup still takes everything down.
"""
import os
import signal
import subprocess
import sys

from ..tools.common import error_line

_CHANNEL = "PYCAFFE_DIST_GUARDIAN_FD"
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


def wanted():
    """Whether this process should become a guardian: a Hydra rank (PMI_FD set), not yet guarded, MPI not started."""
    # MPI_LOCALNRANKS marks Hydra; srun names a killed task itself, and Open MPI its rank.
    return ("PMI_FD" in os.environ and "MPI_LOCALNRANKS" in os.environ and _CHANNEL not in os.environ
            and os.environ.get("PMI_SIZE", "1") != "1" and "mpi4py.MPI" not in sys.modules)


def run_guarded(command):
    """Run `command` as the guarded rank; return the exit status to leave with."""
    read_end, write_end = os.pipe()
    env = dict(os.environ, **{_CHANNEL: str(write_end)})
    keep = [write_end] + [int(os.environ["PMI_FD"])]
    child = subprocess.Popen(command, env=env, pass_fds=keep)
    os.close(write_end)
    for signum in _FORWARDED:
        signal.signal(signum, lambda s, _frame: child.send_signal(s))
    last, pending = b"", b""
    with os.fdopen(read_end, "rb", buffering=0) as status:
        while True:
            data = status.read(4096)
            if not data:
                break
            lines = (pending + data).split(b"\n")
            pending = lines[-1]
            if len(lines) > 1:
                last = lines[-2]
    code = child.wait()
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else "signal %d" % -code
        rank = os.environ.get("PMI_RANK", "?")
        doing = last.decode("utf-8", "replace").strip()
        error_line("pycaffe-dist: error: rank %s (pid %d) was killed by %s%s; the job ends"
                   % (rank, child.pid, name, " at " + doing if doing else ""))
        return 128 - code
    return code


def protect():
    """In a guarded rank: die with the guardian (Linux), so no rank outlives a cleanup."""
    if _CHANNEL not in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)            # PR_SET_PDEATHSIG
    if os.getppid() == 1:                     # the guardian died before prctl took effect
        os._exit(1)


def report(text):
    """Tell the guardian (if any) what this rank is doing now; one short line."""
    fd = os.environ.get(_CHANNEL)
    if fd is not None:
        try:
            os.write(int(fd), (text.replace("\n", " ") + "\n").encode())
        except OSError:
            pass
