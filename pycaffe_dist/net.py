"""Net: layers wired by blob name, with all learnable parameters in flat buffers."""
from collections import OrderedDict

import numpy

from . import backend, graph
from .blob import Blob
from .layers import LayerError, layer_class
from .proto import caffe_pb2, io as proto_io
from .proto.errors import ProtoError

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST

# False: every in-place ReLU runs as its own layer (see Net._fusable_relus;
# for comparisons in bench/ and the tests).
FUSE_RELU = True


class NetError(ProtoError):
    """A net that cannot be built; the message starts with file:line:col."""


class ParamInfo:
    """One learnable blob as the solver sees it."""

    __slots__ = ("blob", "lr_mult", "decay_mult", "layer", "index", "offset", "name")

    def __init__(self, blob, spec, layer, index):
        self.blob = blob
        self.lr_mult = spec.lr_mult if spec is not None else 1.0
        self.decay_mult = spec.decay_mult if spec is not None else 1.0
        self.layer = layer
        self.index = index
        self.offset = 0
        self.name = "%s[%d]" % (layer, index)


class Net:
    """A network built from a NetParameter (or a prototxt path) for one phase.

    Attributes a user reads: `blobs` (name -> Blob, in creation order),
    `params` (layer name -> list of learnable Blobs), `layers`, `layer_names`,
    `inputs`, `outputs`. `flat_data` and `flat_diff` are the contiguous
    buffers every learnable blob views into.
    """

    def __init__(self, net, phase=TRAIN, level=0, stages=(), weights=None,
                 dtype=numpy.float32, source=None, xp=None):
        if isinstance(net, str):
            net, source = proto_io.read_net(net)
        self.source = source
        self.phase = phase
        self.dtype = numpy.dtype(dtype)
        self.xp = xp or backend.array_module()
        state = graph.make_state(phase, level, stages, net.state if net.HasField("state") else None)
        filtered = graph.filter_net(net, state, source)
        graph.check_bottoms(filtered, source)
        self.param = graph.insert_splits(filtered)
        self.name = self.param.name
        self._build()
        if weights:
            self.copy_from(weights)

    # -- construction -----------------------------------------------------------
    def _where(self, layer_name, field=None, occurrence=0):
        if self.source is None:
            return "<net %s>" % (self.name or "")
        return self.source.layer(layer_name, field, occurrence)

    def _build(self):
        self.blobs = OrderedDict()
        self.layers = []
        self.layer_names = []
        self.bottom_ids = []      # per layer: list of blob names
        self.top_ids = []
        self.producer = {}        # blob name -> layer name
        self._write_first_cache = None   # see clear_param_diffs(lazily=True)
        self._lazily_cleared = ()
        self.blob_loss_weights = OrderedDict()
        for layer_param in self.param.layer:
            self._add_layer(layer_param)
        consumed = {b for names in self.bottom_ids for b in names}
        self.inputs = [t for layer, tops in zip(self.layers, self.top_ids)
                       if layer.type == "Input" for t in tops]
        self.outputs = [name for name in self.blobs if name not in consumed]
        self._collect_params()
        self._infer_backward()
        self._fused = self._fusable_relus()
        # Per-layer callbacks, each called with the layer index (pycaffe's
        # before_forward ... after_backward; parallel strategies use the last).
        self.before_forward_hooks = []
        self.after_forward_hooks = []
        self.before_backward_hooks = []
        self.after_backward_hooks = []

    def _add_layer(self, lp):
        try:
            cls = layer_class(lp.type)
        except LayerError as e:
            raise NetError("%s: layer %r: %s" % (self._where(lp.name, "type"), lp.name, e)) from None
        layer = cls(lp, self.phase)
        layer.dtype = self.dtype
        layer.xp = self.xp
        bottom = [self.blobs[name] for name in lp.bottom]
        top = []
        for name in lp.top:
            if name in lp.bottom:
                top.append(self.blobs[name])       # in place
            else:
                blob = Blob((), self.dtype, self.xp)
                self.blobs[name] = blob
                self.producer[name] = lp.name
                top.append(blob)
        if len(lp.propagate_down) not in (0, len(lp.bottom)):
            raise NetError("%s: layer %r has %d propagate_down values for %d bottoms"
                           % (self._where(lp.name, "propagate_down"), lp.name,
                              len(lp.propagate_down), len(lp.bottom)))
        try:
            layer.setup(bottom, top)
        except (LayerError, ValueError) as e:
            if getattr(layer, "user_code", False):
                raise  # a user's Python layer: its own exception, unchanged
            raise NetError("%s: %s%s" % (self._where(lp.name), self._name_layer(e, lp),
                                         self._describe_bottoms(lp))) from None
        if not lp.loss_weight and layer.is_loss:
            weights = [1.0] + [0.0] * (len(top) - 1)
        else:
            weights = list(lp.loss_weight) + [0.0] * (len(top) - len(lp.loss_weight))
        layer.loss_weights = weights
        for name, w in zip(lp.top, weights):
            if w:
                self.blob_loss_weights[name] = w
        self.layers.append(layer)
        self.layer_names.append(lp.name)
        self.bottom_ids.append(list(lp.bottom))
        self.top_ids.append(list(lp.top))

    @staticmethod
    def _name_layer(error, lp):
        text = str(error)
        return text if repr(lp.name) in text else "layer %r (%s): %s" % (lp.name, lp.type, text)

    def _describe_bottoms(self, lp):
        parts = ["bottom[%d] %r from layer %r has shape %s"
                 % (j, name, self.producer.get(name, "?"), self.blobs[name].shape)
                 for j, name in enumerate(lp.bottom)]
        return ("; " + "; ".join(parts)) if parts else ""

    def _collect_params(self):
        """Share named params, then move every learnable blob into two flat buffers."""
        self.params = OrderedDict()
        self.learnable = []            # ParamInfo of owners, in order
        owners = {}                    # ParamSpec.name -> ParamInfo
        for layer, lp in zip(self.layers, self.param.layer):
            if not layer.blobs:
                continue
            layer.param_propagate_down = [True] * len(layer.blobs)
            for j, blob in enumerate(list(layer.blobs)):
                spec = lp.param[j] if j < len(lp.param) else None
                shared_name = spec.name if spec is not None and spec.name else None
                if shared_name and shared_name in owners:
                    owner = owners[shared_name]
                    self._check_share(lp, j, blob, owner, spec)
                    layer.blobs[j] = owner.blob
                    if spec is not None and spec.HasField("lr_mult") and spec.lr_mult != owner.lr_mult:
                        raise NetError("%s: layer %r param %r lr_mult %g differs from its owner's %g"
                                       % (self._where(lp.name, "param", j), lp.name, shared_name,
                                          spec.lr_mult, owner.lr_mult))
                else:
                    info = ParamInfo(blob, spec, lp.name, j)
                    self.learnable.append(info)
                    if shared_name:
                        owners[shared_name] = info
                layer.param_propagate_down[j] = not (spec is not None and spec.lr_mult == 0)
            self.params[lp.name] = layer.blobs
        total = sum(p.blob.count for p in self.learnable)
        self.flat_data = self.xp.zeros(total, self.dtype)
        self.flat_diff = self.xp.zeros(total, self.dtype)
        offset = 0
        for p in self.learnable:
            n, shape = p.blob.count, p.blob.shape
            self.flat_data[offset:offset + n] = p.blob.data.reshape(-1)
            p.blob.bind(self.flat_data[offset:offset + n].reshape(shape),
                        self.flat_diff[offset:offset + n].reshape(shape))
            p.offset = offset
            offset += n

    def _check_share(self, lp, j, blob, owner, spec):
        strict = spec.share_mode == caffe_pb2.ParamSpec.STRICT
        same = blob.shape == owner.blob.shape if strict else blob.count == owner.blob.count
        if not same:
            raise NetError("%s: layer %r param %r has shape %s but its owner %s has %s"
                           % (self._where(lp.name, "param", j), lp.name, spec.name,
                              blob.shape, owner.name, owner.blob.shape))

    def _infer_backward(self):
        """Which layers run backward and which bottoms get a diff (Caffe's rules)."""
        blob_needs = set()
        self.layer_need_backward = []
        self.bottom_need_backward = []
        for layer, lp, bottoms, tops in zip(self.layers, self.param.layer, self.bottom_ids, self.top_ids):
            wanted = [bool(lp.propagate_down[j]) if lp.propagate_down else True for j in range(len(bottoms))]
            bottom_needs = [b in blob_needs and w for b, w in zip(bottoms, wanted)]
            needs = layer.allow_backward and (any(bottom_needs) or any(layer.param_propagate_down))
            if needs:
                blob_needs.update(tops)
            self.layer_need_backward.append(needs)
            self.bottom_need_backward.append(bottom_needs)
        # Walk back from the losses: what feeds no loss needs no gradient.
        under_loss, skipped = set(), set()
        for i in range(len(self.layers) - 1, -1, -1):
            layer, tops = self.layers[i], self.top_ids[i]
            contributes = any(layer.loss_weights) or any(t in under_loss for t in tops)
            if all(t in skipped for t in tops) or not contributes:
                self.layer_need_backward[i] = False
                self.bottom_need_backward[i] = [False] * len(self.bottom_ids[i])
            for j, b in enumerate(self.bottom_ids[i]):
                if contributes:
                    under_loss.add(b)
                if not self.bottom_need_backward[i][j]:
                    skipped.add(b)
        if self.param.force_backward:
            for i, layer in enumerate(self.layers):
                if not layer.allow_backward:
                    continue
                self.layer_need_backward[i] = True
                self.bottom_need_backward[i] = [
                    need or layer.allow_force_backward(j)
                    for j, need in enumerate(self.bottom_need_backward[i])]
                layer.param_propagate_down = [True] * len(layer.blobs)
        for layer, bottom_needs in zip(self.layers, self.bottom_need_backward):
            layer.expect_backward(bottom_needs)

    # -- running ---------------------------------------------------------------
    def _fusable_relus(self):
        """Per layer: whether it is a ReLU (slope 0) in place on the one top
        of the layer before it, which can apply it itself (Layer.fuses_relu):
        max(y, 0) on each lane's part of y while in cache, instead of a
        pass of its own over the whole blob on one thread (cifar10_quick's
        three ReLU forwards, 1.1 ms of a 48 ms step at two threads). Only
        when both run in the same forward call with no per-layer hooks, so
        a forward that stops at the first still sees its own output."""
        fused = [False] * len(self.layers)
        if not FUSE_RELU or self.xp is not numpy:
            return fused
        for i in range(1, len(self.layers)):
            relu, before = self.layers[i], self.layers[i - 1]
            fused[i] = (relu.type == "ReLU" and relu.negative_slope == 0 and len(self.top_ids[i - 1]) == 1
                        and self.bottom_ids[i] == self.top_ids[i] == self.top_ids[i - 1]
                        and not any(relu.loss_weights) and not any(before.loss_weights) and before.fuses_relu())
        return fused

    def layer_index(self, name):
        try:
            return self.layer_names.index(name)
        except ValueError:
            raise KeyError("no layer named %r in net %r" % (name, self.name)) from None

    def forward(self, start=None, end=None):
        """Run layers start..end (names or indices, inclusive); return the weighted loss."""
        first = 0 if start is None else (start if isinstance(start, int) else self.layer_index(start))
        last = len(self.layers) - 1 if end is None else (end if isinstance(end, int) else self.layer_index(end))
        loss = 0.0
        hooked = bool(self.before_forward_hooks or self.after_forward_hooks)
        for i in range(first, last + 1):
            for hook in self.before_forward_hooks:
                hook(i)
            layer = self.layers[i]
            bottom = [self.blobs[n] for n in self.bottom_ids[i]]
            top = [self.blobs[n] for n in self.top_ids[i]]
            layer.reshape(bottom, top)
            if i > first and self._fused[i] and not hooked:
                pass                    # the layer before applied it (_fusable_relus)
            elif i < last and self._fused[i + 1] and not hooked:
                layer.fused_relu = True
                try:
                    layer.forward(bottom, top)
                finally:
                    layer.fused_relu = False
            else:
                layer.forward(bottom, top)
            for t, w in zip(top, layer.loss_weights):
                if w:
                    loss += w * float(t.data.sum())
            for hook in self.after_forward_hooks:
                hook(i)
        return loss

    def backward(self, start=None, end=None):
        """Backpropagate from layer `start` (default: the last) down to `end` (default: the first)."""
        first = len(self.layers) - 1 if start is None else (
            start if isinstance(start, int) else self.layer_index(start))
        last = 0 if end is None else (end if isinstance(end, int) else self.layer_index(end))
        for i in range(first, last - 1, -1):
            if not self.layer_need_backward[i]:
                continue  # hooks too: they see only the layers whose gradients change
            for hook in self.before_backward_hooks:
                hook(i)
            layer = self.layers[i]
            top = [self.blobs[n] for n in self.top_ids[i]]
            bottom = [self.blobs[n] for n in self.bottom_ids[i]]
            for t, w in zip(top, layer.loss_weights):
                if w:
                    t.diff[...] = w
            layer.backward(top, self.bottom_need_backward[i], bottom)
            for hook in self.after_backward_hooks:
                hook(i)
        for blob in self._lazily_cleared:
            if blob.diff_owes_zeros:       # no layer wrote it: the zeros a lazy clear owes
                blob.diff_to_overwrite()[...] = 0
        self._lazily_cleared = ()

    def forward_backward(self):
        loss = self.forward()
        self.backward()
        return loss

    def reshape(self):
        """Re-size every top from its bottoms, in layer order (after an input blob changed shape)."""
        for i, layer in enumerate(self.layers):
            layer.reshape([self.blobs[n] for n in self.bottom_ids[i]], [self.blobs[n] for n in self.top_ids[i]])

    def data_wait_seconds(self):
        """Total seconds this net's data layers waited for prefetched batches (None without any)."""
        return self._data_layers_total("wait_seconds_total")

    def data_skipped_records(self):
        """Total bad records this net's data layers skipped (bad_record: SKIP; None without any)."""
        return self._data_layers_total("skipped_records_total")

    def _data_layers_total(self, name):
        values = [getattr(layer, name) for layer in self.layers if hasattr(layer, name)]
        return sum(values) if values else None

    def close(self):
        """Stop what layers run in the background (prefetch threads), and close their files."""
        for layer in self.layers:
            close = getattr(layer, "close", None)
            if close is not None:
                close()

    def clear_param_diffs(self, lazily=False):
        """Zero every parameter gradient (Caffe's ClearParamDiffs).

        lazily (the solver, when no callback could look in between): the
        gradients of layers that can write theirs whole instead of adding to
        them (InnerProduct's weights, owned by that one layer) are only
        marked; the layer overwrites them in backward, which saves a write
        and a read of the largest gradients, and any other read sees zeros
        (Blob.diff writes them first; backward() does for what no layer
        wrote)."""
        if not lazily:
            self.flat_diff[...] = 0
            return
        blobs, spans = self._write_first()
        for start, stop in spans:
            self.flat_diff[start:stop] = 0
        for blob in blobs:
            blob.clear_diff_lazily()
        self._lazily_cleared = blobs

    def _write_first(self):
        """(blobs, spans): the learnable blobs a layer overwrites, and the
        flat_diff ranges of all the others."""
        if self._write_first_cache is None:
            users = {}
            for layer in self.layers:
                for blob in layer.blobs:
                    users[id(blob)] = users.get(id(blob), 0) + 1
            chosen = set()
            for layer, needs in zip(self.layers, self.layer_need_backward):
                if (needs and getattr(layer, "overwrites_weight_diff", False) and layer.blobs
                        and layer.param_propagate_down[0] and users[id(layer.blobs[0])] == 1):
                    chosen.add(id(layer.blobs[0]))
            blobs, spans, start = [], [], 0
            for p in self.learnable:
                if id(p.blob) in chosen:
                    blobs.append(p.blob)
                    spans.append((start, p.offset))
                    start = p.offset + p.blob.count
            spans.append((start, self.flat_diff.size))
            self._write_first_cache = (blobs, [(a, b) for a, b in spans if b > a])
        return self._write_first_cache

    def add_after_backward(self, hook):
        """Call hook(layer_index) after each layer's backward (to start reducing its gradients)."""
        self.after_backward_hooks.append(hook)

    def bind_flat(self, data=None, diff=None):
        """Make the learnable blobs views of other flat buffers (shared memory, a peer net's weights).

        Nothing is copied. Nets that shared weights with this one must call
        share_weights_with again.
        """
        data = self.flat_data if data is None else data
        diff = self.flat_diff if diff is None else diff
        if data.shape != self.flat_data.shape or diff.shape != self.flat_diff.shape:
            raise ValueError("flat buffers of %s and %s elements for a net with %d parameters"
                             % (data.shape, diff.shape, self.flat_data.size))
        for p in self.learnable:
            n, shape = p.blob.count, p.blob.shape
            p.blob.bind(data[p.offset:p.offset + n].reshape(shape), diff[p.offset:p.offset + n].reshape(shape))
        self.flat_data, self.flat_diff = data, diff

    def share_weights_with(self, other):
        """Make this net's learnable blobs views of `other`'s flat buffers (test nets share with train)."""
        theirs = {}
        for p in other.learnable:
            theirs.setdefault(p.layer, {})[p.index] = p
        for lname, blobs in self.params.items():
            for j, blob in enumerate(blobs):
                src = theirs.get(lname, {}).get(j)
                if src is None:
                    continue
                if src.blob.shape != blob.shape:
                    raise NetError("cannot share layer %r param %d: shape %s vs %s"
                                   % (lname, j, blob.shape, src.blob.shape))
                blob.bind(src.blob.data, src.blob.diff)

    # -- files -------------------------------------------------------------------
    def to_proto(self, write_diff=False):
        """NetParameter with each layer's learned blobs (what a .caffemodel holds)."""
        from .snapshot import blob_to_proto
        out = caffe_pb2.NetParameter()
        out.name = self.param.name
        for layer, lp in zip(self.layers, self.param.layer):
            if lp.type == "Split" and lp.name.endswith("_split"):
                continue  # inserted by insert_splits; Caffe rebuilds them on load
            entry = out.layer.add()
            entry.CopyFrom(lp)
            del entry.blobs[:]
            for blob in layer.blobs:
                entry.blobs.add().CopyFrom(blob_to_proto(blob, write_diff))
        return out

    def save(self, path):
        """Write the learned weights as a Caffe .caffemodel (atomically)."""
        proto_io.write_binary(path, self.to_proto())

    def copy_from(self, path_or_param):
        """Load learned blobs from a .caffemodel (or NetParameter), matching layers by name."""
        from .snapshot import load_weights
        load_weights(self, path_or_param)
