"""The communicator interface every parallel strategy is written against.

Named after MPI's calls so an MPI implementation is a thin wrapper. Buffers
are contiguous 1-D arrays (numpy, or cupy for NCCL) and every call works in
place, as the flat parameter buffers (DESIGN.md, contract 2) want. All ranks
must make the same calls in the same order; a call blocks until the peers
it involves have made theirs.
"""
import abc


class CommError(RuntimeError):
    """A collective that cannot complete: a peer is gone or the group was aborted."""


class Communicator(abc.ABC):
    """`size` workers, this one numbered `rank` (0 is the root that logs and snapshots)."""

    rank = 0
    size = 1

    @abc.abstractmethod
    def allreduce(self, buf):
        """Replace `buf` on every rank by the elementwise sum over all ranks."""

    @abc.abstractmethod
    def reduce(self, buf, root=0):
        """Leave the elementwise sum over all ranks in `buf` on `root`; others keep theirs."""

    @abc.abstractmethod
    def bcast(self, buf, root=0):
        """Copy `root`'s `buf` into every rank's `buf`."""

    @abc.abstractmethod
    def barrier(self):
        """Return once every rank has called barrier."""

    @abc.abstractmethod
    def send(self, buf, dest):
        """Send `buf` to rank `dest` (which calls recv with a buffer of the same size)."""

    @abc.abstractmethod
    def recv(self, buf, source):
        """Fill `buf` with what rank `source` sends."""

    def close(self):  # noqa: B027 - optional: most communicators hold nothing
        """Release what the communicator holds (shared memory views, NCCL handles)."""


class SelfComm(Communicator):
    """The group of one: every collective is the identity. Used by 1-worker runs."""

    def allreduce(self, buf):
        pass

    def reduce(self, buf, root=0):
        pass

    def bcast(self, buf, root=0):
        pass

    def barrier(self):
        pass

    def send(self, buf, dest):
        raise CommError("send: a group of one has no rank %d" % dest)

    def recv(self, buf, source):
        raise CommError("recv: a group of one has no rank %d" % source)


def ordered_allreduce(comm, parts):
    """Sum `parts` of all ranks left to right in global order; the result lands in parts[0].

    Rank r holds `parts`, a list of equal-sized buffers that are items
    r*k .. r*k+k-1 of the global sequence (k = len(parts), the same on every
    rank). The result is ((x0 + x1) + x2) + ... whatever the number of ranks,
    which is what makes the deterministic mode exact: a floating-point sum
    only repeats to the bit when its order does. The root gathers the items
    with recv and sends the sum back with bcast.
    """
    total = parts[0]
    if comm.rank == 0:
        for p in parts[1:]:
            total += p
        incoming = total.copy() if comm.size > 1 else None
        for source in range(1, comm.size):
            for _ in range(len(parts)):
                comm.recv(incoming, source)
                total += incoming
    else:
        for p in parts:
            comm.send(p, 0)
    comm.bcast(total, 0)
    return total
