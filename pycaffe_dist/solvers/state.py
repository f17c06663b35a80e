"""The .solverstate file: iteration, history blobs, and what exact resume needs.

Two formats, chosen by the file name as Caffe does: a name ending in `.h5`
is Caffe's HDF5 layout (state_hdf5.py), anything else a binary SolverState.
The pieces both share (history views, the project's resume extras) live here.
"""
import json
import logging
import os

from .. import backend
from ..proto import caffe_pb2, io as proto_io
from ..proto.errors import ProtoError
from ..snapshot import blob_to_proto, proto_to_array

log = logging.getLogger("pycaffe_dist")


def is_hdf5(path):
    return str(path).endswith(".h5")


# -- what both formats share -----------------------------------------------------------
def history_views(solver):
    """Each history blob as a view of the solver's flat buffers, shaped like its
    parameter, in Caffe's order (all parameters of history 0, then of history 1)."""
    return [h[p.offset:p.offset + p.blob.count].reshape(p.blob.shape)
            for h in solver.history for p in solver.net.learnable]


def _nets(solver):
    return [("train", solver.net)] + [("test%d" % i, n) for i, n in enumerate(solver.test_nets)]


def resume_extras(solver):
    """The project's fields (Caffe ignores them) that make a resumed run exact:
    the random stream, layer cursors and carried states, the smoothed-loss window."""
    layer_state = {}
    for net_name, net in _nets(solver):
        for name, layer in zip(net.layer_names, net.layers):
            s = layer.get_state()
            if s is not None:
                layer_state.setdefault(net_name, {})[name] = s
    return {"rng_state": backend.rng.state_json(), "layer_state": json.dumps(layer_state),
            "loss_history": list(solver.losses)}


def apply_resume_extras(solver, rng_state, layer_state, loss_history):
    if rng_state:
        backend.rng.load_state_json(rng_state)
    if layer_state:
        saved = json.loads(layer_state)
        for net_name, net in _nets(solver):
            for name, layer in zip(net.layer_names, net.layers):
                if name in saved.get(net_name, {}):
                    layer.set_state(saved[net_name][name])
    solver.restored_losses = list(loss_history)


def check_history_count(solver, path, count):
    expected = len(solver.history) * len(solver.net.learnable)
    if count != expected:
        raise ProtoError("%s: holds %d history blobs, but a %s solver on this net needs %d"
                         % (path, count, solver.type, expected))


def restore_history(solver, k, values, where):
    """Copy history blob `k` (a host array) into the solver's flat history buffer."""
    n = len(solver.net.learnable)
    h, p = solver.history[k // n], solver.net.learnable[k % n]
    where = "%s: history blob %d (%s)" % (where, k, p.name)
    if values.size != p.blob.count:
        raise ProtoError("%s has %d values, the net's parameter has %d" % (where, values.size, p.blob.count))
    h[p.offset:p.offset + p.blob.count] = backend.to_device(values.reshape(-1).astype(h.dtype), solver.net.xp)


def load_learned_net(solver, state_path, model):
    """Load the weights a state names; a moved snapshot pair is found side by side."""
    if not os.path.exists(model):
        beside = os.path.join(os.path.dirname(state_path), os.path.basename(model))
        if os.path.exists(beside):
            model = beside
    solver.net.copy_from(model)


# -- entry points ------------------------------------------------------------------------
def save_state(solver, path, model_path):
    """Write the solver state to `path` (HDF5 when it ends in .h5), naming `model_path`."""
    if is_hdf5(path):
        from .state_hdf5 import save_state_hdf5
        return save_state_hdf5(solver, path, model_path)
    state = caffe_pb2.SolverState()
    state.iter = solver.iter
    state.learned_net = model_path
    state.current_step = solver.lr_state["current_step"]
    for view in history_views(solver):
        state.history.add().CopyFrom(blob_to_proto(view))
    extras = resume_extras(solver)
    state.rng_state, state.layer_state = extras["rng_state"], extras["layer_state"]
    state.loss_history.extend(extras["loss_history"])
    proto_io.write_binary(path, state)


def load_state(solver, path):
    """Restore a solver from a .solverstate or .solverstate.h5 (and the weights it names)."""
    if is_hdf5(path):
        from .state_hdf5 import load_state_hdf5
        return load_state_hdf5(solver, path)
    state = proto_io.read_binary(path, caffe_pb2.SolverState)
    check_history_count(solver, path, len(state.history))
    if state.learned_net:
        load_learned_net(solver, path, state.learned_net)
    for k, blob_proto in enumerate(state.history):
        restore_history(solver, k, proto_to_array(blob_proto, "%s: history blob %d" % (path, k)), path)
    solver.iter = state.iter
    solver.lr_state["current_step"] = state.current_step
    apply_resume_extras(solver, state.rng_state, state.layer_state, state.loss_history)
    log.info("Restored solver state from %s (iteration %d)", path, state.iter)
