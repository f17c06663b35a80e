"""Elastic averaging SGD (Zhang, Choromanska and LeCun, NIPS 2015) in its allreduce form.

Each rank trains its own copy x_i with plain local steps; every `tau`
iterations all ranks meet once:

    d_i = x_i - c;   x_i -= alpha * d_i;   c += alpha * sum_i d_i

The center c is kept by every rank, and since the sum is the same bits
everywhere (one allreduce), the copies of c never drift apart: no server
is needed. EAMSGD is the same exchange with Nesterov momentum as the local
step (the driver switches an SGD solver to Nesterov with the same momentum).

The center is the model: the root tests and snapshots c, and the final
weights of every rank are c. A snapshot therefore resumes, with any number
of ranks, as a run whose copies all start at the center.
"""
import logging

from . import algorithms
from .cluster_base import ClusterStrategy

log = logging.getLogger("pycaffe_dist")


class ElasticAveraging(ClusterStrategy):
    """EASGD / EAMSGD over a communicator.

    Args:
        comm: the rank's communicator.
        tau: iterations between elastic exchanges.
        alpha: the moving rate (the paper's choice is beta / ranks, beta = 0.9).
        algorithm: the allreduce algorithm for the exchange (algorithms.ALLREDUCE).
    """

    def __init__(self, comm, tau=10, alpha=0.9, algorithm="mpi", chunk=algorithms.CHUNK_BYTES):
        super().__init__(comm)
        self.tau, self.alpha = int(tau), float(alpha)
        self.algorithm, self.chunk = algorithm, chunk
        self.center = None
        self._elastic = None
        self._last_exchange = None

    def attach(self, solver):
        super().attach(solver)
        if solver.is_root:
            # The center is the model the root reports and saves.
            for name in ("test_all", "snapshot"):
                setattr(solver, name, self._on_center(getattr(solver, name)))
        return self

    def start(self, solver):
        super().start(solver)
        self.center = solver.net.flat_data.copy()
        self._elastic = solver.net.xp.empty_like(self.center)
        self._last_exchange = solver.iter

    def iteration(self, solver):
        if solver.iter % self.tau == 0:
            self.exchange(solver)

    def exchange(self, solver):
        """The elastic step: pull x toward c and c toward the ranks' mean."""
        x, d = solver.net.flat_data, self._elastic
        solver.net.xp.subtract(x, self.center, out=d)
        x -= self.alpha * d
        algorithms.allreduce(self.comm, d, self.algorithm, self.chunk)
        self.center += self.alpha * d
        self._last_exchange = solver.iter

    def finish(self, solver):
        if self.center is None:
            return
        if self._last_exchange != solver.iter:
            self.exchange(solver)       # every rank ran the same iterations, so all meet here
        solver.net.flat_data[...] = self.center

    def _on_center(self, method):
        def run(*args, **kwargs):
            if self.center is None:
                return method(*args, **kwargs)
            x = self.solver.net.flat_data
            mine = x.copy()
            x[...] = self.center
            try:
                return method(*args, **kwargs)
            finally:
                x[...] = mine
        return run
