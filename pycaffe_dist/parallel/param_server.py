"""A parameter server sharded over S ranks: synchronous rounds, or asynchronous Downpour.

The last S ranks of the job serve; the others train. Server j holds the
j-th contiguous slice of the flat weights. Each worker runs its own solver
(lr policy, momentum and weight decay stay on the workers) and exchanges
weight updates, not gradients:

* every n_push iterations it pushes the sum of its own steps since the
  last push, divided by the number of workers, to the servers;
* every n_fetch iterations it fetches the weights and keeps on top of them
  the steps it has not pushed yet.

Downpour (Dean et al., NIPS 2012) applies each push as it arrives and
answers each fetch at once. The synchronous server works in rounds: it
applies a round's pushes only when every worker has pushed, summed in
worker order, and answers a round's fetches after that, which makes
n_push = n_fetch = 1 synchronous SGD with the averaged gradient.

The root worker (rank 0) sends its weights to the servers first, so a
restored or fine-tuned run serves the root's weights. At the end every
worker pushes what is left and fetches the final weights, which the
servers hand out only once every worker is done.
"""
import numpy

from .cluster_base import ClusterStrategy

_INIT, _PUSH, _DONE, _FETCH, _FINAL, _REPLY = range(7200, 7206)


def shard_bounds(n, servers):
    """Offsets of the servers' slices of an n-value buffer."""
    return [n * j // servers for j in range(servers + 1)]


class ParameterClient(ClusterStrategy):
    """A training rank's side of the parameter server.

    Args:
        comm: the rank's MPIComm (the job's last `servers` ranks serve).
        servers: S, the number of server ranks.
        n_fetch, n_push: fetch weights / push updates every that many iterations.
    """

    def __init__(self, comm, servers=1, n_fetch=1, n_push=1):
        super().__init__(comm)
        self.servers, self.n_fetch, self.n_push = int(servers), int(n_fetch), int(n_push)
        self.workers = comm.size - self.servers
        self.server_ranks = list(range(self.workers, comm.size))
        self._previous = self._unpushed = self._bounds = None
        self._header = numpy.zeros(1, numpy.int64)

    def start(self, solver):
        w = solver.net.flat_data
        _share_layout(self.comm, w)
        self._bounds = shard_bounds(w.size, self.servers)
        if solver.is_root:
            for j, server in enumerate(self.server_ranks):
                self.comm.send(self._slice(w, j), server, _INIT)
        self._unpushed = numpy.zeros_like(w)
        self._fetch(solver, _FETCH)
        self._previous = w.copy()

    def iteration(self, solver):
        w = solver.net.flat_data
        self._unpushed += self._previous - w
        if solver.iter % self.n_push == 0:
            self._push(_PUSH)
        if solver.iter % self.n_fetch == 0:
            self._fetch(solver, _FETCH)
        self._previous[...] = w

    def finish(self, solver):
        if self._previous is None:
            return
        self._unpushed += self._previous - solver.net.flat_data
        self._push(_DONE)
        self._fetch(solver, _FINAL)

    def _slice(self, buf, j):
        return buf[self._bounds[j]:self._bounds[j + 1]]

    def _push(self, tag):
        update = self._unpushed * (1.0 / self.workers)
        requests = [self.comm.isend(self._slice(update, j), s, tag) for j, s in enumerate(self.server_ranks)]
        self.comm.waitall(requests, "push to the parameter servers", tuple(self.server_ranks))
        self._unpushed[...] = 0

    def _fetch(self, solver, tag):
        w = solver.net.flat_data
        self._header[0] = solver.iter
        requests = [self.comm.isend(self._header, s, tag) for s in self.server_ranks]
        requests += [self.comm.irecv(self._slice(w, j), s, _REPLY) for j, s in enumerate(self.server_ranks)]
        what = "%sfetch from the parameter servers" % ("final " if tag == _FINAL else "")
        self.comm.waitall(requests, what, tuple(self.server_ranks))
        w -= self._unpushed          # steps taken here but not pushed yet stay on top


def _share_layout(comm, w):
    """Tell every rank, servers included, the size and dtype of the flat weights (a collective)."""
    layout = numpy.array([w.size, w.dtype.itemsize], numpy.int64)
    comm.bcast(layout, 0)


def serve(comm, servers=1, synchronous=False):
    """A server rank's whole life: hold slice rank - workers of the weights until every worker is done.

    Returns the number of pushes applied.
    """
    workers = comm.size - servers
    j = comm.rank - workers
    layout = numpy.zeros(2, numpy.int64)
    comm.bcast(layout, 0)
    n, itemsize = int(layout[0]), int(layout[1])
    bounds = shard_bounds(n, servers)
    weights = numpy.zeros(bounds[j + 1] - bounds[j], numpy.float32 if itemsize == 4 else numpy.float64)
    incoming = numpy.empty_like(weights)
    header = numpy.zeros(1, numpy.int64)
    initialised, pending, done = False, {}, set()
    waiting_fetches, waiting_finals, replies = [], [], []
    answered_finals, pushes = 0, 0
    comm.where = "parameter server %d of %d" % (j, servers)

    def reply(dest):
        copy = weights.copy()            # pushes may change the weights while the reply is on its way
        replies.append((comm.isend(copy, dest, _REPLY), copy))

    while answered_finals < workers:
        missing = [w for w in range(workers) if w not in pending and w not in done]
        source, tag, _ = comm.probe("parameter server %d: waiting for workers %s"
                                    % (j, ", ".join(map(str, missing)) or "to fetch"))
        if tag in (_PUSH, _DONE, _INIT):
            comm.recv(incoming, source, tag)
            if tag == _INIT:
                weights[...] = incoming
                initialised = True
            elif synchronous:
                pending[source] = incoming.copy()
            else:
                weights -= incoming
            if tag == _DONE:
                done.add(source)
            pushes += tag != _INIT
        else:
            comm.recv(header, source, tag)
            (waiting_finals if tag == _FINAL else waiting_fetches).append(source)
        if synchronous and pending and all(w in pending or w in done for w in range(workers)):
            for w in sorted(pending):            # worker order: the same sum whatever the arrival order
                weights -= pending[w]
            pending.clear()
        if initialised:
            for dest in [d for d in waiting_fetches if d not in pending]:
                waiting_fetches.remove(dest)
                reply(dest)
            if len(done) == workers and not pending:
                for dest in waiting_finals:
                    reply(dest)
                answered_finals += len(waiting_finals)
                waiting_finals = []
        replies = [(r, b) for r, b in replies if not r.Test()]
    comm.waitall([r for r, _ in replies], "parameter server %d: final replies" % j)
    return pushes
