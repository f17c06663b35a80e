"""The cost model against allreduce times measured here, at 2, 3 and 4 ranks, in one run.

    .venv/bin/python bench/bench_cluster.py [--ranks 2,3,4] [--sizes 1,10,50] [--repeat 5] [--rounds 3]
        [--save runs.json | --load runs.json]

The model is calibrated on measurements that are not the ones it is
checked against:

  * a 2-rank job (one rank per core) measures, at each buffer size, alpha
    (one step of an 8-byte exchange: each rank sends to and receives from
    the other), beta (an exchange of the whole buffer, less alpha, per
    byte), beta_oneway (the buffer sent one way) and gamma (numpy adding
    two such buffers, per byte); and the same beta and gamma on a buffer
    of LARGE million floats (200 MB), far larger than a core's caches: what a byte
    costs ranks that take turns on the cores along a ring or a tree
    (Network.beta_shared and gamma_shared);
  * each R-rank job first times a ring of 8-byte exchanges among all R
    ranks: with more ranks than cores, the latency of a step when the
    ranks take turns on the cores (Network.alpha_shared; unused otherwise).

Then each R-rank job times every point-to-point allreduce, and the table
puts each beside cost_model.allreduce_seconds' prediction for R ranks on
this machine's cores, with the error (predicted / measured - 1; target:
within 25%). Every figure is the fastest of --repeat calls (20 at 1M
floats), each timed on the slowest rank, and of --rounds rounds of all the
jobs run in turn: the call that other work on the machine disturbed least.
--save keeps the raw measurements, --load re-prints a table from them.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

LARGE = 50      # million floats of the buffer that calibrates beta_shared and gamma_shared
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", default="2,3,4")
    p.add_argument("--sizes", default="1,10,50", help="millions of float32 values")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3, help="run every job this many times, interleaved; keep the fastest")
    p.add_argument("--save", help="write the raw measurements here (JSON)")
    p.add_argument("--load", help="print the table from measurements saved with --save")
    p.add_argument("--job", choices=("calibrate", "allreduce"), help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p.parse_args()


def fastest(a, b):
    """Merge two rounds' measurements, keeping the smaller of each figure."""
    if isinstance(a, dict):
        return {k: fastest(a[k], b[k]) for k in a}
    return min(a, b)


def launch(args):
    """Run the calibration job and one timing job per rank count, --rounds times interleaved, so that
    a busy spell on the machine does not land on one of them only; returns {"cores", "calibration", "runs"}
    with the fastest of the rounds for every figure."""
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    common = ["--sizes", args.sizes, "--repeat", str(args.repeat)]
    results = {"cores": len(os.sched_getaffinity(0)), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        jobs = ([("calibrate", 2)] + [("allreduce", int(r)) for r in args.ranks.split(",")]) * args.rounds
        for job, ranks in jobs:
            out = os.path.join(tmp, "%s-%d.json" % (job, ranks))
            status = subprocess.call([mpiexec, "-n", str(ranks), sys.executable, "-m", "mpi4py",
                                      os.path.abspath(__file__), "--job", job, "--out", out] + common, env=env)
            if status:
                sys.exit("mpiexec -n %d %s job failed with status %d" % (ranks, job, status))
            with open(out) as f:
                measured = json.load(f)
            key = "calibration" if job == "calibrate" else str(ranks)
            where = results if job == "calibrate" else results["runs"]
            where[key] = fastest(where[key], measured) if key in where else measured
            print("  %s job on %d ranks done" % (job, ranks), file=sys.stderr, flush=True)
    return results


# -- inside the mpiexec jobs ------------------------------------------------------------------------
def job(args):
    import numpy
    from pycaffe_dist.parallel import algorithms
    from pycaffe_dist.parallel.mpi import MPIComm
    comm = MPIComm(timeout=120)
    MPI, world, rank, size = comm.MPI, comm.comm, comm.rank, comm.size

    def slowest(seconds):
        t = numpy.array([seconds])
        world.Allreduce(MPI.IN_PLACE, t, op=MPI.MAX)
        return float(t[0])

    def ring_step(buf, scratch):
        """One exchange: send `buf` right while receiving `scratch` from the left (with 2 ranks: each other)."""
        algorithms.exchange(comm, buf, (rank + 1) % size, scratch, (rank - 1) % size, False, "calibration")

    def one_way(buf):
        """Rank 0 sends `buf` to rank 1."""
        if rank == 0:
            algorithms.exchange(comm, buf, 1, None, None, False, "calibration")
        elif rank == 1:
            algorithms.exchange(comm, None, None, buf, 0, False, "calibration")

    def timed(call, repeat):
        """Seconds of the fastest of `repeat` calls after a warm-up, each timed on its slowest rank:
        the fastest call is the one that other work on the machine disturbed least."""
        best = float("inf")
        for i in range(repeat + 1):
            world.Barrier()
            start = time.perf_counter()
            call()
            seconds = slowest(time.perf_counter() - start)
            best = min(best, seconds) if i else best
        return best

    tiny, tiny_in = numpy.zeros(2, numpy.float32), numpy.zeros(2, numpy.float32)
    steps = 50
    latency = timed(lambda: [ring_step(tiny, tiny_in) for _ in range(steps)], 10) / steps
    result = {"latency": latency, "sizes": {}}

    def rates(millions):
        n = int(float(millions) * 1e6)
        nbytes, repeat = 4 * n, max(args.repeat, int(20 / float(millions)))
        buf, scratch = numpy.ones(n, numpy.float32), numpy.ones(n, numpy.float32)
        exchange = timed(lambda: ring_step(buf, scratch), repeat)
        transfer = timed(lambda: one_way(buf), repeat)
        adds = []
        for _ in range(repeat):
            start = time.perf_counter()
            buf += scratch
            adds.append(time.perf_counter() - start)
        return {"alpha": latency, "beta": max(exchange - latency, 0.0) / nbytes,
                "beta_oneway": max(transfer - latency, 0.0) / nbytes, "gamma": slowest(min(adds)) / nbytes}

    for millions in args.sizes.split(","):
        if args.job == "calibrate":
            result["sizes"][millions] = rates(millions)
        else:
            n = int(float(millions) * 1e6)
            buf = numpy.random.default_rng(rank).standard_normal(n).astype(numpy.float32)
            repeat = max(args.repeat, int(20 / float(millions)))
            result["sizes"][millions] = {
                name: timed(lambda name=name, buf=buf: algorithms.allreduce(comm, buf, name), repeat)
                for name in algorithms.POINT_TO_POINT}
    if args.job == "calibrate":
        result["large"] = result["sizes"].get(str(LARGE)) or rates(LARGE)
    if rank == 0:
        with open(args.out, "w") as f:
            json.dump(result, f)
    comm.close()


def _rate(seconds_per_byte):
    return 1e-9 / max(seconds_per_byte, 1e-15)


# -- the table --------------------------------------------------------------------------------------
def report(results):
    from pycaffe_dist.parallel import algorithms, cost_model
    cores, calibration = results["cores"], results["calibration"]
    print("model calibrated on a 2-rank job (one rank per core), %d cores:" % cores)
    for millions, c in calibration["sizes"].items():
        print("  %4sM floats: alpha %.1f us, beta %.2f GB/s exchanged, %.2f GB/s one way, gamma %.2f GB/s summed"
              % (millions, c["alpha"] * 1e6, _rate(c["beta"]), _rate(c["beta_oneway"]), _rate(c["gamma"])))
    large = calibration.get("large") or calibration["sizes"][max(calibration["sizes"], key=float)]
    print("  a buffer of %dM floats: beta %.2f GB/s exchanged, gamma %.2f GB/s summed (beta_shared, gamma_shared)"
          % (LARGE, _rate(large["beta"]), _rate(large["gamma"])))
    for ranks, run in results["runs"].items():
        print("  %s ranks, all exchanging around a ring: a step of 8 bytes %.1f us%s"
              % (ranks, run["latency"] * 1e6, " (alpha_shared)" if int(ranks) > cores else " (not used)"))
    print()
    print("%-6s %-6s %-18s %12s %12s %8s" % ("ranks", "size", "algorithm", "measured ms", "model ms", "error"))
    errors = []
    for ranks, run in results["runs"].items():
        p = int(ranks)
        for millions, measured in run["sizes"].items():
            c = calibration["sizes"][millions]
            net = cost_model.Network(alpha=c["alpha"], beta=c["beta"], gamma=c["gamma"], beta_oneway=c["beta_oneway"],
                                     cores=cores, alpha_shared=run["latency"], beta_shared=large["beta"],
                                     gamma_shared=large["gamma"])
            for name in algorithms.POINT_TO_POINT:
                predicted = cost_model.allreduce_seconds(name, 4e6 * float(millions), p, net)
                error = predicted / measured[name] - 1
                errors.append(abs(error))
                print("%-6d %-6s %-18s %12.2f %12.2f %+7.0f%%" % (p, millions + "M", name, measured[name] * 1e3,
                                                                   predicted * 1e3, error * 100))
    within = sum(e <= 0.25 for e in errors)
    print("\n%d of %d within 25%%; largest error %.0f%%, median %.0f%%"
          % (within, len(errors), max(errors) * 100, sorted(errors)[len(errors) // 2] * 100))


if __name__ == "__main__":
    arguments = parse()
    if arguments.job:
        job(arguments)
    elif arguments.load:
        with open(arguments.load) as f:
            report(json.load(f))
    else:
        measured = launch(arguments)
        if arguments.save:
            with open(arguments.save, "w") as f:
                json.dump(measured, f, indent=1)
        report(measured)
