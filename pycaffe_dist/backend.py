"""Array backends: numpy always, CuPy when a GPU is really there.

This is the one module that imports cupy. `cupy_available` is true only when
cupy imports *and* reports a usable device; importing cupy alone proves
nothing on a machine without a GPU.
"""
import json

import numpy

try:  # pragma: no cover - depends on the machine
    import cupy as _cupy
    cupy_available = bool(_cupy.is_available())
except Exception:  # ImportError, or a CUDA runtime that cannot start
    _cupy = None
    cupy_available = False

cupy = _cupy if cupy_available else None

_mode = {"gpu": False, "device": 0}


def get_array_module(*arrays):
    """Return numpy or cupy, whichever owns the given arrays."""
    if cupy is not None:
        return cupy.get_array_module(*arrays)
    return numpy


def set_mode_cpu():
    _mode["gpu"] = False


def set_mode_gpu():
    if not cupy_available:
        raise RuntimeError("set_mode_gpu: no usable GPU (cupy is missing or reports no device)")
    _mode["gpu"] = True


def set_device(device_id):
    _mode["device"] = int(device_id)
    if cupy_available:
        cupy.cuda.Device(int(device_id)).use()


def gpu_mode():
    return _mode["gpu"]


def array_module():
    """The module new arrays are made with in the current mode."""
    return cupy if _mode["gpu"] else numpy


def to_host(array):
    if cupy is not None and isinstance(array, cupy.ndarray):
        return cupy.asnumpy(array)
    return array


def to_device(array, xp):
    if xp is numpy:
        return to_host(array)
    return xp.asarray(array)


# One process-wide random stream, as Caffe's RNG: fillers, dropout, data
# shuffling and crops all draw from it, so `random_seed` fixes a whole run.
class _RNG:
    def __init__(self):
        self.generator = numpy.random.default_rng()

    def seed(self, seed):
        self.generator = numpy.random.default_rng(int(seed))

    def state_json(self):
        return json.dumps(self.generator.bit_generator.state)

    def load_state_json(self, text):
        state = json.loads(text)
        bitgen = getattr(numpy.random, state["bit_generator"])()
        bitgen.state = state
        self.generator = numpy.random.Generator(bitgen)


rng = _RNG()


def set_random_seed(seed):
    """Seed every random choice the framework makes (pycaffe's set_random_seed)."""
    rng.seed(seed)


# Which worker of how many this code runs as (Caffe's solver_rank and
# solver_count). Thread-local so Hogwild and loopback workers in one process
# each see their own rank; a process default covers MPI ranks.
import threading as _threading  # noqa: E402

_process_worker = {"rank": 0, "count": 1}
_thread_worker = _threading.local()


def solver_rank():
    return getattr(_thread_worker, "rank", _process_worker["rank"])


def solver_count():
    return getattr(_thread_worker, "count", _process_worker["count"])


def set_solver_rank(rank, this_thread_only=False):
    if this_thread_only:
        _thread_worker.rank = int(rank)
    else:
        _process_worker["rank"] = int(rank)


def set_solver_count(count, this_thread_only=False):
    if this_thread_only:
        _thread_worker.count = int(count)
    else:
        _process_worker["count"] = int(count)
