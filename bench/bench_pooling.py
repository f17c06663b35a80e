"""Max pooling (3x3, stride 2, Caffe's round-up) on the nets' shapes:
pycaffe_dist vs PyTorch CPU, and optionally vs another pycaffe_dist tree.

Layers: cifar10_quick's pool1 (batch 100) and CaffeNet's pool1, pool2 and
pool5 (batch 16). Per thread count, each runner's forward (tracked, as in
TRAIN) and backward alternate in rounds in this one process; the table
gives the best of each and the median over rounds of the per-round ratio
(ours / theirs). PyTorch runs max_pool2d_with_indices(ceil_mode=True) and
its backward. With --against TREE, TREE's max pooling (another checkout,
e.g. the main branch) runs as a third runner, "before"; with --step, whole
cifar10_quick training steps (batch 100) alternate between a net with this
tree's max pooling and one with TREE's, and with --in-net the two nets run
layer by layer (as `pycaffe-dist time` does) and pool1 is timed inside them.
With --ave, cifar10's average pooling (pool2 and pool3, one GEMM each way)
runs as one whole matmul (the code before its rows were split over the
ops' threads) against the op, the caches evicted before every call.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/bench_pooling.py [--threads 1,2] [--rounds 16]
        [--layers c10q.pool1,cn.pool1,cn.pool2,cn.pool5] [--against ../main] [--step | --in-net | --ave]
"""
import argparse
import functools
import importlib.util
import os
import statistics
import sys
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

LAYERS = {"c10q.pool1": (100, 32, 32, 32), "cn.pool1": (16, 96, 55, 55), "cn.pool2": (16, 256, 27, 27),
          "cn.pool5": (16, 256, 13, 13)}


def load_module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_pooling(tree):
    """TREE's MaxPooling and PoolGeometry, loaded as modules of this
    package (they import backend, kernels, threads and workspace from
    here): ops/pooling.py, and ops/max_pooling.py where TREE has one."""
    ops_dir = os.path.join(tree, "pycaffe_dist", "ops")
    pooling = load_module("pycaffe_dist.ops.pooling_against", os.path.join(ops_dir, "pooling.py"))
    path = os.path.join(ops_dir, "max_pooling.py")
    if not os.path.exists(path):
        return pooling
    with open(path) as f:
        source = f.read().replace("from .pooling import", "from .pooling_against import")
    module = types.ModuleType("pycaffe_dist.ops.max_pooling_against")
    module.__package__ = "pycaffe_dist.ops"
    exec(compile(source, path, "exec"), module.__dict__)
    module.PoolGeometry = pooling.PoolGeometry
    return module


def best_of(f, repeat=3):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return min(times)


def layer_runners(shape, before):
    """{runner: (forward, backward)} on one layer's shape."""
    import numpy
    import torch
    from pycaffe_dist import ops
    n, c, h, w = shape
    out = tuple(ops.pooled_size(s, 3, 2, 0) for s in (h, w))
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=numpy.float32)
    dy = rng.standard_normal((n, c) + out, dtype=numpy.float32)
    runners = {}
    modules = {"ours": types.SimpleNamespace(MaxPooling=ops.MaxPooling, PoolGeometry=ops.PoolGeometry)}
    if before is not None:
        modules["before"] = before
    for name, module in modules.items():
        op = module.MaxPooling(module.PoolGeometry((3, 3), (2, 2), (0, 0), (h, w), out))
        y, dx = numpy.empty(dy.shape, numpy.float32), numpy.empty_like(x)
        runners[name] = (lambda op=op, y=y: op.forward(x, y), lambda op=op, dx=dx: op.backward(dy, dx, x))
    tx, tdy, kept = torch.from_numpy(x), torch.from_numpy(dy), {}

    def torch_forward():
        kept["out"] = torch.ops.aten.max_pool2d_with_indices(tx, [3, 3], [2, 2], [0, 0], [1, 1], True)

    def torch_backward():
        torch.ops.aten.max_pool2d_with_indices_backward(tdy, tx, [3, 3], [2, 2], [0, 0], [1, 1], True,
                                                        kept["out"][1])
    runners["pytorch"] = (torch_forward, torch_backward)
    return runners


def set_threads(count):
    import torch
    from pycaffe_dist.ops import threads
    torch.set_num_threads(count)
    threads.set_count(count)


def bench_layers(names, counts, rounds, before):
    print(f"{'layer':11s} {'threads':>7s} {'pass':>4s} {'runner':>8s} {'best ms':>8s} {'ours/it':>8s}")
    for name in names:
        runners = layer_runners(LAYERS[name], before)
        for count in counts:
            set_threads(count)
            for forward, backward in runners.values():     # buffers, and the ops' Choices settle
                for _ in range(12):
                    forward()
                    backward()
            times = {(r, p): [] for r in runners for p in ("fwd", "bwd")}
            for k in range(rounds):
                for runner in (list(runners) if k % 2 else list(runners)[::-1]):
                    forward, backward = runners[runner]
                    times[(runner, "fwd")].append(best_of(forward))
                    times[(runner, "bwd")].append(best_of(backward))
            print_rows(name, count, runners, times)
    set_threads(1)


def print_rows(name, count, runners, times):
    """One row per pass and runner: its least time, and the median of ours over it, round by round."""
    for p in ("fwd", "bwd"):
        for runner in runners:
            mine, theirs = times[("ours", p)], times[(runner, p)]
            ratio = statistics.median(a / b for a, b in zip(mine, theirs))
            print(f"{name:11s} {count:7d} {p:>4s} {runner:>8s} {1e3 * min(theirs):8.2f} {ratio:8.2f}")


def two_solvers(before):
    """cifar10_quick solvers, one with TREE's max pooling ops."""
    from bench_step import pycaffe_solver
    solvers = {"ours": pycaffe_solver("cifar10_quick"), "before": pycaffe_solver("cifar10_quick")}
    for layer in solvers["before"].net.layers:
        op = getattr(layer, "op", None)
        if type(op).__name__ == "MaxPooling":
            g = op.geometry
            layer.op = before.MaxPooling(before.PoolGeometry(g.kernel, g.stride, g.pad, g.in_size, g.out_size))
    return solvers


def bench_in_net(counts, rounds, before, name="pool1"):
    """`name` timed inside whole forward and backward passes run layer by layer."""
    nets = {runner: solver.net for runner, solver in two_solvers(before).items()}
    print(f"{'layer':11s} {'threads':>7s} {'pass':>4s} {'runner':>8s} {'best ms':>8s} {'ours/it':>8s}")
    for count in counts:
        set_threads(count)
        times = {(r, p): [] for r in nets for p in ("fwd", "bwd")}
        for k in range(rounds + 10):
            for runner in (list(nets) if k % 2 else list(nets)[::-1]):
                net = nets[runner]
                at = net.layer_names.index(name)
                for i in range(len(net.layers)):
                    start = time.perf_counter()
                    net.forward(i, i)
                    if i == at and k >= 10:     # the first 10: buffers, and the ops' Choices settle
                        times[(runner, "fwd")].append(time.perf_counter() - start)
                for i in range(len(net.layers) - 1, -1, -1):
                    start = time.perf_counter()
                    net.backward(i, i)
                    if i == at and k >= 10:
                        times[(runner, "bwd")].append(time.perf_counter() - start)
        print_rows(name, count, nets, times)
    set_threads(1)


def bench_step(counts, rounds, before):
    """Whole cifar10_quick steps, this tree's max pooling against TREE's."""
    solvers = two_solvers(before)
    print(f"{'net':13s} {'threads':>7s} {'runner':>8s} {'best ms':>8s} {'ours/it':>8s}")
    for count in counts:
        set_threads(count)
        for solver in solvers.values():
            for _ in range(10):
                solver.step(1)
        times = {r: [] for r in solvers}
        for k in range(rounds):
            for runner in (list(solvers) if k % 2 else list(solvers)[::-1]):
                times[runner].append(best_of(lambda solver=solvers[runner]: solver.step(1), 2))
        for runner in solvers:
            ratio = statistics.median(a / b for a, b in zip(times["ours"], times[runner]))
            print(f"{'cifar10_quick':13s} {count:7d} {runner:>8s} {1e3 * min(times[runner]):8.2f} {ratio:8.2f}")
    set_threads(1)


def bench_ave(counts, rounds):
    """cifar10's AVE pool2/pool3 GEMMs: one whole matmul against the op."""
    import numpy
    from pycaffe_dist import ops
    rng = numpy.random.default_rng(0)
    evict = numpy.empty(8 << 20, numpy.float32)
    print("layer     threads pass  whole ms     op ms  op/whole")
    for name, shape in (("c10.pool2", (100, 32, 16, 16)), ("c10.pool3", (100, 64, 8, 8))):
        n, c, h, w = shape
        out = tuple(ops.pooled_size(s, 3, 2, 0) for s in (h, w))
        op = ops.AveragePooling(ops.PoolGeometry((3, 3), (2, 2), (0, 0), (h, w), out))
        x, y = rng.standard_normal(shape, dtype=numpy.float32), numpy.empty((n, c) + out, numpy.float32)
        dy, dx = rng.standard_normal(y.shape, dtype=numpy.float32), numpy.empty_like(x)
        operator = op._operator(numpy, numpy.float32)
        ways = {("fwd", "whole"): functools.partial(numpy.matmul, x.reshape(n * c, -1), operator,
                                                    out=y.reshape(n * c, -1)),
                ("fwd", "op"): functools.partial(op.forward, x, y),
                ("bwd", "whole"): functools.partial(numpy.matmul, dy.reshape(n * c, -1), operator.T,
                                                    out=dx.reshape(n * c, -1)),
                ("bwd", "op"): functools.partial(op.backward, dy, dx)}
        runners = {(count,) + way: run for count in counts for way, run in ways.items()}
        times = {key: [] for key in runners}
        for _ in range(rounds + 10):
            for key, run in runners.items():
                set_threads(key[0])
                evict += 1
                start = time.perf_counter()
                run()
                times[key].append(time.perf_counter() - start)
        for count in counts:
            for kind in ("fwd", "bwd"):
                whole, mine = times[(count, kind, "whole")][10:], times[(count, kind, "op")][10:]
                ratio = statistics.median(b / a for a, b in zip(whole, mine))
                print(f"{name:9s} {count:7d} {kind:4s} {1e3 * min(whole):9.3f} {1e3 * min(mine):9.3f} {ratio:9.2f}")
    set_threads(1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--layers", default=",".join(LAYERS))
    parser.add_argument("--against", help="another pycaffe_dist checkout, run as 'before'")
    parser.add_argument("--step", action="store_true", help="whole cifar10_quick steps against --against's pooling")
    parser.add_argument("--in-net", action="store_true", help="pool1 inside cifar10_quick against --against's")
    parser.add_argument("--ave", action="store_true", help="cifar10's AVE GEMMs: whole matmul against the op")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.threads.split(",")]
    before = load_pooling(args.against) if args.against else None
    print(f"# load average {os.getloadavg()[0]:.2f} at start")
    if (args.step or args.in_net) and before is None:
        parser.error("--step and --in-net need --against")
    if args.ave:
        bench_ave(counts, args.rounds)
    elif args.step:
        bench_step(counts, args.rounds, before)
    elif args.in_net:
        bench_in_net(counts, args.rounds, before)
    else:
        bench_layers(args.layers.split(","), counts, args.rounds, before)
    print(f"# load average {os.getloadavg()[0]:.2f} at end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
