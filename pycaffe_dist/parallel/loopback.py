"""Loopback communicators: workers on one machine meeting in shared memory, no MPI.

One algorithm serves threads and processes; only where the memory and the
barrier come from differs (plain memory and `threading` for threads,
`multiprocessing.RawArray` and a `multiprocessing` barrier for processes).

allreduce is a reduce-scatter then an allgather through shared memory: each
rank copies its buffer into its slot, sums one piece of every slot into the
result area, and copies the whole result back. Every element is summed over
the slots in rank order, so the result is the same to the bit on every rank
and from run to run. Slots and result come in two phases used alternately,
which is why two barriers per call are enough: a rank can only write a
phase's memory again after every peer has passed the next call's first
barrier, by which time all reads of it are done. Buffers larger than the
slots go through in pieces.
"""
import threading

import numpy

from .comm import CommError, Communicator

DEFAULT_CAPACITY = 4 << 20   # bytes per slot; larger buffers go in pieces
MAILBOX_CAPACITY = 1 << 20   # bytes per (source, dest) mailbox for send/recv
_POLL = 0.2                  # seconds between checks of the abort flag


class LoopbackGroup:
    """Shared state of `size` workers on one machine; `comm(rank)` is one worker's view.

    Made by the parent before the workers start. With `processes=True` it is
    built from a multiprocessing context and is handed to worker processes
    as a Process argument (shared memory can only be inherited, not sent).
    """

    def __init__(self, size, processes=False, context=None, capacity=DEFAULT_CAPACITY,
                 mailbox_capacity=MAILBOX_CAPACITY):
        self.size = int(size)
        self.capacity = int(capacity)
        self.mailbox_capacity = int(mailbox_capacity)
        self.processes = processes
        n_bytes = 2 * (self.size + 1) * self.capacity
        n_boxes = self.size * self.size
        box_bytes = n_boxes * self.mailbox_capacity if self.size > 1 else 0
        if processes:
            if context is None:
                import multiprocessing
                context = multiprocessing.get_context("spawn")
            self._memory = context.RawArray("b", n_bytes)
            self._mail = context.RawArray("b", max(box_bytes, 1))
            self._barrier = context.Barrier(self.size)
            self._aborted = context.RawValue("b", 0)
            self._full = [context.Semaphore(0) for _ in range(n_boxes)]
            self._empty = [context.Semaphore(1) for _ in range(n_boxes)]
        else:
            self._memory = bytearray(n_bytes)
            self._mail = bytearray(max(box_bytes, 1))
            self._barrier = threading.Barrier(self.size)
            self._aborted = _Flag()
            self._full = [threading.Semaphore(0) for _ in range(n_boxes)]
            self._empty = [threading.Semaphore(1) for _ in range(n_boxes)]

    def comm(self, rank):
        """The communicator of worker `rank`."""
        if not 0 <= rank < self.size:
            raise ValueError("rank %d is outside a group of %d" % (rank, self.size))
        return LoopbackComm(self, rank)

    def abort(self):
        """Wake every worker blocked in a call with CommError (threads; processes are killed)."""
        self._aborted.value = 1
        self._barrier.abort()

    @property
    def aborted(self):
        return bool(self._aborted.value)


class _Flag:
    value = 0


class LoopbackComm(Communicator):
    """One worker's communicator in a LoopbackGroup."""

    def __init__(self, group, rank):
        self.group = group
        self.rank, self.size = rank, group.size
        cap = group.capacity
        memory = numpy.frombuffer(group._memory, numpy.uint8)
        # [phase][rank] slots, then [phase] results, each `cap` bytes.
        self._slots = memory[:2 * self.size * cap].reshape(2, self.size, cap)
        self._results = memory[2 * self.size * cap:].reshape(2, cap)
        self._mail = numpy.frombuffer(group._mail, numpy.uint8)
        self._phase = 0

    # -- plumbing ------------------------------------------------------------------
    def _wait(self):
        try:
            self.group._barrier.wait()
        except threading.BrokenBarrierError:
            raise CommError("rank %d: the worker group was aborted (a peer failed)" % self.rank) from None

    def _acquire(self, semaphore):
        while not semaphore.acquire(timeout=_POLL):
            if self.group.aborted:
                raise CommError("rank %d: the worker group was aborted (a peer failed)" % self.rank)

    def _pieces(self, buf):
        """Contiguous 1-D pieces of `buf`, each fitting one slot."""
        if not (isinstance(buf, numpy.ndarray) and buf.flags.c_contiguous):
            raise TypeError("loopback communicators take contiguous numpy arrays, got %r" % type(buf))
        flat = buf.reshape(-1)
        step = max(self.group.capacity // flat.itemsize, 1)
        return [flat[i:i + step] for i in range(0, flat.size, step)] or [flat]

    def _area(self, memory, part):
        """`memory` (bytes) seen as `part.size` items of `part.dtype`."""
        return memory[:part.nbytes].view(part.dtype)

    def _next_phase(self):
        self._phase ^= 1
        return self._phase

    # -- collectives -----------------------------------------------------------------
    def allreduce(self, buf):
        if self.size > 1:
            for part in self._pieces(buf):
                self._reduce_part(part, everyone=True)

    def reduce(self, buf, root=0):
        if self.size > 1:
            for part in self._pieces(buf):
                self._reduce_part(part, everyone=False, root=root)

    def _reduce_part(self, part, everyone, root=0):
        phase = self._next_phase()
        self._area(self._slots[phase, self.rank], part)[...] = part
        self._wait()
        # This rank sums piece `rank` of every slot, always in rank order.
        lo = part.size * self.rank // self.size
        hi = part.size * (self.rank + 1) // self.size
        slots = [self._area(self._slots[phase, r], part)[lo:hi] for r in range(self.size)]
        out = self._area(self._results[phase], part)[lo:hi]
        numpy.add(slots[0], slots[1], out=out)
        for s in slots[2:]:
            out += s
        self._wait()
        if everyone or self.rank == root:
            part[...] = self._area(self._results[phase], part)

    def bcast(self, buf, root=0):
        if self.size == 1:
            return
        for part in self._pieces(buf):
            phase = self._next_phase()
            shared = self._area(self._results[phase], part)
            if self.rank == root:
                shared[...] = part
            self._wait()
            if self.rank != root:
                part[...] = shared

    def barrier(self):
        self._wait()

    # -- point to point ---------------------------------------------------------------
    def _box(self, source, dest):
        k = source * self.size + dest
        cap = self.group.mailbox_capacity
        return k, self._mail[k * cap:(k + 1) * cap]

    def _byte_chunks(self, buf):
        if not (isinstance(buf, numpy.ndarray) and buf.flags.c_contiguous):
            raise TypeError("loopback communicators take contiguous numpy arrays, got %r" % type(buf))
        raw = buf.reshape(-1).view(numpy.uint8)
        cap = self.group.mailbox_capacity
        return [raw[i:i + cap] for i in range(0, raw.size, cap)]

    def send(self, buf, dest):
        if dest == self.rank or not 0 <= dest < self.size:
            raise CommError("rank %d cannot send to rank %d in a group of %d" % (self.rank, dest, self.size))
        k, box = self._box(self.rank, dest)
        for chunk in self._byte_chunks(buf):
            self._acquire(self.group._empty[k])
            box[:chunk.size] = chunk
            self.group._full[k].release()

    def recv(self, buf, source):
        if source == self.rank or not 0 <= source < self.size:
            raise CommError("rank %d cannot receive from rank %d in a group of %d"
                            % (self.rank, source, self.size))
        k, box = self._box(source, self.rank)
        for chunk in self._byte_chunks(buf):
            self._acquire(self.group._full[k])
            chunk[...] = box[:chunk.size]
            self.group._empty[k].release()
