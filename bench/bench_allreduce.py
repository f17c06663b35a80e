"""Each allreduce algorithm against MPI's own Allreduce, on float32 buffers, in one run.

    .venv/bin/python bench/bench_allreduce.py [--ranks 2,4] [--sizes 1,10] [--repeat 5]
        [--algorithms binomial,ring,halving_doubling,mpi] [--chunk 1048576]

Without mpiexec around it, the script launches itself under `mpiexec -n R`
for each R in --ranks. Each rank times every call between barriers; a call's
time is the slowest rank's, and the figure is the median over --repeat
calls. The ratio is against blocking MPI_Allreduce measured in the same job
("mpi" is our communicator's nonblocking Iallreduce with a polled deadline).
"""
import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", default="2,4")
    p.add_argument("--sizes", default="1,10", help="millions of float32 values")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--algorithms", default="binomial,ring,halving_doubling,mpi")
    p.add_argument("--chunk", type=int, default=None, help="bytes per message piece")
    return p.parse_args()


def launch(args):
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    for ranks in args.ranks.split(","):
        command = [mpiexec, "-n", ranks, sys.executable, "-m", "mpi4py", os.path.abspath(__file__)] + sys.argv[1:]
        status = subprocess.call(command, env=env)
        if status:
            return status
    return 0


def measure(args):
    import numpy
    from pycaffe_dist.parallel import algorithms
    from pycaffe_dist.parallel.mpi import MPIComm
    comm = MPIComm(timeout=120)
    MPI, world = comm.MPI, comm.comm
    chunk = args.chunk or algorithms.CHUNK_BYTES

    def slowest(seconds):
        t = numpy.array([seconds])
        world.Allreduce(MPI.IN_PLACE, t, op=MPI.MAX)
        return float(t[0])

    def timed(call, buf):
        times = []
        for _ in range(args.repeat + 1):          # the first call warms up buffers and connections
            world.Barrier()
            start = time.perf_counter()
            call(buf)
            times.append(slowest(time.perf_counter() - start))
        return float(numpy.median(times[1:]))

    names = args.algorithms.split(",")
    if comm.rank == 0:
        print("\n%d ranks, float32, median of %d calls (ms); ratio = time / MPI_Allreduce's"
              % (comm.size, args.repeat))
        print("%-10s %-18s %10s %8s" % ("size", "algorithm", "ms", "ratio"))
    for millions in args.sizes.split(","):
        n = int(float(millions) * 1e6)
        buf = numpy.random.default_rng(comm.rank).standard_normal(n).astype(numpy.float32)
        reference = timed(lambda b: world.Allreduce(MPI.IN_PLACE, b), buf)
        rows = [("MPI_Allreduce", reference)]
        for name in names:
            rows.append((name, timed(lambda b, name=name: algorithms.allreduce(comm, b, name, chunk=chunk), buf)))
        if comm.rank == 0:
            for name, seconds in rows:
                print("%-10s %-18s %10.2f %8.2f" % ("%sM" % millions, name, seconds * 1e3, seconds / reference))
            best = min(rows[1:], key=lambda r: r[1] if r[0] != "mpi" else float("inf"))
            print("%-10s best of ours: %s at %.2fx MPI_Allreduce" % ("", best[0], best[1] / reference), flush=True)
    comm.close()


if __name__ == "__main__":
    arguments = parse()
    if any(v in os.environ for v in ("PMI_RANK", "OMPI_COMM_WORLD_RANK")):
        measure(arguments)
    else:
        sys.exit(launch(arguments))
