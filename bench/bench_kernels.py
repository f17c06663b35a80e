"""The CuPy kernels of ops/kernels.py against the xp code path they replace,
both on the same GPU in the same run: GPU ms per call and the ratio
(xp path / kernel; above 1 means the kernel pays). Shapes are cifar10_full's
and CaffeNet's layers at their usual batch sizes.

    .venv/bin/python bench/bench_kernels.py [--repeat 50]

Without a GPU it says so and exits 0 (the kernels are checked on the host by
tests/ops/test_kernels.py).
"""
import argparse
import os
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cases(cupy):
    import numpy
    from pycaffe_dist import ops
    from pycaffe_dist.ops import kernels
    from pycaffe_dist.solvers import updates
    from pycaffe_dist.solvers.base import Solver

    rng = numpy.random.default_rng(0)

    def rand(*shape):
        return cupy.asarray(rng.normal(size=shape).astype(numpy.float32))

    def pool(cls, shape, k, s, p):
        out = tuple(ops.pooled_size(n, k, s, p) for n in shape[2:])
        op = cls(ops.PoolGeometry((k, k), (s, s), (p, p), shape[2:], out))
        x, y, dy, dx = rand(*shape), rand(*shape[:2], *out), rand(*shape[:2], *out), rand(*shape)
        return lambda: (op.forward(x, y), op.backward(dy, dx, x))

    def lrn(shape):
        op = ops.LRN(5, 1e-4, 0.75, 1.0, across_channels=True)
        x, y, dy, dx = rand(*shape), rand(*shape), rand(*shape), rand(*shape)
        return lambda: (op.forward(x, y), op.backward(dy, dx, x))

    def im2col(shape, k, p):
        g = ops.ConvGeometry((k, k), (1, 1), (p, p), (1, 1))
        op = ops.Im2col(g)
        x, col = rand(*shape), rand(*shape[:2], k, k, *g.out_shape(shape[2:]))
        return lambda: (op.forward(x, col), op.backward(col, x))

    def solver(solver_type, n):
        rule, count = updates.RULES[solver_type]
        param = types.SimpleNamespace(momentum=0.9, momentum2=0.999, delta=1e-8, rms_decay=0.98,
                                      weight_decay=5e-4, regularization_type="L2", iter_size=1,
                                      clip_gradients=-1, display=0)
        s = types.SimpleNamespace(
            param=param, path="<bench>", type=solver_type, iter=0, is_root=True, rule=rule,
            net=types.SimpleNamespace(xp=cupy, flat_data=rand(n), flat_diff=rand(n) * 1e-3),
            history=[cupy.zeros(n, numpy.float32) for _ in range(count)],
            _lr_mult=cupy.ones(n, numpy.float32), _decay_mult=cupy.ones(n, numpy.float32),
            _tmp=cupy.zeros(n, numpy.float32), _rate=cupy.zeros(n, numpy.float32), learning_rate=lambda: 1e-3)
        return lambda: Solver.apply_update(s)

    return [
        ("max pool cifar pool1 (100,32,32,32) 3/2", pool(ops.MaxPooling, (100, 32, 32, 32), 3, 2, 0)),
        ("ave pool cifar pool2 (100,32,16,16) 3/2", pool(ops.AveragePooling, (100, 32, 16, 16), 3, 2, 0)),
        ("max pool caffenet pool1 (16,96,55,55) 3/2", pool(ops.MaxPooling, (16, 96, 55, 55), 3, 2, 0)),
        ("LRN caffenet norm1 (16,96,27,27)", lrn((16, 96, 27, 27))),
        ("im2col+col2im cifar conv2 (100,32,16,16) 5 pad 2", im2col((100, 32, 16, 16), 5, 2)),
    ] + [(f"{t} update, 6.2M parameters (caffenet/10)", solver(t, 6_200_000)) for t in sorted(updates.RULES)], kernels


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args(argv)
    from pycaffe_dist import backend
    if not backend.cupy_available:
        print("bench_kernels: no GPU (cupy reports none); nothing to measure")
        return 0
    from cupyx.profiler import benchmark
    cupy = backend.cupy
    table, kernels = cases(cupy)
    dispatch = kernels.on_gpu
    print(f"{'op':<52} {'xp ms':>8} {'kernel ms':>10} {'ratio':>7}")
    for name, fn in table:
        times = {}
        for path, on_gpu in (("xp", lambda a: False), ("kernel", dispatch)):
            kernels.on_gpu = on_gpu
            result = benchmark(fn, n_repeat=args.repeat, n_warmup=5)
            times[path] = float(result.gpu_times.mean()) * 1000
        kernels.on_gpu = dispatch
        print(f"{name:<52} {times['xp']:8.3f} {times['kernel']:10.3f} {times['xp'] / times['kernel']:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
