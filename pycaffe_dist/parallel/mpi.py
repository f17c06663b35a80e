"""The MPI communicator: the Communicator interface on mpi4py's buffer calls.

This is the one module that imports mpi4py, and only when a communicator is
made: importing mpi4py.MPI initialises MPI, which a run that was not started
by mpiexec must not do. `available` says whether mpi4py is installed;
`launched()` whether this process is one rank of an mpiexec/srun job.

Every call is nonblocking underneath and waits by polling against a
deadline, so no rank can hang forever on a peer that died or stopped. When
a wait runs past `timeout` seconds the rank pings every peer on a separate
communicator (a thread in each rank answers with what that rank is doing),
and raises CommTimeout naming the peers that do not answer, or, if all
answer, the ones that have not reached this call. The training driver then
logs that message and calls MPI_Abort, which ends every rank.

CuPy arrays are accepted everywhere a buffer is: pip's MPICH is not
CUDA-aware, so each call copies them through pinned host buffers
(staging.HostStaging) and copies results back; a nonblocking receive into
a device buffer is copied back when its request completes (waitall,
waitany, or the request's own Test/Wait).
"""
import atexit
import functools
import importlib.util
import os
import threading
import time

import numpy

from .comm import CommError, Communicator
from .staging import HostStaging, upload

available = importlib.util.find_spec("mpi4py") is not None

DEFAULT_TIMEOUT = 300.0     # seconds a rank waits for a peer before giving up
PING_SECONDS = 3.0          # how long a timed-out rank waits for peers to answer its ping
_STATUS_BYTES = 200
_PING, _PONG = 1, 2
_SPIN = 1e-4                # seconds of busy polling before a wait starts to sleep
_MAX_PAUSE = 1e-4           # longest sleep between polls: short, large transfers progress only while polled

# Environment variables process managers set for each rank: (rank, size).
_LAUNCH_VARIABLES = (("PMI_RANK", "PMI_SIZE"),                        # MPICH / Hydra, Intel MPI, srun --mpi=pmi2
                     ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),  # Open MPI
                     ("PMIX_RANK", "OMPI_COMM_WORLD_SIZE"),            # PMIx launchers
                     ("PMIX_RANK", "SLURM_NTASKS"))                    # srun --mpi=pmix


class CommTimeout(CommError):
    """A wait that ran past the timeout; `missing` lists the ranks it blames."""

    def __init__(self, message, missing=()):
        super().__init__(message)
        self.missing = list(missing)


def launched():
    """(rank, size) from the process manager's environment when started as one of several MPI ranks, else None.

    Read without initialising MPI, so `pycaffe-dist train` can decide to run
    as a cluster rank before it imports mpi4py.
    """
    for rank_var, size_var in _LAUNCH_VARIABLES:
        rank, size = os.environ.get(rank_var), os.environ.get(size_var)
        if rank is not None and size is not None and int(size) > 1:
            return int(rank), int(size)
    return None


# Each rank's number among the ranks of its own node.
_LOCAL_RANK_VARIABLES = ("MPI_LOCALRANKID",              # MPICH / Hydra
                         "OMPI_COMM_WORLD_LOCAL_RANK",   # Open MPI
                         "SLURM_LOCALID",                # srun
                         "PMI_LOCAL_RANK", "PMIX_LOCAL_RANK")


def local_rank(default=0):
    """This rank's number on its node, from the process manager's environment (else `default`)."""
    for name in _LOCAL_RANK_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return default


def _mpi():
    if not available:
        raise CommError("MPI needs mpi4py: pip install mpi4py mpich (or: pip install -e .[mpi])")
    from mpi4py import MPI
    return MPI


class MPIComm(Communicator):
    """One rank of an MPI job (COMM_WORLD by default).

    Args:
        timeout: seconds any call waits for its peers before raising CommTimeout.
        comm: an mpi4py communicator to use instead of COMM_WORLD.
        staging: the HostStaging that device (CuPy) buffers go through.

    Attributes a strategy may set to make failure messages precise:
        where: what the rank is doing, e.g. "iteration 17".
        describe: callable(buf) -> str naming what a buffer holds (a layer).
    """

    def __init__(self, timeout=DEFAULT_TIMEOUT, comm=None, staging=None):
        MPI = self.MPI = _mpi()
        self.staging = staging if staging is not None else HostStaging()
        self._staged = staged_request_class()
        self._inflight = []         # staged requests not yet seen complete
        base = comm if comm is not None else MPI.COMM_WORLD
        # Separate contexts: collectives and messages of the training never
        # match the liveness pings, whatever tags either uses.
        self.comm = base.Dup()
        self._ctl = base.Dup()
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.timeout = float(timeout)
        self.where = ""
        self.describe = None
        self._doing = "starting"
        self._ping_lock = threading.Lock()
        self._closed = threading.Event()
        self._responder = None
        if self.size > 1 and MPI.Query_thread() == MPI.THREAD_MULTIPLE:
            self._responder = threading.Thread(target=self._answer_pings, name="mpi-ping", daemon=True)
            self._responder.start()
            atexit.register(self.close)     # before mpi4py's own MPI_Finalize (atexit runs last-in first)

    # -- waiting with a deadline ----------------------------------------------------------
    def poll(self, test, what, peers=()):
        """Call `test()` until it returns something true; return that.

        Spins briefly (MPICH makes progress only inside MPI calls), then
        sleeps a little between calls so oversubscribed ranks leave the
        cores to the peers they wait for. Raises CommTimeout past the deadline.
        """
        self._doing = what
        result = test()
        if result:
            return result
        start = time.monotonic()
        deadline, pause = start + self.timeout, 0.0
        while True:
            result = test()
            if result:
                return result
            now = time.monotonic()
            if now > deadline:
                raise self._timed_out(what, peers, now - start)
            if now - start > _SPIN:
                pause = min(max(pause * 2, 2e-5), _MAX_PAUSE)
                time.sleep(pause)

    def waitall(self, requests, what, peers=()):
        """Wait for every request in `requests` (mpi4py Requests)."""
        if requests:
            self.poll(lambda: self.MPI.Request.Testall(requests), what, peers)
            for request in requests:
                if isinstance(request, self._staged):
                    request.finish()

    def waitany(self, requests, what, peers=()):
        """Wait for one of `requests`; return its index (it becomes MPI.REQUEST_NULL)."""
        MPI = self.MPI

        def test():
            index, done = MPI.Request.Testany(requests)
            return (index,) if done and index != MPI.UNDEFINED else None
        index = self.poll(test, what, peers)[0]
        if isinstance(requests[index], self._staged):
            requests[index].finish()
        return index

    def _label(self, op, buf=None):
        """'allreduce of 1000 values for layer ip1 at iteration 17': what a failure message names."""
        text = op
        if buf is not None:
            text += " of %d values" % buf.size
            name = self.describe(buf) if self.describe is not None else None
            if name:
                text += " for " + name
        return "%s at %s" % (text, self.where) if self.where else text

    # -- collectives --------------------------------------------------------------------
    def allreduce(self, buf):
        if self.size > 1:
            with self.staging.on_host(buf) as host:
                request = self.comm.Iallreduce(self.MPI.IN_PLACE, _flat(host), op=self.MPI.SUM)
                self.waitall([request], self._label("MPI allreduce", buf))

    def reduce(self, buf, root=0):
        if self.size > 1:
            with self.staging.on_host(buf, copy_out=self.rank == root) as host:
                flat = _flat(host)
                if self.rank == root:
                    request = self.comm.Ireduce(self.MPI.IN_PLACE, flat, op=self.MPI.SUM, root=root)
                else:
                    request = self.comm.Ireduce(flat, None, op=self.MPI.SUM, root=root)
                self.waitall([request], self._label("reduce to rank %d" % root, buf))

    def bcast(self, buf, root=0):
        if self.size > 1:
            with self.staging.on_host(buf, copy_in=self.rank == root, copy_out=self.rank != root) as host:
                request = self.comm.Ibcast(_flat(host), root=root)
                self.waitall([request], self._label("bcast from rank %d" % root, buf), (root,))

    def barrier(self):
        if self.size > 1:
            self.waitall([self.comm.Ibarrier()], self._label("barrier"))

    def allgather(self, sendbuf, recvbuf):
        """recvbuf (size x len(sendbuf)) gets every rank's sendbuf, in rank order."""
        with self.staging.on_host(sendbuf, copy_out=False) as send, \
                self.staging.on_host(recvbuf, copy_in=False) as recv:
            request = self.comm.Iallgather(_flat(send), _flat(recv))
            self.waitall([request], self._label("allgather", sendbuf))

    # -- point to point -----------------------------------------------------------------
    def send(self, buf, dest, tag=0):
        self.waitall([self.isend(buf, dest, tag)], self._label("send to rank %d" % dest, buf), (dest,))

    def recv(self, buf, source, tag=0):
        self.waitall([self.irecv(buf, source, tag)], self._label("recv from rank %d" % source, buf), (source,))

    def isend(self, buf, dest, tag=0):
        """Start sending `buf` to `dest`; returns the request (keep `buf` unchanged until it completes)."""
        if not self.staging.needed(buf):
            return self.comm.Isend(_flat(buf), dest, tag)
        host = self.staging.lease(buf)
        return self._stage(self.comm.Isend(host, dest, tag), host)

    def irecv(self, buf, source, tag=0):
        """Start receiving into `buf` from `source` (self.MPI.ANY_SOURCE for any); returns the request."""
        if not self.staging.needed(buf):
            return self.comm.Irecv(_flat(buf), source, tag)
        host = self.staging.lease(buf, copy=False)
        return self._stage(self.comm.Irecv(host, source, tag), host, buf)

    def _stage(self, request, host, device=None):
        """`request` on a host copy: a StagedRequest that copies into `device` and releases `host` when done."""
        # Requests completed by a bare MPI.Request.Testall elsewhere never ran finish(); completion
        # left them null, so finish them here (testing them would take completions others wait for).
        for r in self._inflight:
            if r.host is not None and r == self.MPI.REQUEST_NULL:
                r.finish()
        self._inflight = [r for r in self._inflight if r.host is not None]
        staged = self._staged(request)
        staged.staging, staged.host, staged.device = self.staging, host, device
        self._inflight.append(staged)
        return staged

    def probe(self, what, source=None, tag=None):
        """Wait for a message; return its (source, tag, count of bytes)."""
        MPI = self.MPI
        status = MPI.Status()
        source = MPI.ANY_SOURCE if source is None else source
        tag = MPI.ANY_TAG if tag is None else tag

        def test():
            return self.comm.Iprobe(source, tag, status)
        self.poll(test, self._label(what))
        return status.Get_source(), status.Get_tag(), status.Get_count(MPI.BYTE)

    def abort(self, code=1):
        """End every rank of the job now (MPI_Abort): what a failed rank does last."""
        self.MPI.COMM_WORLD.Abort(code)

    def close(self):
        if not self._closed.is_set():
            self._closed.set()
            if self._responder is not None:
                self._responder.join(timeout=2)

    # -- who is missing -------------------------------------------------------------------
    def _answer_pings(self):
        """Thread: answer every ping with what this rank is doing."""
        MPI = self.MPI
        incoming = numpy.zeros(1, numpy.uint8)
        status = MPI.Status()
        replies = []
        request = self._ctl.Irecv(incoming, MPI.ANY_SOURCE, _PING)
        while not self._closed.is_set():
            if request.Test(status):
                reply = numpy.frombuffer(_status_text(self._doing), numpy.uint8).copy()
                replies.append((self._ctl.Isend(reply, status.Get_source(), _PONG), reply))
                request = self._ctl.Irecv(incoming, MPI.ANY_SOURCE, _PING)
            replies = [(r, b) for r, b in replies if not r.Test()]
            time.sleep(0.02)
        request.Cancel()

    def ping(self, seconds=PING_SECONDS):
        """{rank: what it is doing} for every peer that answers within `seconds`."""
        peers = [r for r in range(self.size) if r != self.rank]
        if self._responder is None:
            return {}
        with self._ping_lock:
            buffers = {r: numpy.zeros(_STATUS_BYTES, numpy.uint8) for r in peers}
            receives = {r: self._ctl.Irecv(buffers[r], r, _PONG) for r in peers}
            token = numpy.ones(1, numpy.uint8)
            sends = [self._ctl.Isend(token, r, _PING) for r in peers]
            deadline = time.monotonic() + seconds
            answers = {}
            while len(answers) < len(peers) and time.monotonic() < deadline:
                for r, request in receives.items():
                    if r not in answers and request.Test():
                        answers[r] = bytes(buffers[r]).rstrip(b"\0").decode("utf-8", "replace")
                time.sleep(0.01)
            del sends     # abandoned: the run is ending, MPI_Abort follows
            return answers

    def _timed_out(self, what, peers, waited):
        answers = self.ping()
        others = [r for r in range(self.size) if r != self.rank]
        silent = [r for r in others if r not in answers] if self._responder is not None else []
        blamed = silent or [r for r in peers if r in others] or others
        lines = ["rank %d waited %.1f s in %s" % (self.rank, waited, what)]
        if silent:
            lines.append("rank%s %s did not answer (dead or stopped)"
                         % ("s" if len(silent) > 1 else "", ", ".join(map(str, silent))))
        for r in sorted(answers):
            lines.append("rank %d is in %s" % (r, answers[r]))
        if not silent and peers:
            lines.append("waiting on rank%s %s" % ("s" if len(peers) > 1 else "", ", ".join(map(str, peers))))
        return CommTimeout("; ".join(lines), missing=blamed)


@functools.lru_cache(maxsize=None)
def staged_request_class():
    """StagedRequest subclasses mpi4py's Request, which exists only once mpi4py is imported."""
    MPI = _mpi()

    class StagedRequest(MPI.Request):
        """A request on a host copy of a device buffer: when it completes, a receive's data is
        copied into the device buffer and the host copy goes back to the pool (finish())."""

        staging = host = device = None

        def finish(self):
            if self.host is not None:
                if self.device is not None:
                    upload(self.host, self.device)
                self.staging.release(self.host)
                self.host = self.device = None

        def Test(self, status=None):
            done = super().Test(status)
            if done:
                self.finish()
            return done

        def Wait(self, status=None):
            super().Wait(status)
            self.finish()
            return True

    return StagedRequest


def _status_text(text):
    raw = text.encode("utf-8")[:_STATUS_BYTES]
    return raw + b"\0" * (_STATUS_BYTES - len(raw))


def _flat(buf):
    if isinstance(buf, numpy.ndarray):
        if not buf.flags.c_contiguous:
            raise TypeError("MPI buffers must be contiguous; got a strided array of shape %s" % (buf.shape,))
        return buf.reshape(-1)
    # CuPy arrays do not get here: MPIComm copies them through host memory first.
    raise TypeError("MPI buffers are numpy or cupy arrays, got %r" % type(buf))
