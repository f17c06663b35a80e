"""pycaffe's Net: its constructor, properties, and forward/backward helpers.

A thin view over the engine's `pycaffe_dist.net.Net` (kept as `net._net`),
which the solvers and tools use directly. Blobs, layers and parameters are
the engine's own objects, so what a script writes into `net.blobs[...]` or
`net.params[...]` is what the engine runs with.
"""
from collections import OrderedDict
from itertools import zip_longest

import numpy

from .. import backend, weights_hdf5
from ..net import TEST, TRAIN
from ..net import Net as _EngineNet


def _constructor_args(args, kwargs):
    """(file, phase, level, stages, weights) from both of pycaffe's constructor forms."""
    args = list(args)
    if len(args) >= 2 and isinstance(args[1], str):
        # Net(network_file, pretrained_weights, phase): pycaffe's older form.
        args = [args[0], args[2] if len(args) > 2 else kwargs.pop("phase", None), 0, None, args[1]]
    names = ["network_file", "phase", "level", "stages", "weights"]
    if len(args) > len(names):
        raise TypeError("Net() takes at most %d positional arguments" % len(names))
    values = dict(zip(names, args))
    for key, value in kwargs.items():
        if key not in names:
            raise TypeError("Net() got an unexpected keyword argument %r" % key)
        if key in values and values[key] is not None:
            raise TypeError("Net() got multiple values for argument %r" % key)
        values[key] = value
    if values.get("network_file") is None or values.get("phase") is None:
        raise TypeError("Net(network_file, phase, level=0, stages=None, weights=None): "
                        "network_file and phase are required")
    if values["phase"] not in (TRAIN, TEST):
        raise ValueError("phase must be caffe.TRAIN or caffe.TEST, got %r" % (values["phase"],))
    return (values["network_file"], values["phase"], values.get("level") or 0,
            list(values.get("stages") or []), values.get("weights"))


class Net:
    """A network for one phase, as pycaffe's `caffe.Net`.

    Net(network_file, phase, level=0, stages=None, weights=None)
    Net(network_file, weights, phase)      (pycaffe's older form)

    `network_file` is a prototxt path (or a NetParameter); `phase` is
    `caffe.TRAIN` or `caffe.TEST`; `weights` a .caffemodel to load.
    """

    def __init__(self, *args, **kwargs):
        network_file, phase, level, stages, weights = _constructor_args(args, kwargs)
        self._net = _EngineNet(network_file, phase, level, stages, weights)

    @classmethod
    def _wrap(cls, engine_net):
        """The pycaffe view of an engine Net (a solver's train or test net)."""
        net = cls.__new__(cls)
        net._net = engine_net
        return net

    # -- what a net holds ----------------------------------------------------------
    @property
    def blobs(self):
        """OrderedDict of blob name -> Blob, in the order the layers make them."""
        return self._net.blobs

    @property
    def params(self):
        """OrderedDict of layer name -> list of its learnable Blobs (layers that have some)."""
        return self._net.params

    @property
    def layers(self):
        """The layers in order; a Python layer appears as the user's own object."""
        return [getattr(layer, "user", layer) for layer in self._net.layers]

    @property
    def layer_dict(self):
        """OrderedDict of layer name -> layer."""
        return OrderedDict(zip(self._net.layer_names, self.layers))

    @property
    def _layer_names(self):
        return list(self._net.layer_names)

    @property
    def _blob_names(self):
        return list(self._net.blobs)

    @property
    def _blobs(self):
        return list(self._net.blobs.values())

    @property
    def inputs(self):
        """Names of the net's input blobs (the tops of its Input layers)."""
        return list(self._net.inputs)

    @property
    def outputs(self):
        """Names of the blobs no layer consumes."""
        return list(self._net.outputs)

    @property
    def _inputs(self):
        return [self._blob_names.index(n) for n in self.inputs]

    @property
    def _outputs(self):
        return [self._blob_names.index(n) for n in self.outputs]

    @property
    def top_names(self):
        """OrderedDict of layer name -> names of its top blobs."""
        return OrderedDict(zip(self._net.layer_names, (list(t) for t in self._net.top_ids)))

    @property
    def bottom_names(self):
        """OrderedDict of layer name -> names of its bottom blobs."""
        return OrderedDict(zip(self._net.layer_names, (list(b) for b in self._net.bottom_ids)))

    @property
    def blob_loss_weights(self):
        """OrderedDict of blob name -> its weight in the loss (0 for blobs that are no loss)."""
        weights = self._net.blob_loss_weights
        return OrderedDict((name, weights.get(name, 0.0)) for name in self._net.blobs)

    @property
    def _blob_loss_weights(self):
        return list(self.blob_loss_weights.values())

    def _bottom_ids(self, i):
        names = self._blob_names
        return [names.index(n) for n in self._net.bottom_ids[i]]

    def _top_ids(self, i):
        names = self._blob_names
        return [names.index(n) for n in self._net.top_ids[i]]

    # -- running ---------------------------------------------------------------------
    def _index(self, layer):
        if isinstance(layer, int):
            return layer
        try:
            return self._net.layer_names.index(layer)
        except ValueError:
            raise KeyError("no layer named %r" % (layer,)) from None

    def _tops_of(self, layer):
        """A layer given by name: its own name when it is also a blob (pycaffe), else its tops."""
        if layer in self._net.blobs:
            return [layer]
        return list(self._net.top_ids[self._index(layer)])

    def _forward(self, start, end):
        return self._net.forward(start, end)

    def _backward(self, start, end):
        self._net.backward(start, end)

    def forward(self, blobs=None, start=None, end=None, **kwargs):
        """Run the net forward, from layer `start` to layer `end` (names, inclusive).

        Keyword arguments fill the input blobs (all of them, batch sized).
        Returns {blob name: data} for the outputs (or `end`'s tops) plus the
        names in `blobs`; the arrays are views of the blobs, as in pycaffe.
        """
        first = 0 if start is None else self._index(start)
        last = len(self._net.layers) - 1 if end is None else self._index(end)
        outputs = set((self._tops_of(end) if end is not None else self.outputs) + list(blobs or []))
        if kwargs:
            if set(kwargs) != set(self.inputs):
                raise ValueError("Input blob arguments %s do not match net inputs %s"
                                 % (sorted(kwargs), sorted(self.inputs)))
            for name, value in kwargs.items():
                blob = self._net.blobs[name]
                if len(value) != blob.shape[0]:
                    raise ValueError("Input %r is not batch sized: %d items for a batch of %d"
                                     % (name, len(value), blob.shape[0]))
                blob.data[...] = backend.to_device(numpy.asarray(value), blob.xp)
        self._net.forward(first, last)
        return {name: backend.to_host(self._net.blobs[name].data) for name in outputs}

    def backward(self, diffs=None, start=None, end=None, **kwargs):
        """Backpropagate from layer `start` down to layer `end` (names, inclusive).

        Keyword arguments set the diffs of the output blobs (all of them).
        Returns {blob name: diff} for the inputs (or `end`'s tops) plus the
        names in `diffs`.
        """
        first = len(self._net.layers) - 1 if start is None else self._index(start)
        last = 0 if end is None else self._index(end)
        outputs = set((self._tops_of(end) if end is not None else self.inputs) + list(diffs or []))
        if kwargs:
            if set(kwargs) != set(self.outputs):
                raise ValueError("Top diff arguments %s do not match net outputs %s"
                                 % (sorted(kwargs), sorted(self.outputs)))
            for name, value in kwargs.items():
                blob = self._net.blobs[name]
                if len(value) != blob.shape[0]:
                    raise ValueError("Diff %r is not batch sized: %d items for a batch of %d"
                                     % (name, len(value), blob.shape[0]))
                blob.diff[...] = backend.to_device(numpy.asarray(value), blob.xp)
        self._net.backward(first, last)
        return {name: backend.to_host(self._net.blobs[name].diff) for name in outputs}

    def _batch(self, arrays):
        """Split {input name: N x ...} into batches of the net's size; pad the last with zeros."""
        if not arrays:
            return
        n = len(next(iter(arrays.values())))
        size = self._net.blobs[next(iter(arrays))].shape[0]
        for i in range(0, n, size):
            batch = {}
            for name, values in arrays.items():
                part = numpy.asarray(values[i:i + size])
                if len(part) < size:
                    pad = numpy.zeros((size - len(part),) + part.shape[1:], part.dtype)
                    part = numpy.concatenate([part, pad])
                batch[name] = part
            yield batch

    def forward_all(self, blobs=None, **kwargs):
        """Forward any number of items in batches; returns {blob: all N results}.

        The last batch is padded with zeros and the padding dropped from the
        results. With no inputs given, runs one forward.
        """
        if not kwargs:
            return {k: v.copy() for k, v in self.forward(blobs).items()}
        n = len(next(iter(kwargs.values())))
        results = {}
        for batch in self._batch(kwargs):
            for name, value in self.forward(blobs, **batch).items():
                results.setdefault(name, []).append(value.copy())
        return {name: numpy.concatenate(parts)[:n] for name, parts in results.items()}

    def forward_backward_all(self, blobs=None, diffs=None, **kwargs):
        """forward_all and backward over batches; kwargs hold inputs and output diffs.

        Returns ({blob: outputs}, {blob: input diffs}), each with N items.
        """
        ins = {k: v for k, v in kwargs.items() if k in self.inputs}
        outs = {k: v for k, v in kwargs.items() if k in self.outputs}
        n = len(next(iter(kwargs.values()))) if kwargs else None
        results, grads = {}, {}
        for fb, bb in zip_longest(self._batch(ins), self._batch(outs), fillvalue={}):
            for name, value in self.forward(blobs, **fb).items():
                results.setdefault(name, []).append(value.copy())
            for name, value in self.backward(diffs, **bb).items():
                grads.setdefault(name, []).append(value.copy())
        if not results:  # no inputs given: one pass
            results = {k: [v.copy()] for k, v in self.forward(blobs).items()}
            grads = {k: [v.copy()] for k, v in self.backward(diffs).items()}
        return ({k: numpy.concatenate(v)[:n] for k, v in results.items()},
                {k: numpy.concatenate(v)[:n] for k, v in grads.items()})

    def reshape(self):
        """Re-size every blob after an input blob was reshaped (`net.blobs['data'].reshape(...)`)."""
        self._net.reshape()

    def clear_param_diffs(self):
        """Zero the gradients of every learnable blob."""
        self._net.clear_param_diffs()

    def set_input_arrays(self, data, labels):
        """Give the first layer, a MemoryData layer, N x C x H x W `data` and N `labels`."""
        layer = self._net.layers[0] if self._net.layers else None
        if layer is None or layer.type != "MemoryData":
            raise RuntimeError("set_input_arrays may only be called if the first layer is a MemoryData layer")
        labels = numpy.asarray(labels)
        if labels.ndim > 1:
            labels = labels.reshape(len(labels), -1)[:, 0]
        layer.set_input_arrays(numpy.asarray(data), labels)

    _set_input_arrays = set_input_arrays

    # -- hooks: each is called with the index of the layer ------------------------
    def before_forward(self, fn):
        """Call fn(layer_index) before each layer's forward."""
        self._net.before_forward_hooks.append(fn)

    def after_forward(self, fn):
        """Call fn(layer_index) after each layer's forward."""
        self._net.after_forward_hooks.append(fn)

    def before_backward(self, fn):
        """Call fn(layer_index) before the backward of each layer that runs one."""
        self._net.before_backward_hooks.append(fn)

    def after_backward(self, fn):
        """Call fn(layer_index) after the backward of each layer that runs one."""
        self._net.after_backward_hooks.append(fn)

    # -- weights -------------------------------------------------------------------
    def copy_from(self, weights):
        """Load learned blobs from a .caffemodel, matching layers by name."""
        self._net.copy_from(weights)

    def share_with(self, other):
        """Make this net's learnable blobs the same memory as `other`'s (layers matched by name)."""
        self._net.share_weights_with(getattr(other, "_net", other))

    def save(self, filename):
        """Write the learned weights as a .caffemodel."""
        self._net.save(filename)

    def save_hdf5(self, filename):
        """Write the learned weights in Caffe's HDF5 layout (/data/<layer>/<i>)."""
        weights_hdf5.save(self._net, filename)

    def load_hdf5(self, filename):
        """Load learned weights written by save_hdf5 (or Caffe's Net::ToHDF5)."""
        weights_hdf5.load(self._net, filename)

    def to_proto(self):
        """NetParameter with the learned blobs (what save writes)."""
        return self._net.to_proto()
