"""One training iteration of Caffe's LeNet and cifar10_quick: pycaffe_dist vs PyTorch CPU.

Each thread count runs in its own process with OMP/OpenBLAS/MKL threads set
before numpy or torch load; inside it the two frameworks alternate in rounds
so machine noise hits both alike. Prints ms per iteration (median) and the
ratio pycaffe_dist / PyTorch: below 1.0 means pycaffe_dist is faster.

    .venv/bin/python bench/bench_step.py [--threads 1,2] [--nets lenet,cifar10_quick] [--steps 30]
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


def pycaffe_step(name):
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
    return lambda: solver.step(1)


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


def worker(nets, steps, rounds):
    import torch
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    results = {}
    for name in nets:
        runners = {"pycaffe_dist": pycaffe_step(name), "pytorch": torch_step(name)}
        times = {k: [] for k in runners}
        for run in runners.values():       # warm-up: allocation, first-call costs
            for _ in range(3):
                run()
        for _ in range(rounds):
            for key, run in runners.items():
                for _ in range(steps // rounds):
                    t = time.perf_counter()
                    run()
                    times[key].append(time.perf_counter() - t)
        results[name] = {k: statistics.median(v) * 1000 for k, v in times.items()}
    print(json.dumps(results))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--nets", default="lenet,cifar10_quick")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    nets = args.nets.split(",")
    if args.worker:
        worker(nets, args.steps, args.rounds)
        return 0
    print("%-14s %7s %14s %12s %8s" % ("net", "threads", "pycaffe_dist", "pytorch", "ratio"))
    for threads in args.threads.split(","):
        env = dict(os.environ, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads,
                   MKL_NUM_THREADS=threads)
        out = subprocess.run([sys.executable, __file__, "--worker", "--nets", args.nets,
                              "--steps", str(args.steps), "--rounds", str(args.rounds)],
                             env=env, capture_output=True, text=True)
        if out.returncode:
            print(out.stderr, file=sys.stderr)
            return out.returncode
        for name, r in json.loads(out.stdout.strip().splitlines()[-1]).items():
            print("%-14s %7s %11.2f ms %9.2f ms %8.2f" % (name, threads, r["pycaffe_dist"], r["pytorch"],
                                                         r["pycaffe_dist"] / r["pytorch"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
