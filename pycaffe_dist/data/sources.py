"""Record sources for the prefetch pipeline, and the batch decoders that go with them.

A source hands out records in a fixed order, each tagged with its *offset*:
the running count of records passed since the start, which keeps growing
across epochs. Sharding keeps record `offset` only when
`offset % size == rank` (TRAIN); with the offset counting across epochs,
the union of N workers' batches is exactly one worker's N-times batch,
epoch after epoch. `state()` is the offset to start from to continue.

Decoders are plain module-level functions so a process pool can run them.
"""
import os

import numpy

from . import datum as datum_mod
from . import db, image
from .transformer import uniform

_RAND_SKIP = 4  # transformer streams use 1-3


def initial_offset(seed, rand_skip):
    """Caffe's rand_skip: start a random number of records in (the same for all workers)."""
    if not rand_skip:
        return 0
    return int(uniform(seed, [0], _RAND_SKIP)[0] * (rand_skip + 1))


class LMDBSource:
    """Records (offset, key, value) of an LMDB database, wrapping at the end."""

    def __init__(self, path, offset=0, rank=0, size=1):
        self.path = path
        self.offset = int(offset)
        self.rank, self.size = int(rank), int(size)
        self._reader = None

    def read(self, n):
        if self._reader is None:  # opened on the reader thread, which then owns it
            self._reader = db.Reader(self.path)
            self._reader.seek_offset(self.offset)
        if self.size == 1:
            start = self.offset
            self.offset += n
            return [(start + i, key, value) for i, (key, value) in enumerate(self._reader.take(n))]
        records = []
        reader, size, rank = self._reader, self.size, self.rank
        while len(records) < n:
            if self.offset % size == rank:
                key, value = reader.item()
                records.append((self.offset, key, value))
            reader.advance()
            self.offset += 1
        return records

    def state(self):
        return self.offset

    def close(self):
        if self._reader is not None:
            self._reader.close()
            self._reader = None


class ListSource:
    """Items of a list (e.g. image files), reshuffled each epoch when `shuffle`.

    The order of epoch e is a permutation drawn from (seed, e), so any offset
    maps to its item without replaying earlier epochs.
    """

    def __init__(self, items, offset=0, rank=0, size=1, shuffle=False, seed=0):
        self.items = items
        self.offset = int(offset)
        self.rank, self.size = int(rank), int(size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self._epoch, self._order = None, None

    def item_at(self, offset):
        epoch, pos = divmod(offset, len(self.items))
        if not self.shuffle:
            return self.items[pos]
        if epoch != self._epoch:
            rng = numpy.random.default_rng([self.seed & 0xFFFFFFFF, self.seed >> 32, epoch])
            self._epoch, self._order = epoch, rng.permutation(len(self.items))
        return self.items[self._order[pos]]

    def read(self, n):
        records = []
        while len(records) < n:
            if self.size == 1 or self.offset % self.size == self.rank:
                records.append((self.offset, None, self.item_at(self.offset)))
            self.offset += 1
        return records

    def state(self):
        return self.offset

    def close(self):
        pass


def decode_datums(transformer, records):
    """Serialized Datums -> (N x C x H x W float32 data, N float32 labels)."""
    datums = [datum_mod.parse(value, key) for _, key, value in records]
    offsets = [offset for offset, _, _ in records]
    labels = numpy.fromiter((d.label for d in datums), numpy.float32, len(datums))
    try:
        images = _raw_batch(datums)
        if images is None:
            images = [datum_mod.datum_to_array(d, transformer.color, key) for d, (_, key, _) in zip(datums, records)]
        return transformer.transform_batch(images, offsets), labels
    except ValueError as e:
        keys = ", ".join(repr(k.decode("utf-8", "replace")) for _, k, _ in records[:3])
        raise datum_mod.DatumError(f"batch of records {keys}...: {e}") from None


def _raw_batch(datums):
    """N raw uint8 Datums of one shape as one N x C x H x W view of their joined bytes, else None.

    Small records (MNIST's 784 bytes) cost more in per-record numpy calls
    than in data; one join and one frombuffer per batch is several times faster.
    """
    first = datums[0]
    shape = (first.channels, first.height, first.width)
    if first.encoded or not first.data:
        return None
    if any(d.encoded or (d.channels, d.height, d.width) != shape for d in datums):
        return None
    raw = b"".join(d.data for d in datums)
    if len(raw) != len(datums) * shape[0] * shape[1] * shape[2]:
        return None  # a short record: the per-record path names it
    return numpy.frombuffer(raw, numpy.uint8).reshape((len(datums),) + shape)


def decode_image_files(transformer, color, height, width, records):
    """(path, label, where) items -> (N x C x H x W float32 data, N float32 labels).

    `where` names the list file line for errors.
    """
    arrays, labels, offsets = [], [], []
    for offset, _key, (path, label, where) in records:
        try:
            arrays.append(image.decode(path, color=color, height=height, width=width))
        except image.ImageError as e:
            raise image.ImageError(f"{where}: {e}") from None
        labels.append(label)
        offsets.append(offset)
    return transformer.transform_batch(arrays, offsets), numpy.asarray(labels, numpy.float32)


def read_image_list(path, root_folder=""):
    """Lines `relative/path label` -> [(full path, label, 'file:line')]; errors name the line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise image.ImageError(f"{path}: no such list file") from None
    items = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        # The label is after the last space, so file names may contain spaces.
        name, _, label = line.rpartition(" ")
        where = f"{path}:{number}"
        if not name:
            raise image.ImageError(f"{where}: no label after {line!r} (expected 'path label')")
        try:
            label = int(label)
        except ValueError:
            raise image.ImageError(f"{where}: label {label!r} is not an integer") from None
        items.append((os.path.join(root_folder, name) if root_folder else name, label, where))
    if not items:
        raise image.ImageError(f"{path}: the list is empty")
    return items
