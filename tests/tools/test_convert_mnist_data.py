import gzip
import os

import numpy
import pytest

from pycaffe_dist.data import datum, db, idx
from pycaffe_dist.tools import convert_mnist_data


def write_pair(tmp_path, n=25, rows=6, cols=5):
    rng = numpy.random.default_rng(0)
    images = rng.integers(0, 256, (n, rows, cols), dtype=numpy.uint8)
    labels = rng.integers(0, 10, n, dtype=numpy.uint8)
    idx.write_idx(tmp_path / "images-idx3-ubyte", images)
    idx.write_idx(tmp_path / "labels-idx1-ubyte", labels)
    return images, labels, str(tmp_path / "images-idx3-ubyte"), str(tmp_path / "labels-idx1-ubyte")


def test_idx_to_lmdb_equals_the_arrays(tmp_path, capsys):
    images, labels, ipath, lpath = write_pair(tmp_path)
    out = str(tmp_path / "db")
    assert convert_mnist_data.main([ipath, lpath, out, "--backend=lmdb"]) == 0
    assert "wrote 25 records" in capsys.readouterr().out
    with db.Reader(out) as r:
        recs = list(r.items())
    assert [k for k, _ in recs] == [b"%08d" % i for i in range(25)]
    for (_, v), im, label in zip(recs, images, labels):
        d = datum.parse(v)
        assert (d.channels, d.height, d.width, d.label) == (1, 6, 5, label)
        numpy.testing.assert_array_equal(datum.datum_to_array(d)[0], im)


def test_gzipped_input(tmp_path):
    images, _, ipath, lpath = write_pair(tmp_path, n=3)
    for p in (ipath, lpath):
        with open(p, "rb") as f, open(p + ".gz", "wb") as g:
            g.write(gzip.compress(f.read()))
    assert convert_mnist_data.main([ipath + ".gz", lpath + ".gz", str(tmp_path / "db")]) == 0
    with db.Reader(str(tmp_path / "db")) as r:
        assert r.size == 3


def check_failure(capsys, tmp_path, argv, pattern):
    assert convert_mnist_data.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and pattern in err[0], err
    assert not os.path.exists(tmp_path / "db")
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


def test_wrong_magic(tmp_path, capsys):
    _, _, ipath, lpath = write_pair(tmp_path)
    check_failure(capsys, tmp_path, [lpath, ipath, str(tmp_path / "db")],
                  f"{lpath}: wrong magic number 2049, expected 2051")


def test_truncated_images(tmp_path, capsys):
    _, _, ipath, lpath = write_pair(tmp_path)
    with open(ipath, "r+b") as f:
        f.truncate(16 + 30 * 10)
    check_failure(capsys, tmp_path, [ipath, lpath, str(tmp_path / "db")], f"{ipath}: truncated")


def test_count_mismatch(tmp_path, capsys):
    _, _, ipath, _ = write_pair(tmp_path)
    idx.write_idx(tmp_path / "few", numpy.zeros(3, numpy.uint8))
    check_failure(capsys, tmp_path, [ipath, str(tmp_path / "few"), str(tmp_path / "db")],
                  "holds 25 images but")


def test_thin_script_runs_the_tool(tmp_path):
    import subprocess
    import sys
    _, _, ipath, lpath = write_pair(tmp_path, n=2)
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    done = subprocess.run([sys.executable, os.path.join(root, "tools", "convert_mnist_data.py"),
                           ipath, lpath, str(tmp_path / "db")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "wrote 2 records" in done.stdout


FASHION = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(not os.path.isdir(FASHION), reason="dataset-fashion-mnist is not installed")
def test_fashion_mnist_test_set(tmp_path):
    out = str(tmp_path / "db")
    assert convert_mnist_data.main([f"{FASHION}/t10k-images-idx3-ubyte.gz", f"{FASHION}/t10k-labels-idx1-ubyte.gz",
                                    out]) == 0
    with db.Reader(out) as r:
        assert r.size == 10000
        d = datum.parse(r.item()[1])
        assert (d.channels, d.height, d.width) == (1, 28, 28) and 0 <= d.label < 10
