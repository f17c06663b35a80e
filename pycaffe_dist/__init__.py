"""pycaffe_dist: Caffe's nets, files and tools in Python, trained at scale.

The names follow pycaffe, so `import pycaffe_dist as caffe` runs pycaffe scripts.
"""
from . import layers  # noqa: F401  (registers the built-in layers)
from .backend import (set_device, set_mode_cpu, set_mode_gpu, set_random_seed,  # noqa: F401
                      set_solver_count, set_solver_rank, solver_count, solver_rank)
from .blob import Blob  # noqa: F401
from .layers import Layer, layer_type_list  # noqa: F401
from .net import Net, TEST, TRAIN  # noqa: F401
from .proto import caffe_pb2  # noqa: F401
from .solvers import Solver, get_solver  # noqa: F401

__version__ = "0.1.0"
