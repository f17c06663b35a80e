"""CuPy buffers under MPI go through pooled host buffers: the helper, every call under mpiexec, GPUs if any."""
import numpy
import pytest

from pycaffe_dist import backend
from pycaffe_dist.parallel.staging import HostStaging

from .mpirun import needs_mpi, run

needs_gpu = pytest.mark.skipif(not backend.cupy_available, reason="needs cupy and a GPU")


def test_staging_copies_in_and_back_and_reuses_its_host_buffers():
    staging = HostStaging(stage_numpy=True)
    buf = numpy.arange(12, dtype=numpy.float32).reshape(3, 4)
    with staging.on_host(buf) as host:
        assert host.shape == (12,) and host.dtype == numpy.float32
        assert not numpy.shares_memory(host, buf)
        assert numpy.array_equal(host, numpy.arange(12))
        host *= 2                                   # what an MPI call writes
    assert numpy.array_equal(buf.ravel(), 2 * numpy.arange(12))
    with staging.on_host(buf, copy_out=False) as host:
        host[:] = -1                                # a send, or a non-root's reduce: nothing comes back
    assert numpy.array_equal(buf.ravel(), 2 * numpy.arange(12))
    with staging.on_host(buf, copy_in=False) as host:
        host[:] = 7                                 # a receive: what arrived replaces buf
    assert (buf == 7).all()
    assert staging.allocations == 1                 # one host buffer, reused by every call
    first = staging.lease(buf)
    second = staging.lease(numpy.zeros(12, numpy.float32))
    assert not numpy.shares_memory(first, second)   # two in flight at once need two buffers
    staging.release(first)
    staging.release(second)
    for _ in range(3):
        a, b = staging.lease(buf), staging.lease(buf)
        staging.release(a)
        staging.release(b)
    assert staging.allocations == 2
    staging.lease(numpy.zeros(5, numpy.float64))    # another size: another buffer
    assert staging.allocations == 3


def test_numpy_buffers_are_not_staged_unless_asked_and_strided_ones_are_refused():
    staging = HostStaging()
    buf = numpy.ones(4, numpy.float32)
    with staging.on_host(buf) as host:
        assert host is buf
    assert staging.allocations == 0
    with pytest.raises(TypeError, match="contiguous"):
        HostStaging(stage_numpy=True).lease(numpy.ones((4, 4))[:, 1])


@needs_mpi
def test_every_call_and_algorithm_through_host_staging_equals_the_numpy_sums():
    """numpy arrays sent down CuPy's path: collectives, send/recv, requests tested one by one, each algorithm."""
    result = run(3, ["staging.py", "numpy"], timeout=90)
    assert result.stdout.count("staging checks passed") == 3, result.stdout


@needs_mpi
@needs_gpu
def test_cupy_arrays_under_mpi():
    result = run(2, ["staging.py", "cupy"], timeout=120)
    assert result.stdout.count("staging checks passed") == 2, result.stdout


@needs_mpi
@needs_gpu
@pytest.mark.parametrize("ranks,settings", [
    (2, []), (2, ["algorithm=ring"]), (2, ["algorithm=binomial"]), (3, ["algorithm=halving_doubling"]),
    (2, ["strategy=easgd", "tau=4"]), (2, ["strategy=eamsgd", "tau=4"]), (3, ["strategy=ssp", "staleness=2"]),
    (4, ["strategy=ps", "servers=2"]), (4, ["strategy=downpour", "servers=2", "n_fetch=2", "n_push=3"]),
    (2, ["compression=onebit"]), (2, ["compression=fp16"]), (2, ["compression=topk", "topk_ratio=0.1"]),
], ids=["sync", "ring", "binomial", "halving_doubling", "easgd", "eamsgd", "ssp", "ps", "downpour", "onebit",
        "fp16", "topk"])
def test_every_strategy_trains_on_gpus(tmp_path, ranks, settings):
    from . import problems
    data = problems.write_separable(str(tmp_path / "data.npz"))
    out = tmp_path / "out"
    out.mkdir()
    solver = problems.write_mlp_solver(str(tmp_path), "mlp", 40)
    run(ranks, ["train_job.py", solver, str(out), "--feed", data, "--gpu", "0", "--set", "timeout=60"] + settings,
        timeout=180, runner=False)
    import json
    with open(out / "worker0.json") as f:
        root = json.load(f)
    assert root["iter"] == 40 and root["test_scores"][0]["accuracy"] > 0.95
    weights = [numpy.load(p) for p in sorted(out.glob("worker*.npy"))]
    for w in weights:
        assert numpy.allclose(w, weights[0], atol=1e-5)


@needs_mpi
@pytest.mark.skipif(backend.cupy_available, reason="checks the message on a machine without a GPU")
def test_gpu_under_mpiexec_without_a_gpu_is_one_clear_error(tmp_path):
    from . import problems
    solver = problems.write_mlp_solver(str(tmp_path), "mlp", 5)
    result = run(2, ["-m", "pycaffe_dist", "train", "--solver", solver, "--gpu", "0"], timeout=60, check=False)
    assert result.returncode != 0
    errors = [line for line in result.stdout.splitlines() if line.startswith("pycaffe-dist train: error")]
    assert len(errors) == 2 and "-gpu 0: no GPU is available" in errors[0], result.stdout
    assert "Traceback" not in result.stdout
