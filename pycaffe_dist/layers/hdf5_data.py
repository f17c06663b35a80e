"""HDF5Data: rows of the datasets named by the tops, from a list of .h5 files (hdf5_data_param)."""
import numpy

from .. import backend
from .base import Layer, register

try:  # pragma: no cover - depends on the installation
    import h5py
    h5py_available = True
except ImportError:
    h5py = None
    h5py_available = False

TRAIN = 0


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
