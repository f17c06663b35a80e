"""pycaffe's interface (Net, the solver classes, Timer, NCCL) over the engine.

`import pycaffe_dist as caffe` exposes these; the engine's own classes stay in
pycaffe_dist.net and pycaffe_dist.solvers for the tools and the parallel code.
"""
from .misc import NCCL, Timer, has_nccl, init_log, log, set_multiprocess  # noqa: F401
from .net import Net  # noqa: F401
from .solver import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver,  # noqa: F401
                     RMSPropSolver, SGDSolver, Solver, get_solver)
