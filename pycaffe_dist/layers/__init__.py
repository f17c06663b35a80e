"""Layer registry; importing this package registers every built-in layer."""
from .base import LAYERS, Layer, LayerError, layer_class, layer_type_list, register  # noqa: F401
from . import dataset  # noqa: F401  (LMDB, ImageData, HDF5Data)
from . import hdf5_output, lstm_unit, recurrent, window_data  # noqa: F401  (HDF5Output, LSTMUnit, RNN, LSTM, WindowData)
from . import crop, pooling  # noqa: F401  (Crop; Pooling, SPP)
from . import data, vision, neuron, arithmetic, common, utility, reduction, norm, loss, margin_loss, python  # noqa: F401  (registration)
