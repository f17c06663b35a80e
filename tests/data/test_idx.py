import gzip

import numpy
import pytest

from pycaffe_dist.data import idx


def test_round_trip_plain_and_gzipped(tmp_path):
    images = numpy.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=numpy.uint8)
    path = tmp_path / "images-idx3-ubyte"
    idx.write_idx(path, images)
    numpy.testing.assert_array_equal(idx.read_idx(str(path), idx.IMAGES_MAGIC), images)
    gz = tmp_path / "images-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    numpy.testing.assert_array_equal(idx.read_idx(str(gz), idx.IMAGES_MAGIC), images)


def test_labels(tmp_path):
    labels = numpy.arange(10, dtype=numpy.uint8)
    idx.write_idx(tmp_path / "l", labels)
    numpy.testing.assert_array_equal(idx.read_idx(str(tmp_path / "l"), idx.LABELS_MAGIC), labels)


def test_wrong_magic_names_file_and_numbers(tmp_path):
    idx.write_idx(tmp_path / "l", numpy.zeros(3, numpy.uint8))
    with pytest.raises(idx.IdxError, match=r"l: wrong magic number 2049, expected 2051"):
        idx.read_idx(str(tmp_path / "l"), idx.IMAGES_MAGIC)


def test_truncated_data_and_header(tmp_path):
    idx.write_idx(tmp_path / "i", numpy.zeros((4, 2, 2), numpy.uint8))
    raw = (tmp_path / "i").read_bytes()
    (tmp_path / "t").write_bytes(raw[:-3])
    with pytest.raises(idx.IdxError, match=r"t: truncated: header promises 4 x 2 x 2 = 16 bytes of data, file holds 1"):
        idx.read_idx(str(tmp_path / "t"), idx.IMAGES_MAGIC)
    (tmp_path / "h").write_bytes(raw[:9])
    with pytest.raises(idx.IdxError, match="truncated header"):
        idx.read_idx(str(tmp_path / "h"), idx.IMAGES_MAGIC)


def test_missing_file(tmp_path):
    with pytest.raises(idx.IdxError, match="no such file"):
        idx.read_idx(str(tmp_path / "nope"), idx.LABELS_MAGIC)
