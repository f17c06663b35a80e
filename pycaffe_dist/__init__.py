"""pycaffe_dist: Caffe's nets, files and tools in Python, trained at scale.

The names follow pycaffe, so `import pycaffe_dist as caffe` runs pycaffe scripts:
caffe.Net, caffe.SGDSolver, caffe.get_solver, caffe.NetSpec with
`from pycaffe_dist import layers as L, params as P`, caffe.io, caffe.Classifier,
caffe.Layer for Python layers; `pycaffe_dist.draw` and `pycaffe_dist.coord_map`
as `caffe.draw` and `caffe.coord_map`. The engine underneath (used by the tools
and the parallel solvers) is pycaffe_dist.net.Net and pycaffe_dist.solvers.Solver.
"""
from . import layers as _registry  # noqa: F401  (registers the built-in layers)
from .backend import (set_device, set_mode_cpu, set_mode_gpu, set_random_seed,  # noqa: F401
                      set_solver_count, set_solver_rank, solver_count, solver_rank)
from .blob import Blob  # noqa: F401
from .layers import layer_type_list  # noqa: F401
from .layers.python import Layer  # noqa: F401
from .net import TEST, TRAIN  # noqa: F401
from .proto import caffe_pb2  # noqa: F401
from .pycaffe import (NCCL, AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver, Net,  # noqa: F401
                      RMSPropSolver, SGDSolver, Solver, Timer, get_solver, has_nccl, init_log, log,
                      set_multiprocess)
from . import io  # noqa: F401,E402
from .classifier import Classifier  # noqa: F401
# pycaffe's `layers` is NetSpec's layer maker (`from caffe import layers as L`);
# the registry package stays importable as pycaffe_dist.layers.<module>.
from .net_spec import NetSpec, layers, params, to_proto  # noqa: F401

__version__ = "0.1.0"
