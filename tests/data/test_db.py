import os

import pytest

from pycaffe_dist.data import db


def test_write_then_read_in_key_order_and_wrap(tmp_path):
    path = str(tmp_path / "x_lmdb")
    with db.Writer(path) as w:
        for i in (2, 0, 1):
            w.put(f"{i:08d}", b"v%d" % i)
    assert os.listdir(tmp_path) == ["x_lmdb"]  # no temp directory left beside it
    with db.Reader(path) as r:
        assert r.size == 3
        seen = []
        for _ in range(5):
            seen.append(r.item())
            r.advance()
        assert [k for k, _ in seen] == [b"00000000", b"00000001", b"00000002", b"00000000", b"00000001"]
        r.seek_offset(4)
        assert r.item() == (b"00000001", b"v1")


def test_failure_leaves_nothing_under_the_final_name(tmp_path):
    path = str(tmp_path / "x_lmdb")
    with pytest.raises(RuntimeError):
        with db.Writer(path) as w:
            for i in range(2500):   # past two commits
                w.put(f"{i:08d}", b"x")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_existing_database_is_refused(tmp_path):
    path = str(tmp_path / "x_lmdb")
    os.mkdir(path)
    with pytest.raises(db.DBError, match="already exists"):
        db.Writer(path)


def test_map_grows_when_full(tmp_path, monkeypatch):
    monkeypatch.setattr(db, "_INITIAL_MAP_SIZE", 64 * 1024)
    path = str(tmp_path / "big_lmdb")
    with db.Writer(path) as w:
        for i in range(300):
            w.put(f"{i:08d}", bytes(4000))
    with db.Reader(path) as r:
        assert r.size == 300


def test_reader_errors(tmp_path):
    with pytest.raises(db.DBError, match="no such database"):
        db.Reader(str(tmp_path / "missing"))
    with pytest.raises(db.DBError, match="not supported"):
        db.check_backend(0, "x")
    db.check_backend(1, "x")
    db.check_backend("LMDB", "x")


def test_take_wraps_and_continues_where_it_stopped(tmp_path):
    path = str(tmp_path / "x_lmdb")
    with db.Writer(path) as w:
        for i in range(5):
            w.put(f"{i:08d}", b"%d" % i)
    with db.Reader(path) as r:
        got = [v for _ in range(4) for _, v in r.take(3)]
        assert got == [b"0", b"1", b"2", b"3", b"4", b"0", b"1", b"2", b"3", b"4", b"0", b"1"]
        assert r.item()[1] == b"2"
        assert [v for _, v in r.take(12)] == [b"%d" % (i % 5) for i in range(2, 14)]
