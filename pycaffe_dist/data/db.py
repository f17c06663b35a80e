"""LMDB databases as Caffe's tools write and its Data layer reads them.

This is the one module that imports `lmdb`; `available` says whether it
could. Readers open databases read-only and without a lock file, so a
database on a read-only disk, or one that another process is writing, can
still be read. Writers build the database under a temporary name next to
the final one and rename it at the end, so an interrupted conversion never
leaves a half-written database under the name a net will read.
"""
import itertools
import os
import shutil
import threading

try:  # pragma: no cover - depends on the installation
    import lmdb as _lmdb
    available = True
except ImportError:
    _lmdb = None
    available = False

COMMIT_EVERY = 1000          # records per transaction, as Caffe's converters
_INITIAL_MAP_SIZE = 1 << 30  # grown by doubling when a transaction does not fit


class DBError(Exception):
    """A database that cannot be opened, read or written; the message names it."""


def _require_lmdb(path):
    if not available:
        raise DBError(f"{path}: the lmdb package is not installed (pip install lmdb)")


def check_backend(backend, path):
    """Refuse backends other than LMDB with a message saying so."""
    name = backend if isinstance(backend, str) else {0: "leveldb", 1: "lmdb"}.get(backend, str(backend))
    if name.lower() != "lmdb":
        raise DBError(f"{path}: backend {name!r} is not supported; convert the data to LMDB")


def is_lmdb(path):
    """Whether `path` is an LMDB database (a folder holding data.mdb, or the file itself)."""
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, "data.mdb"))
    return os.path.isfile(path)


# lmdb allows one Environment per database and process, but a process may
# hold several readers of one database (train and test nets, Hogwild
# threads, a parallel worker's shard nets): they share it, counted.
_envs = {}                   # real path -> [Environment, readers]
_envs_lock = threading.Lock()


def _acquire_env(path, key):
    """The shared Environment of the database at `path`; `key` is its real path."""
    with _envs_lock:
        entry = _envs.get(key)
        if entry is None:
            try:
                env = _lmdb.open(path, readonly=True, lock=False, readahead=False,
                                 subdir=os.path.isdir(path), max_readers=126)
            except _lmdb.Error as e:
                raise DBError(f"{path}: cannot open as LMDB: {e}") from None
            entry = _envs[key] = [env, 0]
        entry[1] += 1
        return entry[0]


def _release_env(key):
    with _envs_lock:
        entry = _envs[key]
        entry[1] -= 1
        if entry[1] == 0:
            entry[0].close()
            del _envs[key]


class Reader:
    """Read-only access to an LMDB database: record count and a wrapping cursor."""

    def __init__(self, path):
        _require_lmdb(path)
        self.path = path
        if not os.path.exists(path):
            raise DBError(f"{path}: no such database")
        self._env_key = os.path.realpath(path)    # fixed now: the working directory may change
        self._env = _acquire_env(path, self._env_key)
        self._txn = self._env.begin(buffers=False)
        self._cursor = self._txn.cursor()
        self.size = self._env.stat()["entries"]
        if self.size == 0:
            self.close()
            raise DBError(f"{path}: the database is empty")
        self._cursor.first()

    def close(self):
        if self._env is not None:
            self._cursor = None
            self._txn.abort()
            _release_env(self._env_key)
            self._env = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def first(self):
        self._cursor.first()

    def item(self):
        """The (key, value) under the cursor."""
        return self._cursor.item()

    def advance(self):
        """Move to the next record, wrapping to the first at the end."""
        if not self._cursor.next():
            self._cursor.first()

    def take(self, n):
        """The next n (key, value) records, wrapping; the cursor ends on the record after them."""
        out = []
        while True:
            # iternext() walks in C, yielding the record under the cursor before
            # each step; islice stops it still *on* the last record it yielded.
            out.extend(itertools.islice(self._cursor.iternext(), n - len(out)))
            if len(out) == n:
                if not self._cursor.next():
                    self._cursor.first()
                return out
            self._cursor.first()   # ran off the end: wrap

    def seek_offset(self, offset):
        """Put the cursor on record number `offset % size` (records in key order)."""
        self._cursor.first()
        for _ in range(offset % self.size):
            self._cursor.next()

    def items(self):
        """Every (key, value) once, in key order, without moving the shared cursor."""
        with self._env.begin(buffers=False) as txn:
            yield from txn.cursor()


class Writer:
    """Write a new LMDB database atomically: temp directory, then rename.

    Use as a context manager; records are committed every COMMIT_EVERY puts
    and the database appears under `path` only when the block ends without
    an exception. An existing `path` is refused, as Caffe's tools do, so
    data is never overwritten by mistake.
    """

    def __init__(self, path):
        _require_lmdb(path)
        self.path = os.path.normpath(path)
        if os.path.exists(self.path):
            raise DBError(f"{path}: already exists; remove it or choose another name")
        parent = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(parent):
            raise DBError(f"{path}: the folder {parent} does not exist")
        self.tmp_path = os.path.join(parent, f".{os.path.basename(self.path)}.tmp-{os.getpid()}")
        shutil.rmtree(self.tmp_path, ignore_errors=True)
        self._map_size = _INITIAL_MAP_SIZE
        try:
            self._env = _lmdb.open(self.tmp_path, map_size=self._map_size, subdir=True,
                                   meminit=False, map_async=True)
        except _lmdb.Error as e:
            raise DBError(f"{self.tmp_path}: cannot create: {e}") from None
        self._pending = []
        self.count = 0

    def put(self, key, value):
        if isinstance(key, str):
            key = key.encode("utf-8")
        self._pending.append((key, value))
        self.count += 1
        if len(self._pending) >= COMMIT_EVERY:
            self.commit()

    def commit(self):
        """Write the pending records in one transaction, growing the map if needed."""
        while self._pending:
            try:
                with self._env.begin(write=True) as txn:
                    for key, value in self._pending:
                        txn.put(key, value)
                self._pending = []
            except _lmdb.MapFullError:
                # The transaction was aborted; double the map and write it again.
                self._map_size *= 2
                self._env.set_mapsize(self._map_size)

    def finish(self):
        """Commit, close and move the database to its final name."""
        self.commit()
        self._env.sync(True)
        self._env.close()
        self._env = None
        os.rename(self.tmp_path, self.path)

    def abort(self):
        if self._env is not None:
            self._env.close()
            self._env = None
        shutil.rmtree(self.tmp_path, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.finish()
        else:
            self.abort()
        return False
