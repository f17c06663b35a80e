"""Under mpiexec: every allreduce algorithm against numpy sums and MPI's Allreduce; exits 1 on a mismatch."""
import hashlib
import sys

import numpy

from pycaffe_dist.parallel import algorithms
from pycaffe_dist.parallel.mpi import MPIComm

comm = MPIComm(timeout=30)
rank, size = comm.rank, comm.size
failures = []


def integers(r, n, dtype):
    """Rank-dependent values whose sums are exact in every dtype used."""
    return ((numpy.arange(n) * 7 + 3 * r) % 11 - 5 + r).astype(dtype)


def same_everywhere(buf):
    digest = numpy.frombuffer(hashlib.sha1(buf.tobytes()).digest(), numpy.uint8).copy()
    everyone = numpy.zeros((size, digest.size), numpy.uint8)
    comm.allgather(digest, everyone)
    return (everyone == everyone[0]).all()


def check(name, ok):
    if not ok:
        failures.append(name)


for algorithm in algorithms.ALLREDUCE:
    for n in (1, 2, 5, 1001, 30011):
        for dtype in (numpy.float32, numpy.float64):
            for chunk in (64 if n < 2000 else 4096, algorithms.CHUNK_BYTES):
                buf = integers(rank, n, dtype)
                algorithms.allreduce(comm, buf, algorithm, chunk=chunk)
                expected = sum(integers(r, n, dtype) for r in range(size))
                check("%s n=%d %s chunk=%d: exact sum" % (algorithm, n, dtype.__name__, chunk),
                      numpy.array_equal(buf, expected))
        # Random floats: the same bits on every rank, and MPI's sum to rounding.
        rng = numpy.random.default_rng(rank)
        data = rng.standard_normal(n).astype(numpy.float32)
        ours, reference = data.copy(), data.copy()
        algorithms.allreduce(comm, ours, algorithm, chunk=256)
        comm.comm.Allreduce(comm.MPI.IN_PLACE, reference)
        check("%s n=%d: same bits on every rank" % (algorithm, n), same_everywhere(ours))
        check("%s n=%d: equals MPI Allreduce" % (algorithm, n), numpy.allclose(ours, reference, atol=1e-5))
        # Half precision on the wire: float16 rounding, still the same bits everywhere.
        half = data.copy()
        algorithms.allreduce(comm, half, algorithm, chunk=256, wire=numpy.float16)
        check("%s n=%d: float16 wire, same bits" % (algorithm, n), same_everywhere(half))
        check("%s n=%d: float16 wire, close" % (algorithm, n),
              numpy.allclose(half, reference, rtol=2e-3 * size, atol=2e-3 * size))

# allgather of equal payloads, and the plain interface.
mine = integers(rank, 13, numpy.int32)
out = numpy.zeros((size, 13), numpy.int32)
algorithms.ring_allgather(comm, mine, out, chunk=16)
check("ring_allgather", all(numpy.array_equal(out[r], integers(r, 13, numpy.int32)) for r in range(size)))
buf = integers(rank, 10, numpy.float64)
comm.reduce(buf, root=size - 1)
if rank == size - 1:
    check("reduce", numpy.array_equal(buf, sum(integers(r, 10, numpy.float64) for r in range(size))))
buf = integers(rank, 10, numpy.float64)
comm.bcast(buf, root=1)
check("bcast", numpy.array_equal(buf, integers(1, 10, numpy.float64)))
message = numpy.full(7, float(rank))
incoming = numpy.zeros(7)
request = comm.isend(message, (rank + 1) % size)
comm.recv(incoming, (rank - 1) % size)
comm.waitall([request], "ring send")
check("send/recv", (incoming == (rank - 1) % size).all())
comm.barrier()

if failures:
    print("rank %d: %d failures:\n  %s" % (rank, len(failures), "\n  ".join(failures)), flush=True)
    sys.exit(1)
print("rank %d: all allreduce checks passed" % rank, flush=True)
