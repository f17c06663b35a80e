"""Under mpiexec: every MPIComm call and allreduce algorithm on buffers staged through host memory.

    staging.py numpy|cupy

numpy: HostStaging(stage_numpy=True) sends numpy arrays down the path CuPy
arrays take (lease a pooled host buffer, copy in, MPI, copy back), so it
runs without a GPU. cupy: real device arrays. Each result is checked
against sums computed here with numpy; the pool must stop growing after
the first round. Prints "staging checks passed" or exits 1 naming the failures.
"""
import sys

import numpy

from pycaffe_dist import backend
from pycaffe_dist.parallel import algorithms
from pycaffe_dist.parallel.mpi import MPIComm
from pycaffe_dist.parallel.staging import HostStaging

kind = sys.argv[1]
xp = backend.cupy if kind == "cupy" else numpy
if kind == "cupy":
    from pycaffe_dist.parallel.mpi import local_rank
    backend.set_device(local_rank() % backend.cupy.cuda.runtime.getDeviceCount())
comm = MPIComm(timeout=30, staging=HostStaging(stage_numpy=kind == "numpy"))
rank, size = comm.rank, comm.size
failures = []
N = 1001            # not a multiple of any rank count


def values(r, n=N, dtype=numpy.float32):
    """Rank-dependent integers: their sums are exact in float32."""
    return ((numpy.arange(n) * 7 + 3 * r) % 11 - 5 + r).astype(dtype)


def check(name, buf, expected):
    host = backend.to_host(buf)
    if type(buf) is not xp.ndarray:
        failures.append("%s: the result is a %s, not the %s array given" % (name, type(buf), xp.__name__))
    elif not numpy.array_equal(host, expected):
        failures.append("%s: max error %g" % (name, numpy.abs(host - expected).max()))


total = sum(values(r) for r in range(size))
for round_ in range(3):
    buf = xp.asarray(values(rank))
    comm.allreduce(buf)
    check("allreduce", buf, total)

    buf = xp.asarray(values(rank))
    comm.reduce(buf, root=size - 1)
    check("reduce to rank %d" % (size - 1), buf, total if rank == size - 1 else values(rank))

    buf = xp.asarray(values(rank))
    comm.bcast(buf, root=1)
    check("bcast from rank 1", buf, values(1))

    everyone = xp.zeros((size, N), numpy.float32)
    comm.allgather(xp.asarray(values(rank)), everyone)
    check("allgather", everyone, numpy.stack([values(r) for r in range(size)]))

    # Around the ring with blocking calls, then with requests tested one by one (as SSP does).
    right, left = (rank + 1) % size, (rank - 1) % size
    got = xp.zeros(N, numpy.float32)
    if rank % 2:
        comm.recv(got, left, tag=3)
        comm.send(xp.asarray(values(rank)), right, tag=3)
    else:
        comm.send(xp.asarray(values(rank)), right, tag=3)
        comm.recv(got, left, tag=3)
    check("send/recv", got, values(left))
    got = xp.zeros(N, numpy.float32)
    receive = comm.irecv(got, left, tag=4)
    send = comm.isend(xp.asarray(values(rank, dtype=numpy.float32) * 2), right, tag=4)
    comm.poll(receive.Test, "irecv")
    comm.waitall([send], "isend")
    check("isend/irecv, Test", got, values(left) * 2)
    # Sends completed by a bare Testall, as SSP does: their host buffers must still come back.
    got = xp.zeros(N, numpy.float32)
    receive = comm.irecv(got, left, tag=5)
    send = comm.isend(xp.asarray(values(rank)), right, tag=5)
    comm.poll(lambda pair=(send, receive): comm.MPI.Request.Testall(list(pair)), "Testall")
    receive.Test()
    check("isend/irecv, Testall", got, values(left))

    for name in algorithms.ALLREDUCE:
        buf = xp.asarray(values(rank))
        algorithms.allreduce(comm, buf, name, chunk=1024)       # several pieces per message
        check("%s allreduce" % name, buf, total)
    for name in ("ring", "mpi"):        # MPI has no float16 sum: "mpi" runs the ring then
        buf = xp.asarray(values(rank, dtype=numpy.float64))
        algorithms.allreduce(comm, buf, name, wire=numpy.float16)
        check("%s allreduce, float16 on the wire" % name, buf, total.astype(numpy.float64))
    if round_ == 0:
        pooled = comm.staging.allocations
if comm.staging.allocations != pooled:
    failures.append("the host pool grew after the first round: %d -> %d buffers" % (pooled, comm.staging.allocations))
if not comm.staging.allocations:
    failures.append("nothing was staged")

comm.close()
if failures:
    print("rank %d: %s" % (rank, "; ".join(failures)), flush=True)
    sys.exit(1)
print("rank %d: staging checks passed (%d host buffers)" % (rank, comm.staging.allocations), flush=True)
