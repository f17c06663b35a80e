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
from typing import NamedTuple

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


class Decoded(NamedTuple):
    """One read of records, decoded: what the good ones gave, and which were skipped."""

    data: object      # N x C x h x w float32, or None when no record was good
    labels: object    # N float32
    offsets: list     # the good records' offsets, in order
    skipped: list     # [(offset, key, reason)] of the records left out (skip mode)


def _dims(shape):
    return "x".join(str(d) for d in shape)


def _no_good(skipped):
    return Decoded(None, numpy.empty(0, numpy.float32), [], skipped)


def decode_datums(transformer, records, skip=False, shape=None):
    """Serialized Datums -> Decoded.

    A bad record (not a Datum, data that does not fill its declared shape,
    an image that does not decode, a shape other than `shape`, or without
    `shape` other than the batch's first record's) raises DatumError naming
    its key; with `skip` it is left out and listed in `skipped` instead.
    """
    good, skipped = [], []
    for offset, key, value in records:
        try:
            good.append((offset, key, datum_mod.parse(value, key)))
        except datum_mod.DatumError as e:
            skipped.append((offset, key, str(e)))
    images = _raw_batch([d for _, _, d in good], shape)
    if images is None:
        images, kept, ref, first = [], [], shape, None
        for offset, key, d in good:
            name = f"record {datum_mod.record_name(key)}"
            try:
                arr = datum_mod.datum_to_array(d, transformer.color, key)
                if ref is None:
                    ref, first = arr.shape, name
                _check_shape(arr.shape, ref, name, first)
            except datum_mod.DatumError as e:
                skipped.append((offset, key, str(e)))
                continue
            images.append(arr)
            kept.append((offset, key, d))
        good = kept
    skipped = _bad_in_order(skipped, skip, datum_mod.DatumError)
    if not good:
        return _no_good(skipped)
    offsets = [offset for offset, _, _ in good]
    labels = numpy.fromiter((d.label for _, _, d in good), numpy.float32, len(good))
    try:
        return Decoded(transformer.transform_batch(images, offsets), labels, offsets, skipped)
    except ValueError as e:
        keys = ", ".join(datum_mod.record_name(k) for _, k, _ in good[:3])
        raise datum_mod.DatumError(f"batch of records {keys}...: {e}") from None


def _bad_in_order(skipped, skip, error):
    """The bad records by offset; without `skip`, the first of them raised as `error`."""
    skipped.sort(key=lambda bad: bad[0])
    if skipped and not skip:
        raise error(skipped[0][2])
    return skipped


def _check_shape(got, want, name, first, error=datum_mod.DatumError):
    """Refuse a record of another shape than `want`: the layer's (first None) or the batch's first record's."""
    if tuple(got) == tuple(want):
        return
    if first:
        raise error(f"{name}: {_dims(got)}, but {first}, the first of its batch, is {_dims(want)}: "
                    "records in a batch must have one size")
    raise error(f"{name}: {_dims(got)}, but the layer's records are {_dims(want)}")


def _raw_batch(datums, shape=None):
    """N raw uint8 Datums of one shape as one N x C x H x W view of their joined bytes, else None.

    Small records (MNIST's 784 bytes) cost more in per-record numpy calls
    than in data; one join and one frombuffer per batch is several times faster.
    """
    if not datums:
        return None
    first = datums[0]
    shape = tuple(shape or (first.channels, first.height, first.width))
    if first.encoded or not first.data:
        return None
    if any(d.encoded or (d.channels, d.height, d.width) != shape for d in datums):
        return None
    raw = b"".join(d.data for d in datums)
    if len(raw) != len(datums) * shape[0] * shape[1] * shape[2]:
        return None  # a short record: the per-record path names it
    return numpy.frombuffer(raw, numpy.uint8).reshape((len(datums),) + shape)


def decode_image_files(transformer, color, height, width, records, skip=False, shape=None, root_folder=""):
    """(path, label, where) items -> Decoded; `where` ('list:line') names an item in errors.

    A missing or undecodable image, or one of another shape (see
    decode_datums), raises ImageError; with `skip` it is left out and listed
    in `skipped` with `where` as its key. A path that resolves outside
    `root_folder` (a symlink) raises PathError whatever `skip` says.
    """
    arrays, labels, offsets, skipped = [], [], [], []
    root = os.path.realpath(root_folder) if root_folder else ""
    ref, first = shape, None
    for offset, _key, (path, label, where) in records:
        check_inside(root, root_folder, path, where)
        name = f"{where}: {path}"
        try:
            arr = image.decode(path, color=color, height=height, width=width, name=name)
            if ref is None:
                ref, first = arr.shape, name
            _check_shape(arr.shape, ref, name, first, image.ImageError)
        except image.ImageError as e:
            skipped.append((offset, where, str(e)))
            continue
        arrays.append(arr)
        labels.append(label)
        offsets.append(offset)
    skipped = _bad_in_order(skipped, skip, image.ImageError)
    if not arrays:
        return _no_good(skipped)
    return Decoded(transformer.transform_batch(arrays, offsets), numpy.asarray(labels, numpy.float32),
                   offsets, skipped)


# -- image lists ------------------------------------------------------------

class PathError(image.ImageError):
    """An image list entry that leads outside the root folder; never skipped."""


def image_path(root_folder, name, where):
    """The file of list entry `name`: root_folder/name.

    With a root folder, an absolute name or one whose `..` climbs out of it
    is refused (PathError naming `where`). Without one, names are the
    user's own paths (relative to the working directory, or absolute).
    """
    if not root_folder:
        return name
    if os.path.isabs(name):
        raise PathError(f"{where}: {name!r} is an absolute path; entries must be relative to the "
                        f"root folder {root_folder}")
    norm = os.path.normpath(name)
    if norm == os.pardir or norm.startswith(os.pardir + os.sep):
        raise PathError(f"{where}: {name!r} leads outside the root folder {root_folder}")
    return os.path.join(root_folder, name)


def check_inside(root, root_folder, path, where):
    """Refuse `path` if, symlinks resolved, it is not inside `root` (root_folder's real path; '' for none)."""
    if not root:
        return
    real = os.path.realpath(path)
    if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
        raise PathError(f"{where}: {path} resolves to {real}, outside the root folder {root_folder}")


def list_entries(path):
    """Lines `relative/path label` -> [(name, label, 'file:line')]; errors name the line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise image.ImageError(f"{path}: no such list file") from None
    entries = []
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
        entries.append((name, label, where))
    if not entries:
        raise image.ImageError(f"{path}: the list is empty")
    return entries


def read_image_list(path, root_folder=""):
    """An image list -> [(file path, label, 'file:line')]; entries leaving root_folder are refused."""
    return [(image_path(root_folder, name, where), label, where) for name, label, where in list_entries(path)]
