"""The rest of pycaffe's module-level names: Timer, NCCL, has_nccl, logging helpers."""
import logging
import time

import numpy

from .. import backend

log_ = logging.getLogger("pycaffe_dist")


class Timer:
    """A stopwatch: start(), stop(), then `ms` (pycaffe's caffe.Timer)."""

    def __init__(self):
        self._start = None
        self._elapsed = 0.0

    def start(self):
        self._start = time.perf_counter()

    def stop(self):
        if self._start is not None:
            self._elapsed = time.perf_counter() - self._start
            self._start = None

    @property
    def ms(self):
        """Milliseconds between the last start and stop (up to now while running)."""
        if self._start is not None:
            return (time.perf_counter() - self._start) * 1e3
        return self._elapsed * 1e3

    @property
    def seconds(self):
        return self.ms / 1e3


def has_nccl():
    """Whether NCCL can be used here (cupy with NCCL and a GPU)."""
    from ..parallel import nccl
    return nccl.available


class _GivenUid:
    """A stand-in host communicator whose bcast hands out a uid made elsewhere."""

    def __init__(self, uid):
        self.rank, self.size = backend.solver_rank(), backend.solver_count()
        self.uid = uid

    def bcast(self, buf, root=0):
        values = [b - 256 if b > 127 else b for b in self.uid]  # NCCL ids are signed chars
        buf[:len(values)] = values


class NCCL:
    """Synchronous multi-GPU training from Python, one process per GPU (pycaffe's caffe.NCCL).

        uid = caffe.NCCL.new_uid()          # in the parent, passed to every process
        # in process `rank` of `n`:
        caffe.set_device(gpus[rank]); caffe.set_solver_count(n); caffe.set_solver_rank(rank)
        solver = caffe.SGDSolver(path)
        nccl = caffe.NCCL(solver, uid)
        nccl.bcast()                        # everyone starts from rank 0's weights
        solver.add_callback(nccl)           # average the gradients before each update
        solver.step(solver.param.max_iter)

    `pycaffe_dist.parallel` does all of this (and more) for you; this class
    is for scripts written for pycaffe.
    """

    def __init__(self, solver, uid):  # pragma: no cover - needs a GPU
        from ..parallel import nccl
        if not nccl.available:
            raise RuntimeError("caffe.NCCL needs cupy with NCCL and a GPU; none here (see caffe.has_nccl())")
        self._solver = getattr(solver, "_solver", solver)
        self._comm = nccl.NcclComm(_GivenUid(bytes(uid)), backend._mode["device"])

    @staticmethod
    def new_uid():  # pragma: no cover - needs a GPU
        """A fresh NCCL unique id (bytes) to hand to every process of the group."""
        from ..parallel import nccl
        if not nccl.available:
            raise RuntimeError("caffe.NCCL needs cupy with NCCL and a GPU; none here (see caffe.has_nccl())")
        return bytes(v & 0xFF for v in nccl._nccl.get_unique_id())

    def bcast(self):  # pragma: no cover - needs a GPU
        """Copy rank 0's weights to every process."""
        self._comm.bcast(self._solver.net.flat_data, 0)

    # Solver callbacks.
    def on_start(self, solver):
        pass

    def on_gradients_ready(self, solver):  # pragma: no cover - needs a GPU
        diff = self._solver.net.flat_diff
        if self._comm.size > 1:
            self._comm.allreduce(diff)
            diff *= numpy.float32(1.0 / self._comm.size)

    def __call__(self, layer_index):
        # net.after_backward(nccl) asks for a per-layer reduction; one
        # reduction of the whole buffer in on_gradients_ready gives the same
        # sums, so the per-layer call has nothing to do.
        pass


def init_log(level=logging.INFO, filename=None):
    """Send the framework's log lines (Caffe's format) to stderr, and also to `filename` when given.

    The file then holds the lines parse_log and plot_log read.
    """
    from ..cli import CaffeFormatter, setup_logging
    setup_logging(level)
    if filename is not None:
        handler = logging.FileHandler(filename, mode="w")
        handler.setFormatter(CaffeFormatter())
        log_.addHandler(handler)


def log(message):
    """Write one INFO line to the framework's log."""
    log_.info("%s", message)


def set_multiprocess(multiprocess):
    """Accepted for pycaffe scripts; each process here keeps its own state anyway."""
