"""Training as one rank of an MPI job: `mpiexec -n 64 pycaffe-dist train --solver s.prototxt`.

Every rank runs this same code. A rank builds its solver for its shard of
the data (offset % workers == rank), plugs in the strategy the solver's
parallel_param names (synchronous data parallel when it names none), and
trains; only rank 0 tests, logs and snapshots. Parameter-server ranks hold
weights instead of training.

When anything goes wrong on a rank (a peer that stopped answering past the
timeout, an exception) the rank logs what happened, naming the rank and
the call it waited in, and calls MPI_Abort, which ends every rank of the
job: no rank is left waiting. Snapshots are written atomically by the
root, so the last one is intact.
"""
import logging
import os
import socket
import time
import traceback
from dataclasses import dataclass

import numpy

from .. import backend
from ..proto import io as proto_io
from ..solvers.base import SNAPSHOT, STOP, Solver
from ..tools.common import error_line
from . import cluster_config, guardian, mpi
from .comm import CommError

log = logging.getLogger("pycaffe_dist")


@dataclass
class RankResult:
    """What a rank did: its role, final iteration, and the root's last test scores."""

    rank: int
    role: str                 # "worker" or "server"
    iter: int = 0
    iterations: int = 0
    seconds: float = 0.0
    test_scores: list = None
    weights: object = None    # a worker's final flat weights (a copy)


def train(solver_path, resume=None, weights=(), action_request=None, setup=None, dtype=numpy.float32,
          comm=None, gpus=(), **overrides):
    """Train `solver_path` as this rank of the MPI job; returns a RankResult.

    Args:
        resume: a .solverstate to continue from (written by any number of ranks).
        weights: .caffemodel files to fine-tune from.
        action_request: () -> None | "stop" | "snapshot" (signals); the root's
            answer is taken by every rank at the same iteration where the
            strategy moves in lockstep.
        setup: setup(solver, comm, settings) runs on every training rank once
            its solver exists (feed MemoryData layers, add callbacks).
        comm: an MPIComm (default: COMM_WORLD with the settings' timeout).
        gpus: device ids of this node; a training rank runs on gpus[local rank % len(gpus)]
            (one rank per GPU: start as many ranks per node as ids). Empty: the CPU.
        overrides: ClusterSettings fields that win over parallel_param
            (strategy=, algorithm=, compression=, timeout=, ...).

    Raises:
        config.ConfigError: settings that cannot run (raised on every rank,
            before any message is exchanged).
    """
    guardian.protect()
    param = proto_io.read_solver(solver_path)
    size = comm.size if comm is not None else mpi.launched()[1]
    settings = cluster_config.from_solver(param, size, **overrides)
    if comm is None:
        comm = mpi.MPIComm(timeout=settings.timeout)
    rank = comm.rank
    try:
        _announce(comm, settings)
        if settings.strategy in ("ps", "downpour") and rank >= settings.workers(size):
            return _serve(comm, settings)
        if gpus:
            device = list(gpus)[mpi.local_rank(rank) % len(gpus)]
            backend.set_mode_gpu()
            backend.set_device(device)
            log.info("rank %d on %s: GPU %d", rank, socket.gethostname(), device)
        return _train_rank(comm, settings, param, solver_path, resume, weights, action_request, setup, dtype)
    except CommError as e:
        _fail(comm, "rank %d stops the job: %s" % (rank, e))
    except BaseException as e:   # an exception on one rank must not leave the others waiting for it
        where = (" in %s" % comm.where) if comm.where else ""
        _fail(comm, "rank %d failed%s: %s: %s\n%s" % (rank, where, type(e).__name__, e, traceback.format_exc()))
    finally:
        comm.close()


# Seconds between a failing rank's message and MPI_Abort: mpiexec forwards
# each rank's output through its own pipe and kills every rank on the abort,
# and a message still in the pipe was lost (about one job in eight here).
ABORT_DELAY = 0.5


def _fail(comm, message):
    log.error("%s", message)
    error_line("pycaffe-dist train: error: %s" % message.splitlines()[0])
    logging.shutdown()
    time.sleep(ABORT_DELAY)
    comm.abort(1)


def _announce(comm, settings):
    """Log the job's layout on the root; each rank's pid lets the launcher's messages be read by rank."""
    me = ("%d %s" % (os.getpid(), socket.gethostname())).encode()[:120]
    mine = numpy.zeros(128, numpy.uint8)
    mine[:len(me)] = numpy.frombuffer(me, numpy.uint8)
    everyone = numpy.zeros((comm.size, 128), numpy.uint8)
    comm.allgather(mine, everyone)
    if comm.rank == 0:
        log.info("MPI job of %d ranks: strategy %s%s", comm.size, settings.strategy, _details(settings))
        for r in range(comm.size):
            pid, host = bytes(everyone[r]).rstrip(b"\0").decode().split(" ", 1)
            log.info("  rank %d: pid %s on %s", r, pid, host)


def _details(s):
    if s.strategy == "sync":
        text = ", algorithm %s%s" % (s.algorithm, ", layer-wise" if s.layer_wise and s.compression == "none" else "")
        return text + (", %s compression%s" % (s.compression, " with error feedback" if s.error_feedback else "")
                       if s.compression != "none" else "")
    if s.strategy in ("ps", "downpour"):
        return ", %d server%s, n_fetch %d, n_push %d" % (s.servers, "s" if s.servers > 1 else "", s.n_fetch, s.n_push)
    if s.strategy in ("easgd", "eamsgd"):
        return ", tau %d, alpha %g, algorithm %s" % (s.tau, s.alpha, s.algorithm)
    return ", staleness %d" % s.staleness


def _serve(comm, settings):
    from .param_server import serve
    _quiet()
    started = time.perf_counter()
    serve(comm, settings.servers, synchronous=settings.strategy == "ps")
    return RankResult(comm.rank, "server", seconds=time.perf_counter() - started)


def _quiet():
    root = logging.getLogger("pycaffe_dist")
    root.setLevel(max(root.getEffectiveLevel(), logging.WARNING))


def _train_rank(comm, settings, param, solver_path, resume, weights, action_request, setup, dtype):
    from .worker import _snapshot_global_data_position
    rank, workers = comm.rank, settings.workers(comm.size)
    backend.set_solver_rank(rank)
    backend.set_solver_count(workers)
    if rank != 0:
        _quiet()
        for name in ("test_net", "test_net_param", "test_iter", "test_state"):
            param.ClearField(name)          # only the root tests
    if settings.strategy == "eamsgd" and (param.type or "SGD") == "SGD":
        param.type = "Nesterov"             # EAMSGD's local step is Nesterov momentum
    solver = Solver(param, solver_path, dtype=dtype)
    for path in weights:
        log.info("Finetuning from %s", path)
        solver.net.copy_from(path)
    if workers > 1:
        _snapshot_global_data_position(solver.net, workers)
    comm.describe = _layer_namer(solver.net)
    solver.add_callback(_Where(comm))
    strategy = make_strategy(comm, settings).attach(solver)
    if setup is not None:
        setup(solver, comm, settings)
    solver.action_request = _requests(comm, action_request, lockstep=settings.strategy in ("sync", "easgd", "eamsgd"))
    if resume:
        solver.restore(resume)
    start_iter, started = solver.iter, time.perf_counter()
    solver.solve()
    seconds = time.perf_counter() - started
    log.debug("rank %d done with %s", rank, type(strategy).__name__)
    return RankResult(rank, "worker", solver.iter, solver.iter - start_iter, seconds, solver.last_test_scores,
                      backend.to_host(solver.net.flat_data).copy())


def make_strategy(comm, settings):
    """The solver callback that runs `settings.strategy` on `comm` (not yet attached)."""
    s = settings
    if s.strategy == "sync":
        if s.compression != "none":
            from .compression import CompressedSGD
            algorithm = s.algorithm if s.algorithm != "tree" else "binomial"
            return CompressedSGD(comm, s.compression, s.error_feedback, s.topk_ratio, algorithm, s.chunk_bytes)
        from .strategies import SyncSGD
        return SyncSGD(comm, layer_wise=s.layer_wise, algorithm=s.algorithm)
    if s.strategy in ("easgd", "eamsgd"):
        from .easgd import ElasticAveraging
        return ElasticAveraging(comm, s.tau, s.alpha, s.algorithm if s.algorithm != "tree" else "binomial",
                                s.chunk_bytes)
    if s.strategy == "ssp":
        from .ssp import StaleSynchronous
        return StaleSynchronous(comm, s.staleness)
    from .param_server import ParameterClient
    return ParameterClient(comm, s.servers, s.n_fetch, s.n_push)


class _Where:
    """Keeps comm.where at the current iteration, for failure messages."""

    def __init__(self, comm):
        self.comm = comm

    def on_start(self, solver):
        self.comm.where = "iteration %d" % solver.iter
        guardian.report(self.comm.where)

    def on_gradients_ready(self, solver):
        pass


def _layer_namer(net):
    """describe(buf) for the communicator: which layer's parameters a view of the flat buffers holds."""
    spans = sorted((p.offset, p.offset + p.blob.count, p.layer) for p in net.learnable)

    def describe(buf):
        for flat in (net.flat_diff, net.flat_data):
            if isinstance(buf, numpy.ndarray) and numpy.may_share_memory(buf, flat):   # bounds only: cheap
                start = (buf.__array_interface__["data"][0] - flat.__array_interface__["data"][0]) // flat.itemsize
                stop = start + buf.size
                if start == 0 and stop == flat.size:
                    return "all layers"
                names = [layer for a, b, layer in spans if a < stop and b > start]
                return "layer%s %s" % ("s" if len(set(names)) > 1 else "", ", ".join(dict.fromkeys(names)))
        return None
    return describe


def _requests(comm, action_request, lockstep):
    """solver.action_request: the root's signal, taken by every rank at the same iteration in lockstep strategies."""
    meaning = {1: SNAPSHOT, 2: STOP}
    codes = {SNAPSHOT: 1, STOP: 2, "snapshot": 1, "stop": 2}
    flag = numpy.zeros(1, numpy.int32)

    def request():
        mine = action_request() if action_request is not None else None
        if lockstep:
            flag[0] = codes.get(mine, 0) if comm.rank == 0 else 0
            comm.bcast(flag, 0)
            mine = meaning.get(int(flag[0]))
        return None if mine == SNAPSHOT and comm.rank != 0 else mine     # only the root snapshots
    return request

