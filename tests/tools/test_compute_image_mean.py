import numpy

from pycaffe_dist.data import datum, db
from pycaffe_dist.tools import compute_image_mean, convert_imageset
from tests.data.helpers import rgb_to_chw_bgr, write_images, write_lmdb


def test_mean_equals_numpy_mean_and_round_trips(tmp_path, capsys):
    arrays = numpy.random.default_rng(0).integers(0, 256, (2100, 2, 3, 4), dtype=numpy.uint8)  # > 2 chunks
    src = write_lmdb(str(tmp_path / "db"), arrays)
    out = str(tmp_path / "mean.binaryproto")
    assert compute_image_mean.main([src, out]) == 0
    printed = capsys.readouterr().out
    ref = arrays.astype(numpy.float64).mean(axis=0)
    numpy.testing.assert_allclose(datum.load_mean(out), ref, rtol=1e-6)
    assert "mean_value channel [1]: %.6g" % ref[1].mean() in printed


def test_mean_of_encoded_images(tmp_path):
    list_path, entries = write_images(str(tmp_path), 4)
    assert convert_imageset.main(["-encoded", str(tmp_path), list_path, str(tmp_path / "db")]) == 0
    assert compute_image_mean.main([str(tmp_path / "db"), str(tmp_path / "m.binaryproto")]) == 0
    ref = numpy.mean([rgb_to_chw_bgr(p).astype(numpy.float64) for _, _, p in entries], axis=0)
    numpy.testing.assert_allclose(datum.load_mean(str(tmp_path / "m.binaryproto")), ref, rtol=1e-6)


def test_size_mismatch_names_the_record(tmp_path, capsys):
    path = str(tmp_path / "db")
    with db.Writer(path) as w:
        w.put(b"00000000", datum.array_to_datum(numpy.zeros((1, 2, 2), numpy.uint8)).SerializeToString())
        w.put(b"00000001", datum.array_to_datum(numpy.zeros((1, 3, 2), numpy.uint8)).SerializeToString())
    assert compute_image_mean.main([path]) == 1
    assert "record '00000001' is 1x3x2, the first record is 1x2x2" in capsys.readouterr().err
