"""The cost model against allreduce times measured here, at 2, 3 and 4 ranks, in one run.

    .venv/bin/python bench/bench_cluster.py [--ranks 2,3,4] [--sizes 1,10] [--repeat 5]

Inside each `mpiexec -n R` job the model's coefficients are measured
first, at each buffer size (caches make them depend on it): alpha (half a
ping-pong of 8 bytes), beta (half a ping-pong of the buffer, less alpha, per
byte) and gamma (numpy adding two such buffers, per byte), with the cores
this job may use (ranks beyond them share the cores: Network.cores). Then each
point-to-point algorithm is timed (median of --repeat calls, slowest rank)
and printed next to cost_model.allreduce_seconds' prediction, with the
ratio predicted / measured (target: within 0.75-1.25).
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
    p.add_argument("--ranks", default="2,3,4")
    p.add_argument("--sizes", default="1,10", help="millions of float32 values")
    p.add_argument("--repeat", type=int, default=5)
    return p.parse_args()


def launch():
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    for ranks in parse().ranks.split(","):
        status = subprocess.call([mpiexec, "-n", ranks, sys.executable, "-m", "mpi4py",
                                  os.path.abspath(__file__)] + sys.argv[1:], env=env)
        if status:
            return status
    return 0


def measure(args):
    import numpy
    from pycaffe_dist.parallel import algorithms, cost_model
    from pycaffe_dist.parallel.mpi import MPIComm
    comm = MPIComm(timeout=120)
    MPI, world, rank = comm.MPI, comm.comm, comm.rank

    def ping_pong(n_bytes, rounds):
        buf = numpy.zeros(max(n_bytes // 4, 1), numpy.float32)
        times = []
        for _ in range(rounds):
            comm.barrier()            # a sleeping barrier: the idle ranks leave the cores to ranks 0 and 1
            start = time.perf_counter()
            if rank == 0:
                comm.send(buf, 1)
                comm.recv(buf, 1)
            elif rank == 1:
                comm.recv(buf, 0)
                comm.send(buf, 0)
            times.append((time.perf_counter() - start) / 2)
        return float(numpy.median(times))

    cores = len(os.sched_getaffinity(0))

    def coefficients(n_bytes):
        """alpha, and beta and gamma measured at this size (caches make them depend on it)."""
        alpha = ping_pong(8, 200)
        beta = max(ping_pong(n_bytes, 5) - alpha, 0.0) / n_bytes
        a, b = numpy.ones(n_bytes // 4, numpy.float32), numpy.ones(n_bytes // 4, numpy.float32)
        start = time.perf_counter()
        for _ in range(5):
            a += b
        gamma = (time.perf_counter() - start) / 5 / n_bytes
        measured = numpy.array([alpha, beta, gamma])
        world.Bcast(measured, 0)                     # the root's link is the one the model uses
        return cost_model.Network(*measured, cores=cores)

    def slowest(seconds):
        t = numpy.array([seconds])
        world.Allreduce(MPI.IN_PLACE, t, op=MPI.MAX)
        return float(t[0])

    if rank == 0:
        print("\n%d ranks on %d cores" % (comm.size, cores))
        print("%-8s %-18s %12s %12s %8s   %s" % ("size", "algorithm", "measured ms", "model ms", "ratio",
                                                "alpha, beta, gamma at this size"))
    for millions in args.sizes.split(","):
        n = int(float(millions) * 1e6)
        net = coefficients(4 * n)
        fit = "%.1f us, %.2f GB/s, %.2f GB/s summed" % (net.alpha * 1e6, 1e-9 / max(net.beta, 1e-15),
                                                        1e-9 / max(net.gamma, 1e-15))
        buf = numpy.random.default_rng(rank).standard_normal(n).astype(numpy.float32)
        for name in algorithms.POINT_TO_POINT:
            times = []
            for _ in range(args.repeat + 1):
                world.Barrier()
                start = time.perf_counter()
                algorithms.allreduce(comm, buf, name)
                times.append(slowest(time.perf_counter() - start))
            measured = float(numpy.median(times[1:]))
            predicted = cost_model.allreduce_seconds(name, 4 * n, comm.size, net)
            if rank == 0:
                print("%-8s %-18s %12.2f %12.2f %8.2f   %s" % ("%sM" % millions, name, measured * 1e3,
                                                               predicted * 1e3, predicted / measured, fit), flush=True)
    comm.close()


if __name__ == "__main__":
    if any(v in os.environ for v in ("PMI_RANK", "OMPI_COMM_WORLD_RANK")):
        measure(parse())
    else:
        sys.exit(launch())
