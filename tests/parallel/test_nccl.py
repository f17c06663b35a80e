"""NCCL through CuPy: imports everywhere, runs where GPUs are (skips elsewhere)."""
import numpy
import pytest

from pycaffe_dist import backend, parallel
from pycaffe_dist.parallel import LoopbackGroup, nccl, run_workers
from pycaffe_dist.parallel.comm import ordered_allreduce
from pycaffe_dist.parallel.p2p_tree import tree_allreduce

from . import helpers


def gpu_count():
    if not nccl.available:
        return 0
    return backend.cupy.cuda.runtime.getDeviceCount()


def test_the_module_imports_without_a_gpu():
    assert nccl.available in (True, False)
    if not backend.cupy_available:
        assert not nccl.available


def nccl_exercise(worker):
    """Every call of the interface on GPU buffers, as one rank."""
    cupy = backend.cupy
    comm = nccl.NcclComm(worker.comm(), worker.rank)
    rank, size = comm.rank, comm.size
    out = {}
    buf = cupy.arange(1000, dtype=cupy.float32) * (rank + 1)
    comm.allreduce(buf)
    out["allreduce"] = cupy.asnumpy(buf)
    buf = cupy.full(10, rank, cupy.float64)
    comm.bcast(buf, size - 1)
    out["bcast"] = cupy.asnumpy(buf)
    buf = cupy.arange(500, dtype=cupy.float64) + rank
    tree_allreduce(comm, buf)
    out["tree"] = cupy.asnumpy(buf)
    buf = cupy.full(3, float(rank + 1))
    out["ordered"] = cupy.asnumpy(ordered_allreduce(comm, [buf]))
    comm.barrier()
    comm.close()
    return out


@pytest.mark.skipif(gpu_count() < 1, reason="needs a GPU with NCCL")
def test_nccl_collectives_on_every_gpu():
    size = gpu_count()
    results = run_workers(nccl_exercise, size, group=LoopbackGroup(size, processes=True))
    total = sum(range(1, size + 1))
    for out in results:
        numpy.testing.assert_array_equal(out["allreduce"], numpy.arange(1000, dtype=numpy.float32) * total)
        numpy.testing.assert_array_equal(out["bcast"], numpy.full(10, size - 1.0))
        numpy.testing.assert_array_equal(out["tree"], size * numpy.arange(500.0) + sum(range(size)))
        numpy.testing.assert_array_equal(out["ordered"], numpy.full(3, float(total)))


@pytest.mark.skipif(gpu_count() < 2, reason="needs two GPUs with NCCL")
def test_two_gpus_equal_one_worker_with_twice_the_batch(tmp_path):
    data = helpers.write_dataset(str(tmp_path / "lmdb"), 120)
    split = helpers.write_solver(str(tmp_path), "split", 4, 30, data)
    whole = helpers.write_solver(str(tmp_path), "whole", 8, 30, data)
    gpus = parallel.train(split, gpus=[0, 1], dtype=numpy.float64, deterministic=True, return_weights=True)
    cpu = parallel.train(whole, workers=1, shards=2, dtype=numpy.float64, deterministic=True,
                         return_weights=True)
    assert len(set(gpus.digests)) == 1
    # cuBLAS and OpenBLAS round differently: equal to float64 rounding, not to the bit.
    assert numpy.abs(gpus.weights - cpu.weights).max() < 1e-10
