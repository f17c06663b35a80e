"""Every allreduce algorithm under real `mpiexec -n 2/3/4`: numpy's sums, MPI's Allreduce, the same bits everywhere."""
import pytest

from .mpirun import needs_mpi, run

pytestmark = needs_mpi


@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_every_algorithm_equals_the_numpy_sum_on_every_rank(ranks):
    result = run(ranks, ["allreduce.py"], timeout=90)
    assert result.stdout.count("all allreduce checks passed") == ranks, result.stdout
