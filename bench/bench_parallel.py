"""Parallel training on one machine: samples/s of N workers against 1 worker, in one run.

Trains LeNet (or an MLP) on Fashion-MNIST through MemoryData, each worker on
its own shard, and prints samples/s for each mode with its ratio to
"1 worker, 1 BLAS thread" (the issue's baseline) and to "1 worker, 2 BLAS
threads" (what a user gets without any parallel setting). Time is measured
inside the workers, after 5 warm-up iterations, so process start, data
loading and first-call costs do not count; for Hogwild the samples of all workers are
divided by the slowest worker's time. "exchange" is the share of a sync
worker's time spent in the gradient exchange that backward did not hide,
waiting for a slower peer included. "cpu/wall" is the CPU time a worker
got per second of its run: below 1.0 (per BLAS thread) it waited for a
core, which on a shared machine means other load, and the wall-clock ratios
then say little. "per cpu-s" is samples per CPU-second of all workers and
"eff." that figure over the 1-worker 1-thread one: the parallel efficiency,
which other load does not change, so N workers x eff. is the speedup to
expect on N idle cores (waiting for a slow peer costs no CPU, so it is an
upper bound when workers are unevenly loaded).

    .venv/bin/python bench/bench_parallel.py [--net lenet|mlp] [--iters 200] [--batch 64]
        [--modes single1,single2,hogwild_threads,hogwild_processes,sync,sync_whole,sync_tree]
        [--repeat 1]

The default modes are the issue's five. `--iters 200 --repeat 3` is 15
trainings of 205 iterations per worker; at LeNet's 20-25 ms a step plus a
second or two of start-up each, about 2 minutes on 2 idle cores (the run
prints how long it took).
    .venv/bin/python bench/bench_parallel.py --allreduce 1,10,50 [--ranks 2]
"""
import argparse
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

FASHION = "/usr/share/datasets/fashion-mnist"
WARMUP = 5        # iterations each worker runs before the timed ones

DATA = '''name: "%(name)s"
layer { name: "data" type: "MemoryData" top: "data" top: "label"
  transform_param { scale: 0.00390625 }
  memory_data_param { batch_size: %(batch)d channels: 1 height: 28 width: 28 } }
'''
MLP = '''layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param { num_output: 500 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
'''
SOLVER = ('net: "%s" base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: "inv" gamma: 0.0001 '
          'power: 0.75 display: 0 max_iter: %d snapshot_after_train: false random_seed: 1\n')

# mode: (label, workers, parallel settings, BLAS threads per worker)
MODES = {
    "single1": ("1 worker, 1 BLAS thread", 1, {"strategy": "sync"}, 1),
    "single2": ("1 worker, 2 BLAS threads", 1, {"strategy": "sync"}, 2),
    "hogwild_threads": ("Hogwild, 2 threads", 2, {"strategy": "hogwild", "mode": "thread"}, 1),
    "hogwild_processes": ("Hogwild, 2 processes", 2, {"strategy": "hogwild", "mode": "process"}, 1),
    "sync": ("sync, 2 processes (layer-wise)", 2, {"strategy": "sync"}, 1),
    "sync_whole": ("sync, 2 processes (whole buffer)", 2, {"strategy": "sync", "layer_wise": False}, 1),
    "sync_tree": ("sync, 2 processes (P2P tree)", 2, {"strategy": "sync", "algorithm": "tree"}, 1),
}


def net_text(name, batch):
    if name == "mlp":
        return DATA % {"name": "mlp", "batch": batch} + MLP
    from nets import LENET
    layers = LENET[LENET.index('layer { name: "conv1"'):]
    return DATA % {"name": "LeNet", "batch": batch} + layers


def feed(worker):
    """setup hook: worker r of N gets Fashion-MNIST training records r, r+N, ..."""
    from pycaffe_dist.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx
    images = read_idx(os.path.join(FASHION, "train-images-idx3-ubyte.gz"), IMAGES_MAGIC)[:, None]
    labels = read_idx(os.path.join(FASHION, "train-labels-idx1-ubyte.gz"), LABELS_MAGIC)
    layer = worker.solver.net.layers[0]
    mine = slice(worker.rank, None, worker.size)
    n = len(labels[mine]) // layer.batch_size * layer.batch_size
    layer.set_input_arrays(images[mine][:n], labels[mine][:n])
    # Warm-up, not timed: first-call allocations and the convolution's layout choice.
    worker.solver.step(WARMUP)


def run_mode(mode, solver_path, batch):
    from pycaffe_dist import parallel
    from pycaffe_dist.parallel import Settings
    _, workers, options, blas = MODES[mode]
    settings = Settings(workers=workers, **options)
    result = parallel.train(solver_path, settings, setup=feed, blas_threads=blas)
    reports = result.reports
    samples = sum(r["iterations"] for r in reports) * batch
    seconds = max(r["seconds"] for r in reports)
    # Share of the step spent in the gradient exchange (waiting for peers included).
    exchange = statistics.mean(r.get("reduce_seconds", 0.0) / r["seconds"] for r in reports)
    cpu = sum(r["cpu_seconds"] for r in reports)
    return samples / seconds, exchange, cpu / sum(r["seconds"] for r in reports), samples / cpu


def time_allreduce(worker):
    """Median seconds of one float32 allreduce of each size (millions), loopback and P2P tree."""
    import time
    import numpy
    from pycaffe_dist.parallel.p2p_tree import tree_allreduce
    comm = worker.comm()
    out = {}
    for millions in worker.payload:
        buf = numpy.ones(int(millions * 1e6), numpy.float32)
        scratch = numpy.empty_like(buf)
        for name in ("loopback", "p2p_tree"):
            times = []
            for _ in range(5):
                comm.barrier()
                t = time.perf_counter()
                if name == "loopback":
                    comm.allreduce(buf)
                else:
                    tree_allreduce(comm, buf, scratch)
                times.append(time.perf_counter() - t)
            out[millions, name] = statistics.median(times)
    return out


def allreduce_table(sizes, ranks):
    from pycaffe_dist.parallel import LoopbackGroup, run_workers
    results = run_workers(time_allreduce, ranks, payload=sizes, group=LoopbackGroup(ranks, processes=True))
    print("%d processes, float32, median of 5 (ms, the slowest rank's)" % ranks)
    print("%-8s %-10s %10s" % ("size", "algorithm", "ms"))
    for millions in sizes:
        for name in ("loopback", "p2p_tree"):
            print("%-8s %-10s %10.2f" % ("%gM" % millions, name, 1000 * max(r[millions, name] for r in results)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", default="lenet", choices=("lenet", "mlp"))
    ap.add_argument("--iters", type=int, default=200, help="iterations per worker")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--modes", default="single1,single2,hogwild_threads,hogwild_processes,sync")
    ap.add_argument("--repeat", type=int, default=1, help="runs per mode; the median is shown")
    ap.add_argument("--allreduce", help="instead: time allreduce of these sizes (millions of floats), e.g. 1,10,50")
    ap.add_argument("--ranks", type=int, default=2, help="--allreduce: processes")
    args = ap.parse_args()
    if args.allreduce:
        allreduce_table([float(v) for v in args.allreduce.split(",")], args.ranks)
        return 0
    modes = args.modes.split(",")
    if not os.path.isdir(FASHION):
        print("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)", file=sys.stderr)
        return 1
    import logging
    import time
    from pycaffe_dist.cli import setup_logging
    began = time.monotonic()
    setup_logging(logging.WARNING)
    folder = tempfile.mkdtemp(prefix="bench_parallel_")
    net = os.path.join(folder, "net.prototxt")
    with open(net, "w") as f:
        f.write(net_text(args.net, args.batch))
    # Every worker runs `iters` iterations: Hogwild and sync see workers x the samples.
    solver = os.path.join(folder, "solver.prototxt")
    with open(solver, "w") as f:
        f.write(SOLVER % (net, args.iters + WARMUP))
    # Modes take turns, so a slow spell of the machine hits them alike.
    measured = {mode: [] for mode in modes}
    shares = {mode: [] for mode in modes}
    cpus = {mode: [] for mode in modes}
    per_cpu = {mode: [] for mode in modes}
    for _ in range(args.repeat):
        for mode in modes:
            rate, share, cpu, samples_per_cpu = run_mode(mode, solver, args.batch)
            measured[mode].append(rate)
            shares[mode].append(share)
            cpus[mode].append(cpu)
            per_cpu[mode].append(samples_per_cpu)
            print("  measured %-36s %9.1f samples/s" % (MODES[mode][0], rate), file=sys.stderr, flush=True)
    rates = {mode: statistics.median(values) for mode, values in measured.items()}
    base1, base2 = rates.get("single1"), rates.get("single2")
    print("%s, batch %d per worker, %d iterations per worker, %d cores, median of %d"
          % (args.net, args.batch, args.iters, os.cpu_count(), args.repeat))
    print("%-36s %10s %9s %9s %9s %8s %10s %9s" % ("mode", "samples/s", "vs 1w/1t", "vs 1w/2t", "exchange",
                                                  "cpu/wall", "per cpu-s", "eff."))
    cpu1 = statistics.median(per_cpu["single1"]) if "single1" in per_cpu else None
    for mode in modes:
        r = rates[mode]
        efficiency = statistics.median(per_cpu[mode]) / cpu1 if cpu1 else float("nan")
        print("%-36s %10.1f %9s %9s %8.1f%% %8.2f %10.1f %9.2f" % (
            MODES[mode][0], r, "%.2fx" % (r / base1) if base1 else "-", "%.2fx" % (r / base2) if base2 else "-",
            100 * statistics.median(shares[mode]), statistics.median(cpus[mode]),
            statistics.median(per_cpu[mode]), efficiency))
    print("(%.0f s in all)" % (time.monotonic() - began))
    return 0


if __name__ == "__main__":
    sys.exit(main())
