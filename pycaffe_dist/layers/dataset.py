"""Layers that read datasets from disk: Data (LMDB), ImageData (list of files), HDF5Data.

Data and ImageData run the prefetch pipeline (pycaffe_dist/data/prefetch.py):
forward only takes the next ready batch and copies it into the tops. The
seconds each forward waited for it are in `wait_seconds_last` and
`wait_seconds_total`. `close()` stops the pipeline's threads (a later
forward starts them again where the stream stopped); they are daemons, so a
crash cannot hang the process either way.

Environment knobs, until the prototxt grows fields for them:
PYCAFFE_DIST_DECODE_WORKERS: decode workers; default 0 (decode on the reader
thread) for raw records, up to 4 for encoded ones.
PYCAFFE_DIST_DECODE_MODE: "thread" (default) or "process" workers.
PYCAFFE_DIST_BAD_RECORD: "stop" or "skip" for every data layer, over
data_param.bad_record (`pycaffe-dist train --bad_record` sets it).

Bad records (data_param.bad_record, also read by ImageData): STOP, the
default, ends the run naming the record. SKIP leaves it out and reads on:
each of the first few is logged as a warning with its key and reason, then
a count now and then; `skipped_records_last` and `skipped_records_total`
count them as the wait figures count waits. A whole pass over the records
a worker reads with no good one is an error, not an endless loop.
"""
import collections
import functools
import logging
import math
import os
import time

import numpy

from .. import backend
from ..data import datum as datum_mod
from ..data import db, image
from ..data.prefetch import Pipeline
from ..data.sources import (
    ListSource,
    LMDBSource,
    check_inside,
    decode_datums,
    decode_image_files,
    initial_offset,
    read_image_list,
)
from ..data.transformer import DataTransformer, TransformError
from ..proto import caffe_pb2
from .base import Layer, register

try:  # pragma: no cover - depends on the installation
    import h5py
    h5py_available = True
except ImportError:
    h5py = None
    h5py_available = False

TRAIN = 0
log = logging.getLogger("pycaffe_dist")
# A wait longer than this is logged (debug level), like Caffe's "Waiting for data".
_WAIT_LOG_SECONDS = 0.001
# Skipped records: one warning each for the first few, then a count at most this often.
_WARN_FIRST = 10
_COUNT_SECONDS = 30.0
# Skip mode sets the tops up with the most common shape among this many first good records.
_SHAPE_PROBE = 16
BAD_RECORD_ENV = "PYCAFFE_DIST_BAD_RECORD"


def skip_bad_records(param):
    """Whether a data layer skips bad records: PYCAFFE_DIST_BAD_RECORD, else data_param.bad_record."""
    forced = os.environ.get(BAD_RECORD_ENV, "").strip().lower()
    if forced:
        if forced not in ("stop", "skip"):
            raise ValueError(f"{BAD_RECORD_ENV}={forced!r}: expected stop or skip")
        return forced == "skip"
    return param.data_param.bad_record == caffe_pb2.DataParameter.SKIP


def _decode_workers(encoded):
    configured = os.environ.get("PYCAFFE_DIST_DECODE_WORKERS")
    if configured:
        return max(0, int(configured))
    # Raw records decode in microseconds: cheaper on the reader thread than
    # handed to a worker (bench/bench_data.py). Encoded ones spend their time
    # in Pillow, which releases the GIL, so threads run them in parallel.
    return min(4, os.cpu_count() or 1) if encoded else 0


class _PrefetchingLayer(Layer):
    """Shared plumbing of Data and ImageData: seed, pipeline, state, tops."""

    exact_num_bottom = 0
    min_top, max_top = 1, 2
    allow_backward = False

    wait_seconds_last = 0.0
    wait_seconds_total = 0.0
    skipped_records_last = 0
    skipped_records_total = 0
    _pipeline = None
    _carry = None        # [Decoded, index of its first unused record] (skip mode)
    _counted = (0, 0.0)  # (skipped_records_total at the last count logged, when)

    def _sharding(self):
        # TEST nets read everything on every worker, as Caffe's.
        if self.phase == TRAIN:
            return backend.solver_rank(), backend.solver_count()
        return 0, 1

    def _bad_record_setup(self, total, shuffled=False):
        """Read the STOP/SKIP choice; `total` records, `shuffled` per epoch."""
        try:
            self.skip = skip_bad_records(self.param)
        except ValueError as e:
            raise self.error(str(e)) from None
        # The records this worker can ever read: offsets rank, rank + size, ...
        # of a shuffled list reach every record; in order they cycle through
        # total / gcd(total, size) of them.
        _rank, size = self._sharding()
        self.pass_size = total if shuffled and size > 1 else total // math.gcd(total, size)
        self._streak = set()     # keys of the bad records read since the last good one
        self._warned = 0
        self._counted = (0, time.monotonic())   # (total at the last count, when)

    def _common_shape(self, probes, source):
        """Skip mode's top shape: the most common among the first good records.

        `probes` yields (shape, None) for a good record and (None, reason)
        for a bad one, in record order. Taking the most common shape rather
        than the first keeps one odd record at the front from making every
        other record 'bad'.
        """
        shapes, first_bad = [], None
        for shape, bad in probes:
            if bad is not None:
                first_bad = first_bad or bad
                continue
            shapes.append(tuple(shape))
            if len(shapes) == _SHAPE_PROBE:
                break
        if not shapes:
            raise self.error(f"{source}: every record is bad (the first: {first_bad})")
        return collections.Counter(shapes).most_common(1)[0][0]

    def _start(self, offset):
        """(Re)start the pipeline at source offset `offset`."""
        self._stop()
        source, decode, encoded = self._make_source(offset)
        mode = os.environ.get("PYCAFFE_DIST_DECODE_MODE", "thread")
        self._pipeline = Pipeline(source, decode, self.batch_size, prefetch=self.prefetch,
                                  workers=_decode_workers(encoded), mode=mode, name=self.name)
        self._offset = offset

    def reshape(self, bottom, top):
        pass  # tops take each batch's shape in forward

    def forward(self, bottom, top):
        if self._pipeline is None:   # closed: carry on from where the stream stopped
            self._start(self._offset)
        try:
            data, labels = self._next_batch()
        except (datum_mod.DatumError, image.ImageError, db.DBError, TransformError) as e:
            raise self.error(str(e)) from None
        if self.wait_seconds_last > _WAIT_LOG_SECONDS:
            log.debug("%s: waited %.1f ms for data", self.name, self.wait_seconds_last * 1000)
        xp = backend.get_array_module(top[0].data)
        top[0].reshape(data.shape)
        top[0].data[...] = backend.to_device(data, xp)
        if len(top) > 1:
            top[1].reshape(labels.shape)
            top[1].data[...] = backend.to_device(labels, xp)

    def _next_batch(self):
        """batch_size good records (data, labels); skip mode gathers them over as many reads as it takes.

        `_offset`, the position a resumed run starts from, is the first
        record not yet handed out, so a resume neither repeats nor loses one.
        """
        datas, labels, have, waited = [], [], 0, 0.0
        self.skipped_records_last = 0
        while have < self.batch_size:
            if self._carry is None:
                decoded = self._pipeline.next()
                waited += self._pipeline.wait_seconds_last
                if decoded.skipped or self._streak:
                    self._note_bad(decoded)
                if decoded.data is None:
                    continue
                self._carry = [decoded, 0]
            decoded, start = self._carry
            end = min(len(decoded.offsets), start + self.batch_size - have)
            datas.append(decoded.data[start:end])
            labels.append(decoded.labels[start:end])
            have += end - start
            if end == len(decoded.offsets):
                self._carry, self._offset = None, self._pipeline.state
            else:
                self._carry[1], self._offset = end, decoded.offsets[end]
        self.wait_seconds_last = waited
        self.wait_seconds_total = self._pipeline.wait_seconds_total
        if len(datas) == 1:
            return datas[0], labels[0]
        return numpy.concatenate(datas), numpy.concatenate(labels)

    def _note_bad(self, decoded):
        """Count and log the records a read skipped; stop when a whole pass held no good one."""
        for _offset, _key, reason in decoded.skipped:
            self._warned += 1
            if self._warned <= _WARN_FIRST:
                log.warning("%s: skipped a bad record: %s", self._who(), reason)
            if self._warned == _WARN_FIRST:
                log.warning("%s: further bad records are skipped and counted every %.0f s",
                            self._who(), _COUNT_SECONDS)
        n = len(decoded.skipped)
        self.skipped_records_last += n
        self.skipped_records_total += n
        if decoded.offsets:
            last_good = decoded.offsets[-1]
            self._streak = {key for offset, key, _ in decoded.skipped if offset > last_good}
        else:
            self._streak.update(key for _, key, _ in decoded.skipped)
        if len(self._streak) >= self.pass_size:
            _rank, size = self._sharding()
            whose = f"this worker's {self.pass_size} records" if size > 1 else f"its {self.pass_size} records"
            reason = decoded.skipped[-1][2] if decoded.skipped else "?"
            raise self.error(f"{self._source()}: no good record in a whole pass over {whose} "
                             f"({self.skipped_records_total} skipped; the last: {reason})")
        counted, when = self._counted
        if self.skipped_records_total > max(counted, _WARN_FIRST) and time.monotonic() - when >= _COUNT_SECONDS:
            self._log_count()

    def _log_count(self, when="so far"):
        counted, _ = self._counted
        since = f" ({self.skipped_records_total - counted} since the last count)" if counted else ""
        log.warning("%s: %d bad records skipped %s%s", self._who(), self.skipped_records_total, when, since)
        self._counted = (self.skipped_records_total, time.monotonic())

    def _who(self):
        return f"layer {self.name!r} ({self.type})"

    def get_state(self):
        return {"offset": int(self._offset), "seed": int(self.seed)}

    def set_state(self, state):
        if state:
            self.seed = int(state["seed"])
            self.transformer.seed = self.seed
            self._start(int(state["offset"]))

    def close(self):
        """Stop the prefetch threads (and processes); a later forward restarts them."""
        self._stop()
        if self.skipped_records_total > max(self._counted[0], _WARN_FIRST):
            self._log_count("in all")

    def _stop(self):
        if self._pipeline is not None:
            self._pipeline.close()
            self._pipeline = None
        self._carry = None     # _offset is its first record: a restart reads it again

    def _set_top_shapes(self, top, item_shape):
        top[0].reshape((self.batch_size,) + tuple(self.transformer.output_shape(item_shape)))
        if len(top) > 1:
            top[1].reshape((self.batch_size,))

    def _new_seed(self):
        # Drawn from the process-wide stream, so random_seed fixes every crop.
        return int(backend.rng.generator.integers(0, 2 ** 63))


@register
class DataLayer(_PrefetchingLayer):
    """Batches of Datum records from an LMDB database (data_param, transform_param)."""

    type = "Data"

    def layer_setup(self, bottom, top):
        p = self.param.data_param
        if not p.source:
            raise self.error("data_param.source is not set")
        if not p.batch_size:
            raise self.error("data_param.batch_size must be positive")
        try:
            # DataParameter's default backend is LEVELDB, so a prototxt that
            # leaves it out (or names it by mistake) still reads an LMDB.
            if p.HasField("backend") and p.backend != p.LMDB and os.path.exists(p.source) \
                    and not db.is_lmdb(p.source):
                db.check_backend(p.backend, p.source)
            # Caffe lets data_param carry the old transformation fields too.
            tparam = self.param.transform_param
            for name in ("scale", "mean_file", "crop_size", "mirror"):
                if p.HasField(name) and not tparam.HasField(name):
                    setattr(tparam, name, getattr(p, name))
            self.seed = self._new_seed()
            self.transformer = DataTransformer(tparam, self.phase, self.seed)
            if p.force_encoded_color and self.transformer.color is None:
                self.transformer.color = True
            with db.Reader(p.source) as reader:
                self._bad_record_setup(reader.size)
                if self.skip:
                    self.item_shape = self._common_shape(self._probe(reader.items()), p.source)
                else:   # Caffe's rule: the first record sets the shape
                    key, value = reader.item()
                    first = datum_mod.parse(value, key)
                    self._encoded = first.encoded
                    self.item_shape = datum_mod.datum_to_array(first, self.transformer.color, key).shape
            self.batch_size = int(p.batch_size)
            self.prefetch = int(p.prefetch)
            self._set_top_shapes(top, self.item_shape)
            self._start(initial_offset(self.seed, p.rand_skip))
        except (db.DBError, datum_mod.DatumError, TransformError) as e:
            raise self.error(str(e)) from None

    def _source(self):
        return self.param.data_param.source

    def _probe(self, records):
        """(shape, None) or (None, reason) per record, for _common_shape; notes whether they are encoded."""
        self._encoded = None
        for key, value in records:
            try:
                datum = datum_mod.parse(value, key)
                shape = datum_mod.datum_to_array(datum, self.transformer.color, key).shape
            except datum_mod.DatumError as e:
                yield None, str(e)
                continue
            if self._encoded is None:
                self._encoded = datum.encoded
            yield shape, None

    def _make_source(self, offset):
        rank, size = self._sharding()
        source = LMDBSource(self.param.data_param.source, offset, rank, size)
        decode = functools.partial(decode_datums, self.transformer, skip=self.skip,
                                   shape=self.item_shape if self.skip else None)
        return source, decode, self._encoded


@register
class ImageDataLayer(_PrefetchingLayer):
    """Batches of image files named in a list file (image_data_param, transform_param)."""

    type = "ImageData"

    def layer_setup(self, bottom, top):
        p = self.param.image_data_param
        if not p.source:
            raise self.error("image_data_param.source is not set")
        try:
            self.items = read_image_list(p.source, p.root_folder)
            self.seed = self._new_seed()
            self.transformer = DataTransformer(self.param.transform_param, self.phase, self.seed)
            self._color = bool(p.is_color)
            self._size = (int(p.new_height), int(p.new_width))
            self._bad_record_setup(len(self.items), shuffled=p.shuffle)
            if self.skip:
                self.item_shape = self._common_shape(map(self._probe, self.items), p.source)
            else:   # Caffe's rule: the first image sets the shape
                shape, bad = self._probe(self.items[0])
                if bad:
                    raise image.ImageError(bad)
                self.item_shape = shape
            self.batch_size = int(p.batch_size)
            self.prefetch = int(self.param.data_param.prefetch)
            self._set_top_shapes(top, self.item_shape)
            self._start(initial_offset(self.seed, p.rand_skip))
        except (image.ImageError, TransformError) as e:
            raise self.error(str(e)) from None

    def _source(self):
        return self.param.image_data_param.source

    def _probe(self, item):
        """(shape, None) or (None, reason) for one list item; a path leaving the root folder raises."""
        path, _, where = item
        root = self.param.image_data_param.root_folder
        check_inside(os.path.realpath(root) if root else "", root, path, where)
        try:
            return image.decode(path, self._color, *self._size, name=f"{where}: {path}").shape, None
        except image.ImageError as e:
            return None, str(e)

    def _make_source(self, offset):
        rank, size = self._sharding()
        p = self.param.image_data_param
        source = ListSource(self.items, offset, rank, size, p.shuffle, self.seed)
        decode = functools.partial(decode_image_files, self.transformer, self._color, *self._size,
                                   skip=self.skip, shape=self.item_shape if self.skip else None,
                                   root_folder=p.root_folder)
        return source, decode, True


if h5py_available:
    @register
    class HDF5DataLayer(Layer):
        """Rows of the datasets named by the tops, from a list of .h5 files (hdf5_data_param).

        Each file is read whole into memory when reached, as Caffe does; the
        order is files then rows, both reshuffled each epoch with `shuffle`.
        """

        type = "HDF5Data"
        exact_num_bottom = 0
        min_top = 1
        allow_backward = False

        def layer_setup(self, bottom, top):
            p = self.param.hdf5_data_param
            if not p.batch_size:
                raise self.error("hdf5_data_param.batch_size must be positive")
            self.batch_size = int(p.batch_size)
            try:
                with open(p.source, encoding="utf-8") as f:
                    self.files = [line.strip() for line in f if line.strip()]
            except OSError as e:
                raise self.error(f"{p.source}: cannot read the file list: {e.strerror}") from None
            if not self.files:
                raise self.error(f"{p.source}: lists no .h5 files")
            self.names = list(self.param.top)
            self.rows, shapes = [], None
            for path in self.files:
                try:
                    with h5py.File(path, "r") as f:
                        missing = [n for n in self.names if n not in f]
                        if missing:
                            raise self.error(f"{path}: has no dataset {', '.join(missing)}")
                        file_shapes = [f[n].shape[1:] for n in self.names]
                        counts = {f[n].shape[0] for n in self.names}
                except OSError as e:
                    raise self.error(f"{path}: cannot open as HDF5: {e}") from None
                if len(counts) != 1:
                    raise self.error(f"{path}: datasets {self.names} have different row counts")
                if shapes is not None and file_shapes != shapes:
                    raise self.error(f"{path}: row shapes {file_shapes} differ from {self.files[0]}'s {shapes}")
                shapes = file_shapes
                self.rows.append(counts.pop())
            self.total = sum(self.rows)
            self.shapes = shapes
            self.seed = int(backend.rng.generator.integers(0, 2 ** 63))
            self.offset = 0
            self._cache = (None, None)
            self._epoch = (None, None)
            for blob, shape in zip(top, shapes):
                blob.reshape((self.batch_size,) + tuple(shape))

        def reshape(self, bottom, top):
            pass

        def _epoch_order(self, epoch):
            """File order and per-file row orders for one epoch."""
            if self._epoch[0] != epoch:
                files = list(range(len(self.files)))
                rows = [numpy.arange(n) for n in self.rows]
                if self.param.hdf5_data_param.shuffle:
                    rng = numpy.random.default_rng([self.seed & 0xFFFFFFFF, self.seed >> 32, epoch])
                    files = list(rng.permutation(len(self.files)))
                    rows = [rng.permutation(n) for n in self.rows]
                starts = numpy.cumsum([0] + [self.rows[i] for i in files])
                self._epoch = (epoch, (files, rows, starts))
            return self._epoch[1]

        def _file(self, index):
            if self._cache[0] != index:
                with h5py.File(self.files[index], "r") as f:
                    self._cache = (index, [numpy.asarray(f[n]) for n in self.names])
            return self._cache[1]

        def _row(self, offset):
            epoch, pos = divmod(offset, self.total)
            files, rows, starts = self._epoch_order(epoch)
            k = int(numpy.searchsorted(starts, pos, side="right")) - 1
            index = files[k]
            return self._file(index), int(rows[index][pos - starts[k]])

        def forward(self, bottom, top):
            rank, size = (backend.solver_rank(), backend.solver_count()) if self.phase == TRAIN else (0, 1)
            batch = [numpy.empty((self.batch_size,) + tuple(s), numpy.float32) for s in self.shapes]
            filled = 0
            while filled < self.batch_size:
                if self.offset % size == rank:
                    arrays, row = self._row(self.offset)
                    for out, arr in zip(batch, arrays):
                        out[filled] = arr[row]
                    filled += 1
                self.offset += 1
            for blob, arr in zip(top, batch):
                blob.reshape(arr.shape)
                blob.data[...] = backend.to_device(arr, backend.get_array_module(blob.data))

        def get_state(self):
            return {"offset": int(self.offset), "seed": int(self.seed)}

        def set_state(self, state):
            if state:
                self.offset, self.seed = int(state["offset"]), int(state["seed"])
                self._epoch = (None, None)
