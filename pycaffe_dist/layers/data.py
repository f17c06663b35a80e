"""Data layers fed from memory: Input, DummyData, MemoryData.

They have no bottoms and no gradient. (The LMDB-backed Data layer lives with
the prefetch pipeline in pycaffe_dist.data.)
"""
import numpy

from .. import backend
from ..filler import fill
from ..proto.caffe_pb2 import FillerParameter
from .base import Layer, register


def as_array(values):
    """numpy and cupy arrays as they are; lists and the like as numpy arrays."""
    return values if hasattr(values, "shape") else numpy.asarray(values)


class SourceLayer(Layer):
    """A layer that only produces tops."""

    exact_num_bottom = 0
    allow_backward = False

    def one_per_top(self, values, top, what):
        """Caffe's rule for repeated settings: one for all tops, or one each."""
        values = list(values)
        if len(values) == 1:
            return values * len(top)
        if len(values) != len(top):
            raise self.error(f"{len(values)} {what} for {len(top)} tops; give one for all "
                             "tops or one per top")
        return values


@register
class Input(SourceLayer):
    """Tops the user fills directly (a deploy net's inputs); input_param.shape sizes them."""

    type = "Input"
    min_top = 1

    def layer_setup(self, bottom, top):
        shapes = self.param.input_param.shape
        if not shapes:
            return
        for blob, shape in zip(top, self.one_per_top(shapes, top, "input_param.shape")):
            blob.reshape(tuple(shape.dim))

    def reshape(self, bottom, top):
        pass  # users may reshape input blobs themselves; keep what they set

    def forward(self, bottom, top):
        pass


@register
class DummyData(SourceLayer):
    """Tops filled by data_filler (default constant 0), for tests and timing."""

    type = "DummyData"
    min_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.dummy_data_param
        shapes = self._shapes(p, top)
        fillers = list(p.data_filler) or [FillerParameter(type="constant", value=0)]
        self.fillers = self.one_per_top(fillers, top, "data_filler values")
        # A constant top never changes, so only the others are refilled.
        self.refill = [f.type != "constant" for f in self.fillers]
        for blob, shape, filler in zip(top, shapes, self.fillers):
            blob.reshape(shape)
            fill(blob.data, filler)

    def _shapes(self, p, top):
        legacy = (p.num, p.channels, p.height, p.width)
        if p.shape and any(legacy):
            raise self.error("give dummy_data_param either shape or num/channels/height/width, "
                             "not both")
        if p.shape:
            return [tuple(s.dim) for s in self.one_per_top(p.shape, top, "shape values")]
        if len({len(v) for v in legacy}) != 1 or not p.num:
            raise self.error("the legacy num, channels, height and width lists must all be "
                             "given, with the same length")
        columns = [self.one_per_top(v, top, "legacy dimension values") for v in legacy]
        return [tuple(int(d) for d in dims) for dims in zip(*columns)]

    def reshape(self, bottom, top):
        pass  # shapes are fixed by the parameters

    def forward(self, bottom, top):
        for blob, filler, refill in zip(top, self.fillers, self.refill):
            if refill:
                fill(blob.data, filler)


@register
class MemoryData(SourceLayer):
    """Batches served from arrays given with set_input_arrays (pycaffe's API).

    Tops: data (batch_size x channels x height x width) and label
    (batch_size). Each forward serves the next batch, wrapping at the end;
    the cursor is saved with snapshots so a resumed run continues exactly.
    """

    type = "MemoryData"
    exact_num_top = 2

    def layer_setup(self, bottom, top):
        p = self.param.memory_data_param
        if p.batch_size <= 0:
            raise self.error("memory_data_param.batch_size must be positive")
        self.batch_size = int(p.batch_size)
        self.item_shape = (int(p.channels), int(p.height), int(p.width))
        self.scale = float(self.param.transform_param.scale)
        self._data = self._labels = None
        self._n = 0
        self._pos = 0
        self._restored_pos = None

    def reshape(self, bottom, top):
        top[0].reshape((self.batch_size,) + self.item_shape)
        top[1].reshape((self.batch_size,))

    def set_input_arrays(self, data, labels):
        """Serve batches from `data` (N x C x H x W) and `labels` (N), N a multiple of batch_size."""
        if len(data) != len(labels):
            raise self.error(f"data has {len(data)} items but labels has {len(labels)}")
        self.reset(data, labels, len(data))

    def reset(self, data, labels, n):
        """Serve the first `n` items of `data` and `labels`, starting at the first."""
        data, labels, n = as_array(data), as_array(labels), int(n)
        if n <= 0 or n % self.batch_size:
            raise self.error(f"the number of items ({n}) must be a positive multiple of "
                             f"batch_size {self.batch_size}")
        if data.ndim != 4 or tuple(data.shape[1:]) != self.item_shape or len(data) < n:
            raise self.error(f"data has shape {tuple(data.shape)}; expected {n} x "
                             f"{' x '.join(map(str, self.item_shape))} (N x channels x height "
                             "x width)")
        if labels.ndim == 0 or len(labels) < n or labels[:n].size != n:
            raise self.error(f"labels have shape {tuple(labels.shape)}; expected {n} labels, "
                             "one per item")
        pos = self._restored_pos or 0
        if pos >= n:
            raise self.error(f"the restored cursor {pos} is past the {n} items given")
        self._data = self._to_device(data[:n], self.scale)
        self._labels = self._to_device(labels[:n].reshape(n), 1.0)
        self._n, self._pos, self._restored_pos = n, pos, None

    def _to_device(self, array, scale):
        array = backend.to_device(numpy.asarray(backend.to_host(array), dtype=self.dtype),
                                  self.xp)
        return array * scale if scale != 1.0 else array

    def forward(self, bottom, top):
        if self._data is None:
            raise self.error("no input arrays: call set_input_arrays(data, labels) before "
                             "the first forward")
        end = self._pos + self.batch_size
        top[0].data[...] = self._data[self._pos:end]
        top[1].data[...] = self._labels[self._pos:end]
        self._pos = end % self._n

    def get_state(self):
        return {"pos": self._pos}

    def set_state(self, state):
        if not state:
            return
        pos = int(state["pos"])
        if pos < 0 or pos % self.batch_size:
            raise self.error(f"saved cursor {pos} is not a multiple of batch_size "
                             f"{self.batch_size}")
        if self._data is None:
            # Resuming before arrays are given: apply it to the arrays given next.
            self._restored_pos = pos
        elif pos >= self._n:
            raise self.error(f"saved cursor {pos} is past the {self._n} items given")
        else:
            self._pos = pos
