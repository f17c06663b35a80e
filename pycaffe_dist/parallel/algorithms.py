"""Allreduce written on point-to-point messages, so it can be compared with MPI's own.

    binomial          reduce up a binomial tree to rank 0, broadcast back down
                      (FireCaffe's reduction tree, Caffe's P2P tree): 2*log2(p) steps
                      of the whole buffer on the critical path
    ring              reduce-scatter then allgather around a ring (Horovod, NCCL):
                      2(p-1) steps of n/p, 2(p-1)/p*n bytes per rank
    halving_doubling  recursive halving reduce-scatter, recursive doubling
                      allgather (Rabenseifner): 2*log2(p) steps, 2(p-1)/p*n bytes
    mpi               the communicator's own allreduce (the reference)

Every message is cut into pieces of `chunk` bytes, all posted at once, and
each received piece is added as soon as it lands, so a 100 MB gradient
never sits in one message and the additions overlap the transfers.
Each element is summed at one place in a fixed order and then copied to
every rank, so all ranks end with the same bits. `wire` sends the messages
in another dtype (float16 compression): sums are still taken in the
buffer's dtype, and each result is rounded to the wire dtype once, by its
owner, before it is distributed.

The point-to-point algorithms need a communicator with isend/irecv/waitany
(the MPI one); select one with `parallel_param { algorithm: "ring" }`.
A CuPy buffer is copied to host memory once per call (the communicator's
staging) and the algorithm runs on the copy.
"""
import numpy

CHUNK_BYTES = 1 << 20
_TAG = 7000            # tags of this module's messages: _TAG + piece index
_WINDOW = 4            # pieces in flight per child in the tree's pipelined reduce


def mpi_allreduce(comm, buf, chunk=CHUNK_BYTES, wire=None):
    """The communicator's own allreduce (MPI_Allreduce on MPIComm)."""
    if wire is not None and numpy.dtype(wire) != buf.dtype:
        return ring_allreduce(comm, buf, chunk, wire)   # MPI has no float16 sum
    comm.allreduce(buf)
    return buf


# -- the pipelined exchange every algorithm is made of -------------------------------------------
def _pieces(n, itemsize, chunk):
    step = max(int(chunk) // itemsize, 1)
    return [(i, min(i + step, n)) for i in range(0, n, step)] or [(0, 0)]


def _scratch(comm, n, dtype, slot=0):
    """A reusable receive buffer of `n` items, cached on the communicator."""
    cache = comm.__dict__.setdefault("_algorithm_scratch", {})
    key = (numpy.dtype(dtype).str, slot)
    buf = cache.get(key)
    if buf is None or buf.size < n:
        buf = cache[key] = numpy.empty(max(n, 1), dtype)
    return buf[:n]


def exchange(comm, send, dest, recv, source, add, what, chunk=CHUNK_BYTES, wire=None):
    """Send `send` to `dest` while receiving from `source` into `recv`, piece by piece.

    With `add`, received pieces are added into `recv`; otherwise they
    replace it. Either side may be None. `wire`: the dtype on the wire.
    """
    dtype = (send if send is not None else recv).dtype
    wire = numpy.dtype(wire) if wire is not None else dtype
    sends = []
    if send is not None and send.size:
        staged = send if wire == dtype else send.astype(wire)
        sends = [comm.isend(staged[a:b], dest, _TAG + k)
                 for k, (a, b) in enumerate(_pieces(staged.size, wire.itemsize, chunk))]
    if recv is not None and recv.size:
        direct = not add and wire == dtype
        landing = recv if direct else _scratch(comm, recv.size, wire)
        pieces = _pieces(recv.size, wire.itemsize, chunk)
        receives = [comm.irecv(landing[a:b], source, _TAG + k) for k, (a, b) in enumerate(pieces)]
        label = "%s: recv from rank %d" % (what, source)
        for _ in pieces:
            k = comm.waitany(receives, label, (source,))
            a, b = pieces[k]
            if add:
                recv[a:b] += landing[a:b]
            elif not direct:
                recv[a:b] = landing[a:b]
    if sends:
        comm.waitall(sends, "%s: send to rank %d" % (what, dest), (dest,))


def _name(comm, algorithm, buf):
    """'ring allreduce of 68 values for layer ip2 at iteration 12': the start of failure messages."""
    label = getattr(comm, "_label", None)
    return label(algorithm, buf) if label is not None else algorithm


def _round_to(buf, wire):
    if wire is not None and numpy.dtype(wire) != buf.dtype:
        buf[...] = buf.astype(wire)


# -- ring ----------------------------------------------------------------------------------------
def ring_allreduce(comm, buf, chunk=CHUNK_BYTES, wire=None):
    """Sum `buf` over all ranks around a ring: reduce-scatter, then allgather."""
    p, r = comm.size, comm.rank
    if p == 1:
        return buf
    flat = buf.reshape(-1)
    bounds = [flat.size * i // p for i in range(p + 1)]
    segment = lambda i: flat[bounds[i % p]:bounds[i % p + 1]]  # noqa: E731
    right, left = (r + 1) % p, (r - 1) % p
    what = _name(comm, "ring allreduce", flat)
    for s in range(p - 1):          # after step s, segment r-s-1 holds s+2 ranks' sum
        exchange(comm, segment(r - s), right, segment(r - s - 1), left, True,
                 "%s, reduce-scatter step %d" % (what, s), chunk, wire)
    _round_to(segment(r + 1), wire)     # this rank now owns segment r+1's total
    for s in range(p - 1):
        exchange(comm, segment(r + 1 - s), right, segment(r - s), left, False,
                 "%s, allgather step %d" % (what, s), chunk, wire)
    return buf


# -- binomial tree -------------------------------------------------------------------------------
def _tree(rank, size):
    """(parent or None, children nearest first) of `rank` in a binomial tree rooted at 0."""
    children, step = [], 1
    while step < size and rank % (2 * step) == 0:
        if rank + step < size:
            children.append(rank + step)
        step *= 2
    parent = rank - step if rank else None
    return parent, children


def binomial_allreduce(comm, buf, chunk=CHUNK_BYTES, wire=None):
    """Sum `buf` up a binomial tree to rank 0 and broadcast it back down, pipelined by pieces.

    A rank forwards piece k to its parent as soon as every child's piece k
    has been added, so the tree's levels work on different pieces at once.
    """
    if comm.size == 1:
        return buf
    flat = buf.reshape(-1)
    wire_t = numpy.dtype(wire) if wire is not None else flat.dtype
    parent, children = _tree(comm.rank, comm.size)
    pieces = _pieces(flat.size, wire_t.itemsize, chunk)
    name = _name(comm, "tree allreduce", flat)
    what = name + ", reduce"
    # Up: a window of pieces in flight from each child, each into its own slot.
    width = max(b - a for a, b in pieces)
    slots = {c: _scratch(comm, _WINDOW * width, wire_t, slot=i + 1).reshape(_WINDOW, width)
             for i, c in enumerate(children)}
    pending = {}

    def post(k):
        if k < len(pieces):
            a, b = pieces[k]
            for c in children:
                pending[c, k] = comm.irecv(slots[c][k % _WINDOW, :b - a], c, _TAG + k)
    for k in range(min(_WINDOW, len(pieces))):
        post(k)
    sends, staging = [], []
    for k, (a, b) in enumerate(pieces):
        for c in children:
            comm.waitall([pending.pop((c, k))], "%s: recv from rank %d" % (what, c), (c,))
            flat[a:b] += slots[c][k % _WINDOW, :b - a]
        post(k + _WINDOW)
        if parent is not None:
            piece = flat[a:b] if wire_t == flat.dtype else flat[a:b].astype(wire_t)
            staging.append(piece)
            sends.append(comm.isend(piece, parent, _TAG + k))
    if parent is not None:
        comm.waitall(sends, "%s: send to rank %d" % (what, parent), (parent,))
    # Down: pieces arrive from the parent and are passed on at once.
    what = name + ", broadcast"
    if parent is None:
        _round_to(flat, wire)
        landing = flat
    else:
        landing = flat if wire_t == flat.dtype else _scratch(comm, flat.size, wire_t)
        receives = [comm.irecv(landing[a:b], parent, _TAG + k) for k, (a, b) in enumerate(pieces)]
    outgoing = landing if wire_t == flat.dtype or parent is not None else flat.astype(wire_t)
    sends = []
    for k, (a, b) in enumerate(pieces):
        if parent is not None:
            comm.waitall([receives[k]], "%s: recv from rank %d" % (what, parent), (parent,))
        sends += [comm.isend(outgoing[a:b], c, _TAG + k) for c in reversed(children)]
    comm.waitall(sends, "%s: send to children %s" % (what, children), tuple(children))
    if landing is not flat:
        flat[...] = landing
    return buf


# -- recursive halving and doubling ----------------------------------------------------------------
def halving_doubling_allreduce(comm, buf, chunk=CHUNK_BYTES, wire=None):
    """Rabenseifner's allreduce: recursive halving reduce-scatter, recursive doubling allgather.

    With p not a power of two, the first 2*(p - p2) ranks pair up first:
    each odd one hands its buffer to its even neighbour and sits out, and
    gets the result back at the end.
    """
    p, r = comm.size, comm.rank
    if p == 1:
        return buf
    flat = buf.reshape(-1)
    p2 = 1 << (p.bit_length() - 1)
    extra = p - p2
    what = _name(comm, "halving-doubling allreduce", flat)
    if r < 2 * extra:
        if r % 2:
            exchange(comm, flat, r - 1, None, None, False, what + ", fold", chunk, wire)
            exchange(comm, None, None, flat, r - 1, False, what + ", unfold", chunk, wire)
            return buf
        exchange(comm, None, None, flat, r + 1, True, what + ", fold", chunk, wire)
        me = r // 2
    else:
        me = r - extra
    real = lambda v: v * 2 if v < extra else v + extra  # noqa: E731
    lo, hi, ranges = 0, flat.size, []
    mask = p2 // 2
    while mask:                     # halving: keep one half of the range, add the partner's copy
        partner = me ^ mask
        mid = (lo + hi) // 2
        keep, give = ((lo, mid), (mid, hi)) if me < partner else ((mid, hi), (lo, mid))
        exchange(comm, flat[give[0]:give[1]], real(partner), flat[keep[0]:keep[1]], real(partner), True,
                 "%s, halving (distance %d)" % (what, mask), chunk, wire)
        ranges.append((give, keep))
        lo, hi = keep
        mask //= 2
    _round_to(flat[lo:hi], wire)
    mask = 1
    for give, keep in reversed(ranges):    # doubling: trade owned ranges back
        partner = me ^ mask
        exchange(comm, flat[keep[0]:keep[1]], real(partner), flat[give[0]:give[1]], real(partner), False,
                 "%s, doubling (distance %d)" % (what, mask), chunk, wire)
        mask *= 2
    if r < 2 * extra:
        exchange(comm, flat, r + 1, None, None, False, what + ", unfold", chunk, wire)
    return buf


ALLREDUCE = {
    "mpi": mpi_allreduce,
    "binomial": binomial_allreduce,
    "ring": ring_allreduce,
    "halving_doubling": halving_doubling_allreduce,
}
POINT_TO_POINT = ("binomial", "ring", "halving_doubling")


def allreduce(comm, buf, algorithm="mpi", chunk=CHUNK_BYTES, wire=None):
    """Sum `buf` in place over all ranks with the named algorithm; returns `buf`."""
    try:
        run = ALLREDUCE[algorithm]
    except KeyError:
        raise ValueError("unknown allreduce algorithm %r (known: %s)" % (algorithm, ", ".join(ALLREDUCE))) from None
    staging = getattr(comm, "staging", None)
    mpi_itself = run is mpi_allreduce and (wire is None or numpy.dtype(wire) == buf.dtype)
    if not mpi_itself and staging is not None and staging.needed(buf):
        # A device (CuPy) buffer: the whole algorithm runs on one host copy, added up on the CPU.
        with staging.on_host(buf) as host:
            run(comm, host, chunk, wire)
        return buf
    return run(comm, buf, chunk, wire)


def ring_allgather(comm, mine, out, chunk=CHUNK_BYTES):
    """out (size x len(mine), rank order) gets every rank's `mine`, passed around the ring.

    What compressed gradients exchange: payloads of equal size that cannot
    be summed on the way (sign bits, top-k index lists).
    """
    p, r = comm.size, comm.rank
    out[r] = mine
    for s in range(p - 1):
        exchange(comm, out[(r - s) % p], (r + 1) % p, out[(r - s - 1) % p], (r - 1) % p, False,
                 "ring allgather step %d" % s, chunk)
    return out
