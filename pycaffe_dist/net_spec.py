"""NetSpec: write a net in Python and get its NetParameter (pycaffe's caffe.net_spec).

    from pycaffe_dist import NetSpec, layers as L, params as P
    n = NetSpec()
    n.data, n.label = L.Data(source="train_lmdb", backend=P.Data.LMDB, batch_size=64, ntop=2,
                             transform_param=dict(scale=1. / 255))
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    n.pool1 = L.Pooling(n.relu1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    text = str(n.to_proto())

A layer is named after the attribute its (first) top is assigned to; tops
never assigned get `<Type><k>` names. Keyword arguments of a layer call:
`ntop` (how many tops; 0 returns the layer itself), `in_place` (top is the
bottom), `name` (the layer's name); a field of the layer type's own
`<type>_param` message goes there; otherwise it is a LayerParameter field
(`param`, `include`, `loss_weight`, `transform_param`, ...). Lists fill
repeated fields, dicts fill messages.
"""
import sys
from collections import Counter, OrderedDict

from google.protobuf.message import Message

from .proto import caffe_pb2

# Types that read another type's parameter message.
_SHARED_PARAMS = {"Deconvolution": "convolution_param", "Im2col": "convolution_param"}


def _param_field_names():
    """Layer type -> its LayerParameter field: 'Convolution' -> 'convolution_param'."""
    table = {}
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        message = field.message_type
        if field.name.endswith("_param") and message is not None and message.name.endswith("Parameter"):
            table[message.name[:-len("Parameter")]] = field.name
    table.update(_SHARED_PARAMS)
    return table


_PARAM_FIELDS = _param_field_names()


def _has_field(message, name):
    return name in message.DESCRIPTOR.fields_by_name


def assign_proto(message, name, value):
    """Set field `name` of `message` from a Python value: scalars, messages, dicts, lists."""
    if not _has_field(message, name):
        raise AttributeError("%s has no field %r" % (message.DESCRIPTOR.name, name))
    field = getattr(message, name)
    repeated = message.DESCRIPTOR.fields_by_name[name].label == \
        message.DESCRIPTOR.fields_by_name[name].LABEL_REPEATED
    if repeated:
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, dict):
                _fill(field.add(), item)
            elif isinstance(item, Message):
                field.add().CopyFrom(item)
            else:
                field.append(item)
    elif isinstance(value, dict):
        _fill(field, value)
    elif isinstance(value, Message):
        field.CopyFrom(value)
    else:
        setattr(message, name, value)


def _fill(message, values):
    for key, value in values.items():
        assign_proto(message, key, value)


class Top:
    """One output of a layer call; pass it to other layers as a bottom."""

    def __init__(self, fn, n):
        self.fn = fn
        self.n = n

    def to_proto(self):
        """NetParameter of this top and every layer it depends on."""
        return to_proto(self)

    def _to_proto(self, layers, names, autonames):
        self.fn._to_proto(layers, names, autonames)


class Function:
    """One layer call: its type, bottoms (Tops) and parameters."""

    def __init__(self, type_name, inputs, params):
        for i, bottom in enumerate(inputs):
            if not isinstance(bottom, Top):
                raise TypeError("%s bottom %d is not a Top (it is %s); pass the result of another "
                                "layer call" % (type_name, i, type(bottom).__name__))
        params = dict(params)
        self.type_name = type_name
        self.inputs = tuple(inputs)
        self.ntop = params.pop("ntop", 1)
        self.in_place = params.pop("in_place", False)
        self.params = params
        self.tops = tuple(Top(self, i) for i in range(self.ntop))

    @staticmethod
    def _top_name(top, names, autonames):
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = top.fn.type_name + str(autonames[top.fn.type_name])
        return names[top]

    def _layer_name(self, names, autonames):
        if self not in names:
            if self.tops:
                names[self] = self._top_name(self.tops[0], names, autonames)
            else:
                autonames[self.type_name] += 1
                names[self] = self.type_name + str(autonames[self.type_name])
        return names[self]

    def _set(self, layer, key, value):
        own = _PARAM_FIELDS.get(self.type_name)
        if not key.endswith("param") and own and _has_field(getattr(layer, own), key):
            assign_proto(getattr(layer, own), key, value)
        elif _has_field(layer, key):
            assign_proto(layer, key, value)
        else:
            where = "%s or LayerParameter" % own if own else "LayerParameter"
            raise AttributeError("L.%s: no field %r in %s" % (self.type_name, key, where))

    def _to_proto(self, layers, names, autonames):
        if self in layers:
            return
        bottoms = []
        for top in self.inputs:
            top.fn._to_proto(layers, names, autonames)
            bottoms.append(layers[top.fn].top[top.n])
        layer = caffe_pb2.LayerParameter(type=self.type_name)
        layer.bottom.extend(bottoms)
        if self.in_place:
            layer.top.extend(bottoms)
        else:
            layer.top.extend(self._top_name(top, names, autonames) for top in self.tops)
        layer.name = self._layer_name(names, autonames)
        for key, value in self.params.items():
            self._set(layer, key, value)
        layers[self] = layer


class NetSpec:
    """Tops assigned as attributes (`n.conv1 = L.Convolution(...)`); `to_proto()` makes the net."""

    def __init__(self):
        object.__setattr__(self, "tops", OrderedDict())

    def __setattr__(self, name, value):
        self.tops[name] = value

    def __getattr__(self, name):
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError("NetSpec has no top %r" % name) from None

    def __setitem__(self, name, value):
        self.tops[name] = value

    def __getitem__(self, name):
        return self.tops[name]

    def __delitem__(self, name):
        del self.tops[name]

    def keys(self):
        return list(self.tops.keys())

    def vals(self):
        return list(self.tops.values())

    def to_proto(self):
        """The NetParameter: every assigned top and the layers it depends on, in call order."""
        names = {top: name for name, top in self.tops.items()}
        autonames = Counter()
        layers = OrderedDict()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


def to_proto(*tops):
    """NetParameter of the given tops and every layer they depend on (automatic names)."""
    layers = OrderedDict()
    autonames = Counter()
    for top in tops:
        top._to_proto(layers, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


class Layers:
    """`L.<Type>(*bottoms, **params)` makes a layer of any registered or unregistered type."""

    def __getattr__(self, type_name):
        if type_name.startswith("__"):
            raise AttributeError(type_name)
        # pycaffe names this object `caffe.layers`, which hides the layer
        # registry package of the same name from `from pycaffe_dist import
        # layers`; its contents (register, LAYERS, submodules) stay reachable
        # here. Layer types are CamelCase and never collide with them.
        registry = sys.modules.get(__name__.rpartition(".")[0] + ".layers")
        if registry is not None and type_name in vars(registry):
            return vars(registry)[type_name]

        def layer(*bottoms, **params):
            fn = Function(type_name, bottoms, params)
            if fn.ntop == 0:
                return fn
            if fn.ntop == 1:
                return fn.tops[0]
            return fn.tops
        layer.__name__ = type_name
        return layer


class _Enums:
    def __init__(self, message):
        self._message = message

    def __getattr__(self, name):
        return getattr(self._message, name)


class Parameters:
    """`P.Pooling.MAX`: the enum values of the `<Name>Parameter` messages."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return _Enums(getattr(caffe_pb2, name + "Parameter"))
        except AttributeError:
            raise AttributeError("caffe_pb2 has no message %sParameter" % name) from None


layers = Layers()
params = Parameters()
