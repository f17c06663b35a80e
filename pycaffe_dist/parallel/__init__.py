"""Parallel training on one machine: communicators, strategies, and the worker launcher.

    from pycaffe_dist import parallel
    result = parallel.train("solver.prototxt", workers=2)                  # synchronous, processes
    result = parallel.train("solver.prototxt", workers=2, strategy="hogwild")  # shared weights, threads

Modules: comm (the communicator interface), loopback (threads or processes
in shared memory), nccl (GPUs through CuPy), p2p_tree (Caffe's reduction
tree), strategies (SyncSGD, Hogwild), shards (deterministic mode's shard
nets), config (parallel_param and overrides), launcher (starting and
stopping workers), worker and trainer (a training run).
"""
from .comm import CommError, Communicator, SelfComm  # noqa: F401
from .config import ConfigError, Settings, from_solver  # noqa: F401
from .launcher import WorkerError, run_workers  # noqa: F401
from .loopback import LoopbackGroup  # noqa: F401
from .trainer import RunResult, train  # noqa: F401
