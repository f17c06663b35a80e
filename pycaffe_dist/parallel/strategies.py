"""Parallel strategies: solver callbacks that make N workers train one model.

SyncSGD is Caffe's multi-GPU data parallelism: every worker computes the
gradient of its own batch, the gradients are averaged over the flat diff
buffer, and every worker applies the same update to its own copy of the
weights (the averaged gradient is the same bytes everywhere and the update
is deterministic, so the copies never drift; nothing else is exchanged
after the first iteration's broadcast). Hogwild shares one weight buffer
between workers and lets each update it without locks.
"""
import logging
import queue
import threading
import time

from .. import backend
from ..solvers.base import Callback
from . import algorithms
from .comm import ordered_allreduce
from .p2p_tree import tree_allreduce
from .shards import as_shard

log = logging.getLogger("pycaffe_dist")


def layer_regions(net):
    """(layer index, start, stop) of the flat buffer for each layer owning parameters.

    Offsets follow the owners' layer order, so a layer's own parameters are
    contiguous; a parameter shared with a later layer belongs to its owner,
    whose backward runs last, so its gradient is complete there.
    """
    spans = {}
    for p in net.learnable:
        li = net.layer_index(p.layer)
        start, stop = spans.get(li, (p.offset, p.offset))
        spans[li] = (min(start, p.offset), max(stop, p.offset + p.blob.count))
    return [(li, start, stop) for li, (start, stop) in sorted(spans.items(), reverse=True)]


class SyncSGD(Callback):
    """Synchronous data parallel SGD over a communicator.

    Args:
        comm: the worker's Communicator.
        layer_wise: reduce each layer's gradients as soon as its backward
            finishes, on a communication thread, so the reduction overlaps
            the backward of the layers below (Caffe's layer_wise_reduce).
            Otherwise the whole buffer is reduced once backward is done.
        algorithm: "mpi" for the communicator's own allreduce, "tree" for
            Caffe's P2P reduction tree on send/recv, or one of
            algorithms.POINT_TO_POINT (MPI communicators).
        shard_nets: deterministic mode only: this worker's other shard nets
            (sharing the solver net's weights). With `shards` set, the
            gradients of all shards are summed in shard order.
        shards: deterministic mode's shard count; None otherwise.
        first_shard: the shard the solver's own net reads.
    """

    def __init__(self, comm, layer_wise=True, algorithm="mpi", shard_nets=(), shards=None, first_shard=0):
        self.comm = comm
        self.layer_wise = layer_wise
        self.algorithm = algorithm
        self.shard_nets = list(shard_nets)
        self.shards = shards
        self.first_shard = first_shard
        self._started = False
        self._scratch = None
        self._regions = []
        self._done = 0
        self._queue = None
        self._thread = None
        self._thread_error = None
        self.reduce_seconds = 0.0

    @property
    def deterministic(self):
        return self.shards is not None

    def attach(self, solver):
        """Plug into `solver` (its callbacks and its net's after-backward hooks)."""
        self.solver = solver
        solver.add_callback(self)
        iter_size = max(solver.param.iter_size, 1)
        if self.layer_wise and not self.deterministic and self.comm.size > 1:
            if iter_size > 1:
                # Gradients are final only after the last of iter_size passes.
                log.info("layer_wise_reduce is off with iter_size %d: reducing the whole buffer", iter_size)
                self.layer_wise = False
            else:
                self._regions = layer_regions(solver.net)
                solver.net.add_after_backward(self._after_backward)
                self._queue = queue.Queue()
                self._thread = threading.Thread(target=self._serve, name="allreduce", daemon=True)
                self._thread.start()
        else:
            self.layer_wise = False
        return self

    # -- callbacks ------------------------------------------------------------------
    def on_start(self, solver):
        if not self._started:
            # Every worker starts from the root's weights, seeded or not.
            self.comm.bcast(solver.net.flat_data, 0)
            self._started = True
        self._done = 0

    def _after_backward(self, layer_index):
        while self._done < len(self._regions) and self._regions[self._done][0] >= layer_index:
            _, start, stop = self._regions[self._done]
            self._queue.put((start, stop))
            self._done += 1

    def on_gradients_ready(self, solver):
        started = time.perf_counter()
        try:
            self._gradients_ready(solver)
        finally:
            # What backward did not hide: reduction, and waiting for slower peers.
            self.reduce_seconds += time.perf_counter() - started

    def _gradients_ready(self, solver):
        diff = solver.net.flat_diff
        if self.deterministic:
            parts = [diff] + [self._shard_gradient(i, net, solver) for i, net in enumerate(self.shard_nets)]
            ordered_allreduce(self.comm, parts)
            diff *= 1.0 / self.shards
            return
        if self.comm.size == 1:
            return
        if self.layer_wise:
            self._after_backward(-1)         # layers that ran no backward
            self._queue.join()
            if self._thread_error is not None:
                raise self._thread_error
        else:
            self._reduce(0, diff.size)
        diff *= 1.0 / self.comm.size

    # -- reduction --------------------------------------------------------------------
    def _reduce(self, start, stop):
        view = self.solver.net.flat_diff[start:stop]
        if self.algorithm == "tree":
            if self._scratch is None or self._scratch.size < view.size:
                self._scratch = self.solver.net.xp.empty(self.solver.net.flat_diff.size, view.dtype)
            tree_allreduce(self.comm, view, self._scratch[:view.size])
        elif self.algorithm in algorithms.POINT_TO_POINT:
            algorithms.allreduce(self.comm, view, self.algorithm)
        else:
            self.comm.allreduce(view)

    def _serve(self):
        if backend.gpu_mode():      # CUDA's current device is per thread: take the training thread's
            backend.set_device(backend._mode["device"])
        while True:
            start, stop = self._queue.get()
            try:
                if self._thread_error is None:
                    self._reduce(start, stop)
            except BaseException as e:  # handed to the training thread
                self._thread_error = e
            finally:
                self._queue.task_done()

    def _shard_gradient(self, index, net, solver):
        """Forward/backward of one more shard on the current weights; returns its gradient."""
        net.clear_param_diffs()
        with as_shard(self.first_shard + 1 + index, self.shards):
            for _ in range(max(solver.param.iter_size, 1)):
                net.forward_backward()
        return net.flat_diff


class Hogwild(Callback):
    """Lock-free shared weights: the solver's net (and its test nets) view `shared_data`.

    Every worker runs its own solver on its own shard; each update lands in
    the shared buffer as it is computed (Recht et al., NIPS 2011).
    """

    def __init__(self, shared_data):
        self.shared_data = shared_data

    def attach(self, solver):
        solver.net.bind_flat(data=self.shared_data)
        for test_net in solver.test_nets:
            test_net.share_weights_with(solver.net)
        solver.add_callback(self)
        return self
