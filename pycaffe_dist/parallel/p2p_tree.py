"""Caffe's P2P synchronisation tree, written on send/recv so it runs on any communicator.

Pairs of workers reduce, then pairs of pairs, up to rank 0; the sum then
flows back down the same tree. It moves 2*log2(p) messages of the whole
buffer per worker on the critical path, against NCCL's ring (or the
loopback reduce-scatter), which is what comparing them shows. Select it
with `parallel_param { algorithm: "tree" }`.
"""


def tree_allreduce(comm, buf, scratch=None):
    """Sum `buf` over all ranks with a binomial tree; every rank gets the sum."""
    if comm.size == 1:
        return buf
    if scratch is None or scratch.shape != buf.shape:
        scratch = buf.copy()
    rank, size = comm.rank, comm.size
    step = 1
    while step < size:              # up: rank r+step hands its partial sum to r
        if rank % (2 * step) == step:
            comm.send(buf, rank - step)
            break
        if rank + step < size:
            comm.recv(scratch, rank + step)
            buf += scratch
        step *= 2
    top = 1
    while top < size:
        top *= 2
    step = top // 2
    while step >= 1:                # down: the sum goes back the same way
        if rank % (2 * step) == 0 and rank + step < size:
            comm.send(buf, rank + step)
        elif rank % (2 * step) == step:
            comm.recv(buf, rank - step)
        step //= 2
    return buf
