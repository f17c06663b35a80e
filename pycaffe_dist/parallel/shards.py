"""Deterministic mode's shards: the train net rewritten to one shard's batch.

A worker that holds k shards runs k nets with the shard batch, all viewing
one flat weight buffer and each with its own gradient buffer. Rewriting the
batch is a pure NetParameter rewrite (contract 4); building the nets follows
the solver's own rules for the train net.
"""
import contextlib

from .. import backend, graph
from ..net import Net, TRAIN
from ..proto import caffe_pb2, io as proto_io
from ..solvers.base import SolverError, _resolve

# Layer type -> (parameter message, batch field) for layers whose batch is a number.
BATCH_FIELDS = {
    "Data": ("data_param", "batch_size"),
    "ImageData": ("image_data_param", "batch_size"),
    "HDF5Data": ("hdf5_data_param", "batch_size"),
    "MemoryData": ("memory_data_param", "batch_size"),
    "WindowData": ("window_data_param", "batch_size"),
}


def _included(layer, state):
    """graph.filter_net's rule for one layer."""
    if len(layer.include):
        return any(graph.state_meets_rule(state, r) for r in layer.include)
    return not any(graph.state_meets_rule(state, r) for r in layer.exclude)


def _scaled(batch, numerator, denominator, layer):
    if (batch * numerator) % denominator:
        raise SolverError("layer %r: batch %d cannot be split into %d shards over %d workers "
                          "(deterministic mode needs batch x workers / shards to be whole)"
                          % (layer.name, batch, denominator, numerator))
    return batch * numerator // denominator


def scale_batch(net, numerator, denominator, state):
    """A copy of `net` whose data layers included in `state` read batch*numerator/denominator.

    DummyData's first dimension is its batch and is scaled too; Input
    layers are fed by the user and are left alone.
    """
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    for layer in out.layer:
        if not _included(layer, state):
            continue
        if layer.type in BATCH_FIELDS:
            message, name = BATCH_FIELDS[layer.type]
            p = getattr(layer, message)
            setattr(p, name, _scaled(getattr(p, name), numerator, denominator, layer))
        elif layer.type == "DummyData":
            p = layer.dummy_data_param
            for shape in p.shape:
                shape.dim[0] = _scaled(shape.dim[0], numerator, denominator, layer)
            for i, num in enumerate(p.num):
                p.num[i] = _scaled(num, numerator, denominator, layer)
    return out


def train_net_param(param, base_dir):
    """The solver's train NetParameter (net, net_param, train_net or train_net_param) and its state."""
    given = [f for f in ("net", "net_param", "train_net", "train_net_param") if param.HasField(f)]
    if len(given) != 1:
        raise SolverError("give exactly one of net, net_param, train_net, train_net_param (got %s)"
                          % (", ".join(given) or "none"))
    field = given[0]
    if field in ("net", "train_net"):
        net, _ = proto_io.read_net(_resolve(getattr(param, field), base_dir))
    else:
        net = caffe_pb2.NetParameter()
        net.CopyFrom(getattr(param, field))
    state = graph.make_state(TRAIN, 0, (), net.state if net.HasField("state") else None)
    if param.HasField("train_state"):
        state = graph.make_state(TRAIN, 0, (), param.train_state)
    net.state.CopyFrom(state)
    return net, state


def build_shard_net(net_param, state, dtype, param, base_dir):
    """One shard's train net, with the solver's fine-tuning weights loaded."""
    net = Net(net_param, TRAIN, state.level, list(state.stage), dtype=dtype)
    for path in param.weights:
        net.copy_from(_resolve(path, base_dir))
    return net


@contextlib.contextmanager
def as_shard(shard, shards):
    """Run the body as data shard `shard` of `shards` in this thread (data layers read it)."""
    rank, count = backend.solver_rank(), backend.solver_count()
    backend.set_solver_rank(shard, this_thread_only=True)
    backend.set_solver_count(shards, this_thread_only=True)
    try:
        yield
    finally:
        backend.set_solver_rank(rank, this_thread_only=True)
        backend.set_solver_count(count, this_thread_only=True)
