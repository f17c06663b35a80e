import os

import numpy

from pycaffe_dist.data import datum, db
from pycaffe_dist.tools import convert_cifar_data


def write_batches(folder, per_file=3):
    rng = numpy.random.default_rng(0)
    made = {}
    for name in convert_cifar_data.TRAIN_FILES + convert_cifar_data.TEST_FILES:
        recs = rng.integers(0, 256, (per_file, convert_cifar_data.RECORD), dtype=numpy.uint8)
        recs[:, 0] %= 10
        (folder / name).write_bytes(recs.tobytes())
        made[name] = recs
    return made


def test_batches_to_train_and_test_lmdb(tmp_path, capsys):
    made = write_batches(tmp_path)
    out = tmp_path / "out"
    assert convert_cifar_data.main([str(tmp_path), str(out), "lmdb"]) == 0
    assert "wrote 15 train and 3 test records" in capsys.readouterr().out
    train = numpy.concatenate([made[n] for n in convert_cifar_data.TRAIN_FILES])
    for name, expected in (("cifar10_train_lmdb", train), ("cifar10_test_lmdb", made["test_batch.bin"])):
        with db.Reader(str(out / name)) as r:
            recs = list(r.items())
        assert [k for k, _ in recs] == [b"%05d" % i for i in range(len(expected))]
        for (_, v), row in zip(recs, expected):
            d = datum.parse(v)
            assert d.label == row[0]
            # Pixels as stored: RGB planes, not reordered.
            numpy.testing.assert_array_equal(datum.datum_to_array(d).ravel(), row[1:])


def test_truncated_or_missing_batch_writes_nothing(tmp_path, capsys):
    write_batches(tmp_path)
    with open(tmp_path / "test_batch.bin", "r+b") as f:
        f.truncate(convert_cifar_data.RECORD * 2 + 100)
    out = tmp_path / "out"
    assert convert_cifar_data.main([str(tmp_path), str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert "test_batch.bin" in err and "truncated after record 2" in err and len(err.splitlines()) == 1
    assert not os.path.exists(out / "cifar10_train_lmdb") and not os.path.exists(out / "cifar10_test_lmdb")
    os.remove(tmp_path / "data_batch_3.bin")
    assert convert_cifar_data.main([str(tmp_path), str(out)]) == 1
    assert "data_batch_3.bin: no such file" in capsys.readouterr().err
