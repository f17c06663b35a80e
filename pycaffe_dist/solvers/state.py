"""The .solverstate file: iteration, history blobs, and what exact resume needs."""
import json
import logging
import os

import numpy

from .. import backend
from ..proto import caffe_pb2, io as proto_io
from ..proto.errors import ProtoError
from ..snapshot import blob_to_proto, proto_to_array

log = logging.getLogger("pycaffe_dist")


def save_state(solver, path, model_path):
    state = caffe_pb2.SolverState()
    state.iter = solver.iter
    state.learned_net = model_path
    state.current_step = solver.lr_state["current_step"]
    for h in solver.history:
        for p in solver.net.learnable:
            view = h[p.offset:p.offset + p.blob.count].reshape(p.blob.shape)
            state.history.add().CopyFrom(blob_to_proto(view))
    # Project fields (numbers >= 1000; Caffe ignores them): what makes resume exact.
    state.rng_state = backend.rng.state_json()
    layer_state = {}
    for net_name, net in [("train", solver.net)] + [("test%d" % i, n) for i, n in enumerate(solver.test_nets)]:
        for name, layer in zip(net.layer_names, net.layers):
            s = layer.get_state()
            if s is not None:
                layer_state.setdefault(net_name, {})[name] = s
    state.layer_state = json.dumps(layer_state)
    state.loss_history.extend(solver.losses)
    proto_io.write_binary(path, state)


def load_state(solver, path):
    state = proto_io.read_binary(path, caffe_pb2.SolverState)
    expected = len(solver.history) * len(solver.net.learnable)
    if len(state.history) != expected:
        raise ProtoError("%s: holds %d history blobs, but a %s solver on this net needs %d"
                         % (path, len(state.history), solver.type, expected))
    if state.learned_net:
        model = state.learned_net
        if not os.path.exists(model):
            beside = os.path.join(os.path.dirname(path), os.path.basename(model))
            if os.path.exists(beside):
                model = beside
        solver.net.copy_from(model)
    for k, blob_proto in enumerate(state.history):
        h = solver.history[k // len(solver.net.learnable)]
        p = solver.net.learnable[k % len(solver.net.learnable)]
        where = "%s: history blob %d (%s)" % (path, k, p.name)
        values = proto_to_array(blob_proto, where)
        if values.size != p.blob.count:
            raise ProtoError("%s has %d values, the net's parameter has %d" % (where, values.size, p.blob.count))
        h[p.offset:p.offset + p.blob.count] = backend.to_device(values.reshape(-1).astype(h.dtype), solver.net.xp)
    solver.iter = state.iter
    solver.lr_state["current_step"] = state.current_step
    if state.rng_state:
        backend.rng.load_state_json(state.rng_state)
    if state.layer_state:
        saved = json.loads(state.layer_state)
        for net_name, net in [("train", solver.net)] + [("test%d" % i, n) for i, n in enumerate(solver.test_nets)]:
            for name, layer in zip(net.layer_names, net.layers):
                if name in saved.get(net_name, {}):
                    layer.set_state(saved[net_name][name])
    solver.restored_losses = list(state.loss_history)
    log.info("Restored solver state from %s (iteration %d)", path, state.iter)
