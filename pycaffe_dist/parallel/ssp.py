"""Stale synchronous parallel SGD (Ho et al., NIPS 2013) without a server.

Every rank keeps a full copy of the weights. After each iteration (one
clock) a rank sends its update u_i = (its solver's step) / ranks to every
peer and applies the peers' updates as they arrive. A rank at clock c may
start its next iteration only while c - min(clocks of the peers' updates
it has applied) <= s: it runs at most `s` clocks ahead of the slowest.

s = 0 is bulk synchronous: every rank applies all updates of clock c
before iteration c+1, which is synchronous SGD with the averaged gradient
(momentum and weight decay are linear in the gradient and the weights, so
averaging the updates averages the gradients). Larger s lets fast ranks
run on while slow ones catch up, at the price of computing on weights
that miss up to s clocks of the others' updates.

Each clock moves (ranks - 1) full updates per rank: this trades bandwidth
for not waiting, which is why it is compared with the alternatives.
"""
import numpy

from .cluster_base import ClusterStrategy

_UPDATE, _DONE = 7100, 7101


class StaleSynchronous(ClusterStrategy):
    """SSP over an MPI communicator (it needs isend/irecv).

    Args:
        comm: the rank's MPIComm.
        staleness: s, the clocks a rank may run ahead of the slowest (0: BSP).
    """

    def __init__(self, comm, staleness=0):
        super().__init__(comm)
        self.staleness = int(staleness)
        self.clock = 0
        self.peers = [r for r in range(comm.size) if r != comm.rank]
        self.applied = {}            # peer -> updates of it applied here
        self._incoming, self._receives = {}, {}
        self._sends = []             # (requests, buffer) until the peers have it
        self._previous = None

    def start(self, solver):
        super().start(solver)
        w = solver.net.flat_data
        self._previous = w.copy()
        for r in self.peers:
            self.applied[r] = 0
            self._incoming[r] = numpy.empty_like(w)
            self._receives[r] = self.comm.irecv(self._incoming[r], r, _UPDATE)

    def iteration(self, solver):
        self._publish(solver)
        self.comm.poll(lambda: self._take(solver) or self._may_run(), self._waiting("clock %d" % self.clock),
                       tuple(self._slowest()))

    def finish(self, solver):
        if self._previous is None:
            return
        self._publish(solver)
        # A rank may stop early (a signal): peers learn each other's final clock.
        final = {r: numpy.zeros(1, numpy.int64) for r in self.peers}
        mine = numpy.array([self.clock], numpy.int64)
        done = {r: self.comm.irecv(final[r], r, _DONE) for r in self.peers}
        sends = [self.comm.isend(mine, r, _DONE) for r in self.peers]

        def complete():
            self._take(solver, limit=float("inf"))
            return all(done[r].Test() and self.applied[r] >= final[r][0] for r in self.peers)
        self.comm.poll(complete, self._waiting("the final clock %d" % self.clock), tuple(self.peers))
        self.comm.waitall(sends + [req for reqs, _ in self._sends for req in reqs], "ssp: final sends")
        for request in self._receives.values():
            request.Cancel()
        self.comm.waitall(list(self._receives.values()), "ssp: cancelling receives")
        self._sends = []

    # -- the exchange -------------------------------------------------------------------------
    def _publish(self, solver):
        """Scale this clock's own step to 1/ranks and send it to every peer."""
        w = solver.net.flat_data
        update = (self._previous - w) * (1.0 / self.comm.size)
        numpy.subtract(self._previous, update, out=w)
        self._sends.append(([self.comm.isend(update, r, _UPDATE) for r in self.peers], update))
        self.clock += 1
        self._take(solver)
        self._previous[...] = w

    def _take(self, solver, limit=None):
        """Apply the peer updates that have arrived, up to clock `limit` (this rank's); forget finished sends.

        A peer may already be a clock ahead (it had this rank's update before
        this rank saw its own); its newer update waits, so a rank never
        computes on more of a peer's work than of its own, and s = 0 is
        exactly BSP.
        """
        w = solver.net.flat_data
        limit = self.clock if limit is None else limit
        for r in self.peers:
            while self.applied[r] < limit and self._receives[r].Test():
                w -= self._incoming[r]
                self._previous -= self._incoming[r]
                self.applied[r] += 1
                self._receives[r] = self.comm.irecv(self._incoming[r], r, _UPDATE)
        self._sends = [(reqs, buf) for reqs, buf in self._sends if not self.comm.MPI.Request.Testall(reqs)]
        return False

    def _may_run(self):
        return self.clock - min(self.applied.values()) <= self.staleness

    def _slowest(self):
        low = min(self.applied.values())
        return [r for r in self.peers if self.applied[r] == low]

    def _waiting(self, what):
        return "ssp (staleness %d) waiting at %s for the updates of ranks %s" % (
            self.staleness, what, ", ".join(map(str, self._slowest())))
