"""Solver state in Caffe's HDF5 layout (`<prefix>_iter_N.solverstate.h5`).

Caffe writes scalar datasets `iter` and `current_step` (int), a fixed-length
string dataset `learned_net` (the weights file), and a group `history` with
one dataset per history blob named 0, 1, ... in the parameter's shape. The
project's resume extras (random stream, layer states, loss window) ride along
as attributes of the root group, which Caffe never reads.
"""
import logging
import os
import tempfile

import numpy

from .. import backend
from ..layers.dataset import h5py, h5py_available
from ..proto.errors import ProtoError
from .state import (apply_resume_extras, check_history_count, history_views, load_learned_net,
                    restore_history, resume_extras)

log = logging.getLogger("pycaffe_dist")


def require_h5py(path):
    if not h5py_available:
        raise ImportError("%s: the HDF5 snapshot format needs h5py (pip install h5py)" % path)


def save_state_hdf5(solver, path, model_path):
    """Write the state atomically: a temporary file renamed over `path`."""
    require_h5py(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("iter", data=numpy.int32(solver.iter))
            f.create_dataset("learned_net", data=numpy.bytes_(model_path.encode("utf-8")))
            f.create_dataset("current_step", data=numpy.int32(solver.lr_state["current_step"]))
            history = f.create_group("history")
            for k, view in enumerate(history_views(solver)):
                history.create_dataset(str(k), data=backend.to_host(view))
            extras = resume_extras(solver)
            f.attrs["rng_state"] = extras["rng_state"]
            f.attrs["layer_state"] = extras["layer_state"]
            f.attrs["loss_history"] = numpy.asarray(extras["loss_history"], dtype=numpy.float64)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def load_state_hdf5(solver, path):
    require_h5py(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ProtoError("%s: cannot open as HDF5: %s" % (path, e)) from None
    with f:
        missing = [name for name in ("iter", "history") if name not in f]
        if missing:
            raise ProtoError("%s: no %s; not a Caffe HDF5 solver state" % (path, " or ".join(missing)))
        history = f["history"]
        check_history_count(solver, path, len(history))
        if "learned_net" in f:
            load_learned_net(solver, path, _text(f["learned_net"][()]))
        for k in range(len(history)):
            if str(k) not in history:
                raise ProtoError("%s: history has no dataset %d" % (path, k))
            restore_history(solver, k, history[str(k)][()], path)
        solver.iter = int(f["iter"][()])
        solver.lr_state["current_step"] = int(f["current_step"][()]) if "current_step" in f else 0
        attrs = f.attrs
        apply_resume_extras(solver, _text(attrs.get("rng_state", "")), _text(attrs.get("layer_state", "")),
                            [float(v) for v in attrs.get("loss_history", [])])
    log.info("Restored solver state from %s (iteration %d)", path, solver.iter)
