"""Pure rewrites of NetParameter: state filtering and Split insertion.

Nothing here touches arrays; net construction is `filter_net` ->
`insert_splits` -> wiring in net.py, as in Caffe.
"""
from .proto import caffe_pb2
from .proto.errors import ProtoError


def _where(source, layer_name, field=None, occurrence=0):
    return source.layer(layer_name, field, occurrence) if source is not None else "<net>"


def state_meets_rule(state, rule):
    """True when a NetState satisfies one NetStateRule (Caffe's semantics)."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def make_state(phase, level=0, stages=(), base=None):
    state = caffe_pb2.NetState()
    if base is not None:
        state.CopyFrom(base)
    state.phase = phase
    state.level = level if level else state.level
    for stage in stages or ():
        if stage not in state.stage:
            state.stage.append(stage)
    return state


def filter_net(net, state, source=None):
    """A copy of `net` holding only the layers the state includes."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    out.state.CopyFrom(state)
    for layer in net.layer:
        if len(layer.include) and len(layer.exclude):
            raise ProtoError("%s: layer %r has both include and exclude rules; use one"
                             % (_where(source, layer.name, "include"), layer.name))
        if len(layer.include):
            keep = any(state_meets_rule(state, r) for r in layer.include)
        else:
            keep = not any(state_meets_rule(state, r) for r in layer.exclude)
        if keep:
            out.layer.add().CopyFrom(layer)
    return out


def split_layer_name(layer, blob, top_index):
    return "%s_%s_%d_split" % (blob, layer, top_index)


def split_blob_name(layer, blob, top_index, split_index):
    return "%s_%s_%d_split_%d" % (blob, layer, top_index, split_index)


def check_bottoms(net, source=None):
    """Every bottom must be produced by a layer above it; tops by one layer unless in place."""
    produced = {}
    for layer in net.layer:
        for j, name in enumerate(layer.bottom):
            if name not in produced:
                raise ProtoError("%s: layer %r bottom[%d] %r is not produced by any layer above it"
                                 % (_where(source, layer.name, "bottom", j), layer.name, j, name))
        for j, name in enumerate(layer.top):
            if name in produced and name not in layer.bottom:
                raise ProtoError("%s: layer %r top[%d] %r is already produced by layer %r "
                                 "(only in-place layers may reuse a blob name)"
                                 % (_where(source, layer.name, "top", j), layer.name, j, name, produced[name]))
            produced[name] = layer.name


def insert_splits(net):
    """A copy of `net` where every blob read by several layers goes through a Split layer."""
    last_top = {}            # blob name -> (layer index, top index) that last wrote it
    source_of = {}           # (layer index, bottom index) -> (layer index, top index)
    readers = {}             # (layer index, top index) -> number of readers
    loss_weight = {}
    for i, layer in enumerate(net.layer):
        for j, name in enumerate(layer.bottom):
            src = last_top[name]
            source_of[(i, j)] = src
            readers[src] = readers.get(src, 0) + 1
        for j, name in enumerate(layer.top):
            last_top[name] = (i, j)
            if j < len(layer.loss_weight) and layer.loss_weight[j]:
                loss_weight[(i, j)] = layer.loss_weight[j]
                readers[(i, j)] = readers.get((i, j), 0) + 1

    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    next_split = {}
    for i, layer in enumerate(net.layer):
        copy = out.layer.add()
        copy.CopyFrom(layer)
        for j, name in enumerate(layer.bottom):
            src = source_of[(i, j)]
            if readers[src] > 1:
                src_layer = net.layer[src[0]].name
                k = next_split.get(src, 0)
                next_split[src] = k + 1
                copy.bottom[j] = split_blob_name(src_layer, name, src[1], k)
        for j, name in enumerate(layer.top):
            count = readers.get((i, j), 0)
            if count <= 1:
                continue
            split = out.layer.add()
            split.name = split_layer_name(layer.name, name, j)
            split.type = "Split"
            split.bottom.append(name)
            split.top.extend(split_blob_name(layer.name, name, j, k) for k in range(count))
            weight = loss_weight.get((i, j))
            if weight:
                # The split's first top carries the loss; readers start at the second.
                split.loss_weight.extend([weight] + [0.0] * (count - 1))
                copy.loss_weight[j] = 0.0
                next_split[(i, j)] = 1
    return out
