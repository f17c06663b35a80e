"""HDF5Output: write the two bottoms to datasets `data` and `label` of an HDF5 file.

The layout is Caffe's: each array is stored with its legacy 4-D shape
(num x channels x height x width, missing axes as 1) in the bottoms' float
type. The file named by hdf5_output_param.file_name is truncated at setup.
Caffe can only write one batch (a second forward fails because the datasets
exist); here each forward appends its rows, so a test run of K batches
leaves K x num rows. The file is flushed after every forward, so it can be
read while the net still runs, and closed by `close()` or when the layer
goes away.
"""
import logging

from .. import backend
from .base import Layer, register
from .dataset import h5py, h5py_available

log = logging.getLogger("pycaffe_dist")

DATASETS = ("data", "label")


def legacy_shape(shape):
    """Caffe's num/channels/height/width view of a blob of at most 4 axes."""
    if len(shape) > 4:
        raise ValueError("a blob of %d axes has no 4-D legacy shape" % len(shape))
    return tuple(shape) + (1,) * (4 - len(shape))


@register
class HDF5Output(Layer):
    """Saves bottom[0] as `data` and bottom[1] as `label` (rows appended per forward)."""

    type = "HDF5Output"
    exact_num_bottom = 2
    exact_num_top = 0
    allow_backward = False   # Caffe's backward does nothing

    def layer_setup(self, bottom, top):
        name = self.param.hdf5_output_param.file_name
        if not name:
            raise self.error("hdf5_output_param.file_name is empty")
        if not h5py_available:
            raise self.error("writing %s needs h5py (pip install h5py)" % name)
        try:
            self.file = h5py.File(name, "w")
        except OSError as e:
            raise self.error("cannot create %s: %s" % (name, e)) from None
        self.file_name = name
        self.rows = 0

    def reshape(self, bottom, top):
        if bottom[0].shape[:1] != bottom[1].shape[:1]:
            raise self.error("data has %s rows but label has %s; they must match"
                             % (bottom[0].shape[:1], bottom[1].shape[:1]))
        for b, name in zip(bottom, DATASETS):
            if len(b.shape) > 4:
                raise self.error("%s has %d axes; HDF5Output writes at most 4" % (name, len(b.shape)))

    def forward(self, bottom, top):
        if self.file is None:
            raise self.error("%s was closed" % self.file_name)
        num = bottom[0].shape[0]
        for b, name in zip(bottom, DATASETS):
            values = backend.to_host(b.data).reshape(legacy_shape(b.shape))
            if name not in self.file:
                self.file.create_dataset(name, data=values, maxshape=(None,) + values.shape[1:],
                                         chunks=True)
                continue
            dataset = self.file[name]
            if dataset.shape[1:] != values.shape[1:]:
                raise self.error("%s rows changed shape from %s to %s between batches"
                                 % (name, dataset.shape[1:], values.shape[1:]))
            dataset.resize(dataset.shape[0] + num, axis=0)
            dataset[-num:] = values
        self.file.flush()
        self.rows += num
        log.debug("Successfully saved %d rows to %s", num, self.file_name)

    def backward(self, top, propagate_down, bottom):
        pass

    def close(self):
        """Close the HDF5 file; later forwards fail."""
        if getattr(self, "file", None) is not None:
            self.file.close()
            self.file = None

    def __del__(self):
        try:
            self.close()
        except Exception:   # interpreter shutdown: h5py may already be gone
            pass
