"""Layers that read datasets from disk: Data (LMDB), ImageData (list of files); HDF5Data in hdf5_data.py.

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
import functools
import logging
import os

import numpy

from .. import backend
from ..data import datum as datum_mod
from ..data import db, image
from ..data.bad_records import BadRecords, NoGoodRecord, common_shape, pass_size
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
from .hdf5_data import h5py, h5py_available  # noqa: F401  (hdf5_output takes them from here)

if h5py_available:
    from .hdf5_data import HDF5DataLayer  # noqa: F401  (registered there; kept importable from here)

TRAIN = 0
log = logging.getLogger("pycaffe_dist")
# A wait longer than this is logged (debug level), like Caffe's "Waiting for data".
_WAIT_LOG_SECONDS = 0.001
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
    _pipeline = None
    _carry = None        # [Decoded, index of its first unused record] (skip mode)
    _bad = None          # BadRecords, set up with the layer

    def _sharding(self):
        # TEST nets read everything on every worker, as Caffe's.
        if self.phase == TRAIN:
            return backend.solver_rank(), backend.solver_count()
        return 0, 1

    def _bad_record_setup(self, total, shuffled=False):
        """Read the STOP/SKIP choice for `total` records (`shuffled` each epoch)."""
        try:
            self.skip = skip_bad_records(self.param)
        except ValueError as e:
            raise self.error(str(e)) from None
        _rank, size = self._sharding()
        self._bad = BadRecords(f"layer {self.name!r} ({self.type})", self._source(),
                               pass_size(total, size, shuffled), size > 1)

    def _common_shape(self, probes):
        try:
            return common_shape(probes, self._source())
        except NoGoodRecord as e:
            raise self.error(str(e)) from None

    @property
    def skipped_records_last(self):
        """Bad records skipped while gathering the latest batch (skip mode)."""
        return self._bad.last if self._bad else 0

    @property
    def skipped_records_total(self):
        """Bad records skipped since the layer was set up (skip mode)."""
        return self._bad.total if self._bad else 0

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
        self._bad.new_batch()
        while have < self.batch_size:
            if self._carry is None:
                decoded = self._pipeline.next()
                waited += self._pipeline.wait_seconds_last
                try:
                    self._bad.note(decoded)
                except NoGoodRecord as e:
                    raise self.error(str(e)) from None
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
        if self._bad:
            self._bad.close()

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
                    self.item_shape = self._common_shape(self._probe(reader.items()))
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
                self.item_shape = self._common_shape(map(self._probe, self.items))
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
