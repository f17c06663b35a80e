"""Array kernels behind the layers: convolution (im2col + GEMM), im2col, pooling, LRN.

Each op is written once with `xp` (numpy or cupy) and keeps its scratch
buffers in a Workspace so a training step allocates nothing in steady state.
"""
from .conv import ConvGeometry, Convolution, conv_out_size  # noqa: F401
from .im2col import Im2col  # noqa: F401
from .lrn import LRN  # noqa: F401
from .average_pooling import AveragePooling  # noqa: F401
from .max_pooling import GlobalMaxPooling, MaxPooling  # noqa: F401
from .pooling import PoolGeometry, pooled_size  # noqa: F401
from .stochastic_pool import StochasticPooling  # noqa: F401
from .workspace import Workspace  # noqa: F401
