"""Whole training steps with issue 8's two-thread changes of 2026-12-07
(twothreads branch) on and off, in one process.

Off means what the code did before: ReLU on whole arrays
(ops.threads.ELEMENTWISE_LANES and ELEMENTWISE_WHOLE out of reach), average
pooling's GEMM whole (average_pooling.GEMM_SPLIT_FLOPS out of reach), and
max pooling's backward taken from TREE (--against, another checkout: the
backward before it walked the lanes' blocks in one-thread runs). Per net,
four solvers (1 and 2 threads, on and off) take one step each per round,
on and off swapping places every other round; it prints each one's least
ms and the median over rounds of on / off.

    OPENBLAS_NUM_THREADS=2 .venv/bin/python bench/bench_twothreads.py --against ../main
        [--nets lenet,cifar10_quick,cifar10_full] [--steps 40]
"""
import argparse
import os
import statistics
import sys
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

OFF = {"ELEMENTWISE_LANES": 1 << 62, "ELEMENTWISE_WHOLE": 1 << 62, "GEMM_SPLIT_FLOPS": 1 << 62}


def switch(values):
    from pycaffe_dist.ops import average_pooling, threads
    threads.ELEMENTWISE_LANES, threads.ELEMENTWISE_WHOLE = values["ELEMENTWISE_LANES"], values["ELEMENTWISE_WHOLE"]
    average_pooling.GEMM_SPLIT_FLOPS = values["GEMM_SPLIT_FLOPS"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", required=True, help="a checkout whose max pooling backward runs when off")
    ap.add_argument("--nets", default="lenet,cifar10_quick,cifar10_full")
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args(argv)
    from bench_pooling import load_pooling
    from bench_step import pycaffe_solver
    from pycaffe_dist import ops
    from pycaffe_dist.ops import average_pooling, threads
    on = {"ELEMENTWISE_LANES": threads.ELEMENTWISE_LANES, "ELEMENTWISE_WHOLE": threads.ELEMENTWISE_WHOLE,
          "GEMM_SPLIT_FLOPS": average_pooling.GEMM_SPLIT_FLOPS}
    before = load_pooling(args.against)
    print("# load average %.2f at start" % os.getloadavg()[0])
    for name in args.nets.split(","):
        solvers = {}
        for count in (1, 2):
            for way in ("off", "on"):
                solver = solvers[(count, way)] = pycaffe_solver(name)
                for layer in solver.net.layers:
                    op = getattr(layer, "op", None)
                    if way == "off" and isinstance(op, ops.MaxPooling):
                        op.backward = types.MethodType(before.MaxPooling.backward, op)
        times = {key: [] for key in solvers}
        keys = list(solvers)
        for i in range(args.steps + 10):
            order = keys if i % 2 else [keys[1], keys[0], keys[3], keys[2]]
            for count, way in order:
                threads.set_count(count)
                switch(on if way == "on" else OFF)
                start = time.perf_counter()
                solvers[(count, way)].step(1)
                if i >= 10:
                    times[(count, way)].append(time.perf_counter() - start)
        switch(on)
        threads.set_count(1)
        for count in (1, 2):
            off, mine = times[(count, "off")], times[(count, "on")]
            print("%-14s %d threads: off %.2f ms, on %.2f ms (least); on/off %.3f (median)" % (
                name, count, 1e3 * min(off), 1e3 * min(mine), statistics.median(b / a for a, b in zip(off, mine))))
    print("# load average %.2f at end" % os.getloadavg()[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
