"""What one training worker does: build its solver for its shard, plug in the strategy, train, report.

Runs inside a worker process or thread started by launcher.run_workers;
`train_worker` is the target and the payload is a Job.
"""
import hashlib
import importlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field

import numpy

from .. import backend
from ..proto import caffe_pb2
from ..solvers import base as solver_base
from ..solvers.base import Solver
from . import launcher, shards as shard_nets
from .comm import SelfComm
from .config import Settings
from .strategies import Hogwild, SyncSGD

log = logging.getLogger("pycaffe_dist")
_mapped_blocks = []
# Worker threads build their solvers one at a time: seeding and filling draw
# on the one process-wide random stream, and interleaved they gave rank 0
# (whose weights every worker starts from) other weights than the seed's.
_build_lock = threading.Lock()


@dataclass
class Job:
    """Everything a worker needs; pickled once per worker process."""

    solver_bytes: bytes
    solver_path: str
    settings: Settings
    dtype: str = "float32"
    resume: str = None
    weights: tuple = ()
    setup: object = None            # setup(TrainingWorker), module-level for processes
    log_level: int = None
    return_weights: bool = False
    layer_modules: tuple = ()       # modules that registered layers in the parent
    thread_shared: dict = field(default_factory=dict)   # threads only: rank 0's weights


class TrainingWorker:
    """What a `setup` hook sees: rank, size, the solver, and the train nets by data shard."""

    def __init__(self, rank, size, solver, nets, shards):
        self.rank, self.size = rank, size
        self.solver = solver
        self.nets = nets          # {shard index: Net}; the solver's net is the first
        self.shards = shards


def train_worker(worker):
    """launcher target: train as rank `worker.rank`; returns this worker's report."""
    job, s = worker.payload, worker.payload.settings
    if not worker.threaded:
        _setup_logging(worker.rank, job.log_level)
        # A fresh interpreter knows only the layers its imports register.
        for name in job.layer_modules:
            importlib.import_module(name)
    per_worker = s.shards_per_worker
    count = s.shards if s.deterministic else s.workers
    first = worker.rank * per_worker
    backend.set_solver_rank(first, this_thread_only=True)
    backend.set_solver_count(count, this_thread_only=True)
    if not worker.threaded:
        backend.set_solver_rank(first)
        backend.set_solver_count(count)
    if s.gpus:
        backend.set_mode_gpu()
        backend.set_device(s.gpus[worker.rank])
    param = caffe_pb2.SolverParameter.FromString(job.solver_bytes)
    if worker.rank != 0:
        _drop_test_nets(param)       # only the root tests
    with _build_lock:
        solver, nets = _build(param, job, s, first, per_worker, count)
    if worker.rank == 0 and count > 1:
        _snapshot_global_data_position(solver.net, count)
    host = worker.comm() if worker.group is not None else SelfComm()
    strategy = None
    if s.strategy == "hogwild":
        Hogwild(_shared_weights(worker, solver, host)).attach(solver)
    else:
        comm = host
        if s.gpus:
            from .nccl import NcclComm
            comm = NcclComm(host, s.gpus[worker.rank])
        strategy = SyncSGD(comm, layer_wise=s.layer_wise, algorithm=s.algorithm,
                           shard_nets=[nets[k] for k in sorted(nets)[1:]],
                           shards=count if s.deterministic else None, first_shard=first).attach(solver)
    if job.setup is not None:
        job.setup(TrainingWorker(worker.rank, worker.size, solver, nets, count))
    solver.action_request = _requests(worker, host, solver, s.strategy == "hogwild")
    if job.resume:
        solver.restore(job.resume)
        _restore_shard_nets(solver.net, nets, count)
    # CPU time: the whole process's (all its threads) or, for a worker thread, its own.
    cpu_clock = time.thread_time if worker.threaded else time.process_time
    start_iter, started, cpu = solver.iter, time.perf_counter(), cpu_clock()
    try:
        solver.solve()
    finally:        # prefetch threads stop and data layers log their closing counts
        solver.close()
        for net in nets.values():
            if net is not solver.net:
                net.close()
    seconds = time.perf_counter() - started
    report = _report(worker, job, solver, start_iter, seconds)
    report["cpu_seconds"] = cpu_clock() - cpu
    report["reduce_seconds"] = getattr(strategy, "reduce_seconds", 0.0)
    return report


def _setup_logging(rank, level):
    from ..cli import setup_logging
    level = logging.INFO if level is None else level
    setup_logging(level if rank == 0 else max(level, logging.WARNING))


def _drop_test_nets(param):
    for name in ("test_net", "test_net_param", "test_iter", "test_state"):
        param.ClearField(name)


def _build(param, job, s, first, per_worker, count):
    """The solver and this worker's train nets {shard: net}."""
    dtype = numpy.dtype(job.dtype)
    if not s.deterministic:
        solver = Solver(param, job.solver_path, dtype=dtype)
        _fine_tune(solver.net, job.weights)
        return solver, {first: solver.net}
    # Each shard's net is built from its own seed, so shard s is the same
    # net whichever worker builds it; shard 0 matches a plain solver's net.
    base_dir = _base_dir(job.solver_path)
    net_param, state = shard_nets.train_net_param(param, base_dir)
    net_param = shard_nets.scale_batch(net_param, s.workers, count, state)
    nets = {}
    for shard in range(first, first + per_worker):
        if param.random_seed >= 0:
            backend.set_random_seed(param.random_seed + shard)
        with shard_nets.as_shard(shard, count):
            net = shard_nets.build_shard_net(net_param, state, dtype, param, base_dir)
        _fine_tune(net, job.weights)
        if nets:
            net.bind_flat(data=nets[first].flat_data)
        nets[shard] = net
    return Solver(param, job.solver_path, dtype=dtype, train_net=nets[first]), nets


def _base_dir(path):
    return os.path.dirname(os.path.abspath(path)) if path and path != "<solver>" else None


def _fine_tune(net, weights):
    for path in weights:
        log.info("Finetuning from %s", path)
        net.copy_from(path)


def _snapshot_global_data_position(net, count):
    """Make the root's data position in snapshots the global batch boundary.

    The root reads the records with offset % count == 0; after a batch its
    reader stands one past its last record, while the other shards' records
    up to the next multiple of `count` are already consumed. Rounding up
    gives the position every worker of a resumed run, of any size, can
    start from without reading a record twice.
    """
    for layer in net.layers:
        original = layer.get_state

        def get_state(original=original):
            state = original()
            if isinstance(state, dict) and "offset" in state:
                state = dict(state, offset=-(-int(state["offset"]) // count) * count)
            return state
        layer.get_state = get_state


def _restore_shard_nets(net, nets, count):
    """Give this worker's other shard nets the data position the solver's net restored.

    A snapshot holds the root's position, the global batch boundary, from
    which every shard continues with its own records.
    """
    for shard, other in nets.items():
        if other is net:
            continue
        with shard_nets.as_shard(shard, count):     # data layers restart as their shard
            for mine, theirs in zip(net.layers, other.layers):
                state = mine.get_state()
                if state is not None:
                    theirs.set_state(state)


def _shared_weights(worker, solver, host):
    """Hogwild's one weight buffer: rank 0's array (threads) or a shared memory block (processes)."""
    if worker.threaded:
        shared = worker.payload.thread_shared
        if worker.rank == 0:
            shared["weights"] = solver.net.flat_data
        host.barrier()
        return shared["weights"]
    from multiprocessing import shared_memory
    data = solver.net.flat_data
    name = numpy.zeros(64, numpy.uint8)
    if worker.rank == 0:
        block = shared_memory.SharedMemory(create=True, size=data.nbytes)
        numpy.frombuffer(block.buf, data.dtype, data.size)[...] = data
        encoded = block.name.encode()
        name[:len(encoded)] = numpy.frombuffer(encoded, numpy.uint8)
    host.bcast(name, 0)
    if worker.rank != 0:
        # Workers share the parent's resource tracker, so attaching adds no second claim.
        block = shared_memory.SharedMemory(name=bytes(name).rstrip(b"\0").decode())
    host.barrier()
    if worker.rank == 0:
        block.unlink()     # every worker has it mapped; the name is no longer needed
    # Mapped until the process ends: closing it under live numpy views would fail.
    _mapped_blocks.append(block)
    return numpy.frombuffer(block.buf, data.dtype, data.size)


def _requests(worker, host, solver, hogwild):
    """solver.action_request: the parent's STOP/SNAPSHOT, taken by every worker at the same iteration.

    Hogwild workers run at their own pace, so each looks for itself, and
    all meet once when they leave the loop: the root's final test and
    snapshot then see every worker's updates.
    """
    root = worker.rank == 0
    flag = numpy.zeros(1, numpy.int32)
    meaning = {launcher.STOP: solver_base.STOP, launcher.SNAPSHOT: solver_base.SNAPSHOT if root else None}

    def request():
        if hogwild:
            code = worker.requests.take() if root else worker.requests.peek()
            if code == launcher.STOP or solver.iter >= solver.param.max_iter:
                host.barrier()
        else:            # the root decides and tells the others, so all stop together
            flag[0] = worker.requests.take() if root else 0
            host.bcast(flag, 0)
            code = int(flag[0])
        return meaning.get(code)
    return request


def _report(worker, job, solver, start_iter, seconds):
    flat = backend.to_host(solver.net.flat_data)
    report = {"rank": worker.rank, "iter": solver.iter, "iterations": solver.iter - start_iter,
              "seconds": seconds, "digest": hashlib.sha1(numpy.ascontiguousarray(flat).tobytes()).hexdigest(),
              "stopped_early": solver.requested_early_exit}
    if worker.rank == 0:
        report["test_scores"] = solver.last_test_scores
        if job.return_weights:
            report["weights"] = numpy.array(flat, copy=True)
    return report
