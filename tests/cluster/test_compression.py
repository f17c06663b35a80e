"""Compressed gradients: the codecs against their formulas, error feedback under mpiexec, and what it buys."""
import os

import numpy

from pycaffe_dist.parallel.compression import OneBit, TopK

from . import problems
from .mpirun import needs_mpi, run


def test_one_bit_sends_signs_and_the_means_of_each_column():
    rng = numpy.random.default_rng(0)
    columns = numpy.repeat(numpy.arange(5), [3, 8, 1, 16, 2])      # uneven columns, one of a single value
    g = rng.standard_normal(columns.size).astype(numpy.float32)
    g[columns == 2] = -0.5                                          # a column with no positive value
    codec = OneBit(columns)
    payload, sent = codec.encode(g)
    assert payload.dtype == numpy.uint8 and payload.size == (30 + 7) // 8 + 8 * 5
    expected = numpy.empty_like(g)
    for c in range(5):
        values = g[columns == c]
        pos, neg = values[values > 0], values[values <= 0]
        expected[columns == c] = numpy.where(values > 0, pos.mean() if pos.size else 0, neg.mean() if neg.size else 0)
    assert numpy.allclose(sent, expected, atol=1e-6)
    assert numpy.array_equal(codec.decode(payload), sent)           # what is sent is what the peers decode
    # The residual g - sent sums to zero in every column: the means carry each column's total.
    assert numpy.allclose(numpy.bincount(columns, weights=g - sent), 0, atol=1e-5)


def test_top_k_sends_the_largest_magnitudes():
    g = numpy.array([0.1, -3.0, 0.2, 2.5, -0.05, 1.0, -1.5, 0.0], numpy.float32)
    codec = TopK(g.size, 0.375)                                     # k = 3
    payload, sent = codec.encode(g)
    assert payload.size == 8 * 3
    assert numpy.array_equal(sent, [0, -3.0, 0, 2.5, 0, 0, -1.5, 0])
    assert numpy.array_equal(codec.decode(payload), sent)


@needs_mpi
def test_error_feedback_residuals_follow_the_formula_under_mpiexec():
    result = run(3, ["compression.py"], timeout=60)
    assert result.stdout.count("compression checks passed") == 3, result.stdout


@needs_mpi
def test_one_bit_with_error_feedback_tracks_uncompressed_training_closer_than_without(tmp_path):
    data = problems.write_separable(str(tmp_path / "data.npz"))
    solver = problems.write_mlp_solver(str(tmp_path), "mlp", 40)
    final = {}
    for name, settings in [("plain", []), ("feedback", ["compression=onebit"]),
                           ("no_feedback", ["compression=onebit", "error_feedback=false"])]:
        out = str(tmp_path / name)
        os.makedirs(out)
        run(3, ["train_job.py", solver, out, "--feed", data, "--set", "timeout=30"] + settings, runner=False)
        final[name] = numpy.load(os.path.join(out, "worker0.npy"))
    distance = {k: numpy.linalg.norm(final[k] - final["plain"]) / numpy.linalg.norm(final["plain"])
                for k in ("feedback", "no_feedback")}
    assert distance["feedback"] < 0.5 * distance["no_feedback"], distance
