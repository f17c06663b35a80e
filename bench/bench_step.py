"""One training iteration of Caffe's nets: pycaffe_dist vs PyTorch CPU.

Nets: LeNet (batch 64), cifar10_quick and cifar10_full (batch 100) and a
CaffeNet-shaped net (batch 16, 227x227x3, 1000 classes); both frameworks
take the same SGD step (momentum 0.9, weight decay 0.0005).

Each thread count runs in its own process with OMP/OpenBLAS/MKL threads set
before numpy or torch load; inside it the two frameworks alternate in rounds
so machine noise hits both alike. Per net it prints ms per iteration
(median), the ratio pycaffe_dist / PyTorch (below 1.0: pycaffe_dist is
faster), and the matmul floor: the iteration's GEMM FLOPs (forward, weight
gradients, input gradients below the first layer) over the sgemm rate
numpy reaches in the same process at that thread count (a 1024^3 product),
and each framework's time as a fraction of it (1.0 would be GEMMs at full
rate and nothing else). With --memory, each framework also trains a few
iterations in a fresh process of its own, and its peak resident memory
(VmHWM) above what it held after its imports is printed. With
--processes K each thread count's worker runs K times and every figure is
the median over those processes, each process's medians printed too: one
PyTorch process can run 20% faster than the next.

    .venv/bin/python bench/bench_step.py [--threads 1,2] [--nets lenet,cifar10_quick,cifar10_full,caffenet]
        [--steps 40] [--rounds 4] [--memory] [--clock wall|thread] [--before-threads] [--processes K]
        [--interleave [--stat min] [--before-fft]]

With --before-threads a third runner takes part in the rounds: pycaffe_dist
with issue #8's thread paths switched off (every split op runs its lanes at
once, chunks and pooling blocks at their one-thread sizes, pooling on the
calling thread), so before and after are measured in the same process.
With --interleave every thread count runs in one process (OMP/OpenBLAS set
to the largest, each framework switched between counts at run time), all
runners alternating in the same rounds: the fairest 2-thread/1-thread
comparison on a machine whose load changes by the minute. With
--interleave --before-fft a runner with the Fourier convolutions
(ops/fourier.py) switched off takes part in the same rounds.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

# fewer steps for the big net: a CaffeNet iteration is ~100x LeNet's
STEP_SCALE = {"caffenet": 0.25}


def pycaffe_solver(name):
    import numpy
    from google.protobuf import text_format
    from nets import NETS, SOLVER
    from pycaffe_dist.proto import caffe_pb2
    from pycaffe_dist.solvers import Solver
    text, batch, shape, classes = NETS[name]
    param = text_format.Parse(SOLVER, caffe_pb2.SolverParameter())
    param.net_param.CopyFrom(text_format.Parse(text % {"batch": batch}, caffe_pb2.NetParameter()))
    solver = Solver(param)
    rng = numpy.random.default_rng(0)
    solver.net.blobs["data"].data[...] = rng.random((batch,) + shape, dtype=numpy.float32)
    solver.net.blobs["label"].data[...] = rng.integers(0, classes, batch)
    return solver


def pycaffe_step(name):
    solver = pycaffe_solver(name)
    return lambda: solver.step(1), solver.net


# issue #8's thread paths: (module in pycaffe_dist.ops, setting, value before)
THREAD_SWITCHES = (("threads", "MEASURED", False), ("conv", "LANE_COLUMN_SCALE", 1),
                   ("pooling", "THREADED", False), ("pooling", "LANE_BLOCK_SCALE", 1))


def before_threads(run):
    """`run` with THREAD_SWITCHES at their old values."""
    from pycaffe_dist import ops

    def step():
        saved = [getattr(getattr(ops, m), k) for m, k, _ in THREAD_SWITCHES]
        for m, k, old in THREAD_SWITCHES:
            setattr(getattr(ops, m), k, old)
        try:
            run()
        finally:
            for (m, k, _), value in zip(THREAD_SWITCHES, saved):
                setattr(getattr(ops, m), k, value)
    return step


def before_fft(run):
    """`run` with the Fourier convolutions switched off."""
    from pycaffe_dist.ops import fourier

    def step():
        saved, fourier.ENABLED = fourier.ENABLED, False
        try:
            run()
        finally:
            fourier.ENABLED = saved
    return step


def torch_step(name):
    import torch
    from nets import NETS, torch_model
    _, batch, shape, classes = NETS[name]
    model = torch_model(name)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=0.0005)
    loss_fn = torch.nn.CrossEntropyLoss()
    x = torch.rand((batch,) + shape)
    y = torch.randint(0, classes, (batch,))

    def step():
        opt.zero_grad(set_to_none=False)
        loss_fn(model(x), y).backward()
        opt.step()
    return step


def gemm_flops(net):
    """FLOPs of one training iteration's GEMMs: each Convolution and
    InnerProduct does 2 * top elements * weights per output in the forward
    pass, as much again for its weight gradient and for its input gradient
    where the bottom needs one (not below the first layer)."""
    total = 0
    for layer, need in zip(net.layers, net.bottom_need_backward):
        if layer.type not in ("Convolution", "InnerProduct", "Deconvolution"):
            continue
        top = net.blobs[net.top_ids[net.layers.index(layer)][0]]
        weights = layer.blobs[0]
        outputs = weights.shape[1] if layer.type == "Deconvolution" else weights.shape[0]
        one = 2 * top.count * (weights.count // outputs)
        total += one * (2 + bool(need and need[0]))
    return total


def sgemm_rate(threads, clock=time.perf_counter):
    """numpy's float32 GEMM rate (FLOP/s) on 1024^3 at `threads` BLAS threads (best of 6)."""
    import numpy
    from threadpoolctl import threadpool_limits
    a = numpy.random.default_rng(0).random((1024, 1024), dtype=numpy.float32)
    out = numpy.empty_like(a)
    best = float("inf")
    with threadpool_limits(threads, user_api="blas"):
        for _ in range(6):
            t = clock()
            numpy.matmul(a, a, out=out)
            best = min(best, clock() - t)
    return 2 * 1024 ** 3 / best


def warmup_steps(framework):
    """Untimed steps first: allocation and first-call costs, and for
    pycaffe_dist the calls its ops' threads.Choice measures before choosing."""
    if framework == "pytorch":
        return 3
    from pycaffe_dist.ops.threads import Choice
    return max(3, Choice.WARMUP + 2 * Choice.TRIALS)


def interleaved_worker(nets, counts, steps, rounds, before=False, stat="median", fft=False):
    """Every (framework, thread count) in one process, alternating in rounds;
    {count: {net: {runner: ms, "gflop", "sgemm"}}}, as the per-count workers give."""
    import torch
    from pycaffe_dist.ops import threads as op_threads

    def at(count, run, framework):
        def step():
            if framework == "pytorch":
                torch.set_num_threads(count)
            else:
                op_threads.set_count(count)
            run()
        return step
    results = {str(c): {} for c in counts}
    for name in nets:
        runners, net = {}, None
        for c in counts:
            py_run, net = pycaffe_step(name)
            runners[(c, "pycaffe_dist")] = at(c, py_run, "pycaffe_dist")
            runners[(c, "pytorch")] = at(c, torch_step(name), "pytorch")
            if before and c > 1:
                runners[(c, "before")] = at(c, before_threads(pycaffe_step(name)[0]), "before")
            if fft:
                runners[(c, "no fft")] = at(c, before_fft(pycaffe_step(name)[0]), "no fft")
        times = {k: [] for k in runners}
        for (_, framework), run in runners.items():
            for _ in range(warmup_steps(framework)):
                run()
        per_round = max(1, int(steps * STEP_SCALE.get(name, 1.0)) // rounds)
        for _ in range(rounds):
            for key, run in runners.items():
                for _ in range(per_round):
                    t = time.perf_counter()
                    run()
                    times[key].append(time.perf_counter() - t)
        for c in counts:
            pick = min if stat == "min" else statistics.median
            found = {framework: pick(v) * 1000 for (k, framework), v in times.items() if k == c}
            op_threads.set_count(1)
            found["gflop"] = gemm_flops(net) / 1e9
            found["sgemm"] = sgemm_rate(c) / 1e9
            results[str(c)][name] = found
        del runners, net
    print(json.dumps(results))


def worker(nets, steps, rounds, clock_name, before=False):
    import torch
    threads = int(os.environ["OMP_NUM_THREADS"])
    # CPU time of this thread: at one thread both frameworks do all their
    # work on it, and other jobs on the machine disturb it less than wall time
    clock = time.thread_time if clock_name == "thread" and threads == 1 else time.perf_counter
    torch.set_num_threads(threads)
    results = {}
    for name in nets:
        py_run, net = pycaffe_step(name)
        runners = {"pycaffe_dist": py_run, "pytorch": torch_step(name)}
        if before:
            runners["before"] = before_threads(pycaffe_step(name)[0])
        times = {k: [] for k in runners}
        for key, run in runners.items():
            for _ in range(warmup_steps(key)):
                run()
        per_round = max(1, int(steps * STEP_SCALE.get(name, 1.0)) // rounds)
        for _ in range(rounds):
            for key, run in runners.items():
                for _ in range(per_round):
                    t = clock()
                    run()
                    times[key].append(clock() - t)
        results[name] = {k: statistics.median(v) * 1000 for k, v in times.items()}
        results[name]["gflop"] = gemm_flops(net) / 1e9
        results[name]["sgemm"] = sgemm_rate(threads, clock) / 1e9
        del py_run, net, runners
    print(json.dumps(results))


def _vm(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_worker(framework, name, steps=3):
    """Peak resident bytes of `steps` training iterations above the level after imports."""
    if framework == "pycaffe_dist":
        import numpy  # noqa: F401
        from google.protobuf import text_format  # noqa: F401
        from pycaffe_dist.solvers import Solver  # noqa: F401
        base = _vm("VmHWM")
        run, _ = pycaffe_step(name)
    else:
        import torch
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        base = _vm("VmHWM")
        run = torch_step(name)
    for _ in range(steps):
        run()
    print(json.dumps({"peak": _vm("VmHWM") - base}))


def _child(args, threads):
    env = dict(os.environ, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    out = subprocess.run([sys.executable, __file__] + args, env=env, capture_output=True, text=True)
    if out.returncode:
        sys.stderr.write(out.stderr)
        raise SystemExit(out.returncode)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _over_processes(runs):
    """Each figure's median over the worker processes' results (one process
    of PyTorch can run 20% faster than the next: its per-process medians
    for cifar10_quick at two threads went from 37.7 to 48.2 ms in six runs)."""
    return {name: {key: statistics.median(run[name][key] for run in runs) for key in runs[0][name]}
            for name in runs[0]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--nets", default="lenet,cifar10_quick,cifar10_full,caffenet")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--clock", choices=("wall", "thread"), default="wall",
                    help="thread: time 1-thread runs in thread CPU time (less disturbed on a busy machine)")
    ap.add_argument("--memory", action="store_true", help="also peak resident memory, each framework alone")
    ap.add_argument("--processes", type=int, default=1,
                    help="without --interleave: run each thread count's worker this many times and report "
                         "the median of the processes' medians (and each one's)")
    ap.add_argument("--before-threads", action="store_true",
                    help="also pycaffe_dist with issue #8's thread paths off, in the same rounds")
    ap.add_argument("--before-fft", action="store_true",
                    help="with --interleave: also pycaffe_dist with the Fourier convolutions off")
    ap.add_argument("--interleave", action="store_true",
                    help="all thread counts in one process, alternating in the same rounds")
    ap.add_argument("--stat", choices=("median", "min"), default="median",
                    help="with --interleave: each runner's median or least time (other jobs only add time)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--interleaved-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--memory-worker", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    nets = args.nets.split(",")
    if args.worker:
        worker(nets, args.steps, args.rounds, args.clock, args.before_threads)
        return 0
    if args.interleaved_worker:
        interleaved_worker(nets, [int(c) for c in args.threads.split(",")], args.steps, args.rounds,
                           args.before_threads, args.stat, args.before_fft)
        return 0
    if args.memory_worker:
        memory_worker(args.memory_worker, nets[0])
        return 0
    head = "%-14s %7s %10s %10s %6s %8s %7s %9s %7s %7s" % (
        "net", "threads", "ours ms", "torch ms", "ratio", "GFLOP", "sgemm", "floor ms", "ours", "torch")
    if args.memory:
        head += " %9s %9s" % ("ours MiB", "torch MiB")
    if args.before_threads:
        head += " %10s %6s" % ("before ms", "ratio")
    if args.before_fft:
        head += " %10s %6s %8s" % ("no fft ms", "ratio", "fft/off")
    print(head)
    print("%-14s %7s %10s %10s %6s %8s %7s %9s %7s %7s" % ("", "", "", "", "", "/iter", "GFLOP/s", "",
                                                           "floor/t", "floor/t"))
    by_threads = {}
    if args.interleave:
        load = os.getloadavg()[0]
        everything = _child(["--interleaved-worker", "--threads", args.threads, "--nets", args.nets,
                             "--steps", str(args.steps), "--rounds", str(args.rounds), "--stat", args.stat]
                            + ["--before-threads"] * args.before_threads + ["--before-fft"] * args.before_fft,
                            str(max(int(c) for c in args.threads.split(","))))
    for threads in args.threads.split(","):
        if args.interleave:
            found = everything[threads]
        else:
            load = os.getloadavg()[0]
            runs = [_child(["--worker", "--nets", args.nets, "--steps", str(args.steps),
                            "--rounds", str(args.rounds), "--clock", args.clock]
                           + ["--before-threads"] * args.before_threads, threads)
                    for _ in range(args.processes)]
            found = _over_processes(runs)
            if args.processes > 1:
                for name in found:
                    print("# %s, %s threads, each process's median ms: %s" % (name, threads, "; ".join(
                        "%s %s" % (runner, " ".join("%.2f" % run[name][runner] for run in runs))
                        for runner in ("pycaffe_dist", "before", "pytorch") if runner in found[name])))
        by_threads[threads] = found
        for name, r in found.items():
            floor = r["gflop"] / r["sgemm"] * 1000
            line = "%-14s %7s %10.2f %10.2f %6.2f %8.2f %7.1f %9.2f %7.2f %7.2f" % (
                name, threads, r["pycaffe_dist"], r["pytorch"], r["pycaffe_dist"] / r["pytorch"],
                r["gflop"], r["sgemm"], floor, floor / r["pycaffe_dist"], floor / r["pytorch"])
            if args.memory:
                peaks = [_child(["--memory-worker", framework, "--nets", name], threads)["peak"] / 2 ** 20
                         for framework in ("pycaffe_dist", "pytorch")]
                line += " %9.1f %9.1f" % tuple(peaks)
            if "before" in r:
                line += " %10.2f %6.2f" % (r["before"], r["before"] / r["pytorch"])
            if "no fft" in r:
                line += " %10.2f %6.2f %8.3f" % (r["no fft"], r["no fft"] / r["pytorch"],
                                                  r["pycaffe_dist"] / r["no fft"])
            print(line, flush=True)
        print("# threads %s: load average %.2f at start, %.2f at end" % (threads, load, os.getloadavg()[0]),
              flush=True)
    counts = list(by_threads)
    if len(counts) > 1:     # speed-up of the last thread count over the first, per runner
        first, last = by_threads[counts[0]], by_threads[counts[-1]]
        for name in first:
            print("# %s: %s threads over %s: " % (name, counts[-1], counts[0]) + ", ".join(
                "%s %.2fx" % (runner, first[name][runner] / last[name][runner])
                for runner in ("pycaffe_dist", "before", "pytorch") if runner in first[name]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
