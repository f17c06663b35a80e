"""In-memory upgrades of legacy Caffe files (pure rewrites of the messages).

* V1 nets (`layers { type: CONVOLUTION blobs_lr: 1 weight_decay: 1 }`) become
  `layer { type: "Convolution" param { lr_mult: 1 decay_mult: 1 } }`.
* V1 Data, ImageData and WindowData layers move scale, mean_file, crop_size
  and mirror from their own parameter into `transform_param`.
* Net-level `input:` with `input_dim:` / `input_shape` becomes an Input layer;
  a bare `input:` (old .caffemodel files) is dropped.
* BatchNorm layers declaring three `param`s (the old definition) get
  lr_mult 0 and decay_mult 0 on each: the statistics are never learned.
* Solvers with the `solver_type` enum get the string `type`.
"""
from . import caffe_pb2
from .errors import ProtoError

V1_TYPES = {
    "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DATA": "Data", "DECONVOLUTION": "Deconvolution", "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise",
    "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice",
    "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

SOLVER_TYPES = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad",
                "RMSPROP": "RMSProp", "ADADELTA": "AdaDelta", "ADAM": "Adam"}

# Fields V1 and current layers share by name and type; copied as they are.
_SHARED = [f.name for f in caffe_pb2.V1LayerParameter.DESCRIPTOR.fields
           if f.name in caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
           and f.name not in ("type", "param", "blob_share_mode")]


class UpgradeError(ProtoError):
    pass


# V1 data layers whose parameter carried the transformation fields.
_TRANSFORMED = {"DATA": "data_param", "IMAGE_DATA": "image_data_param", "WINDOW_DATA": "window_data_param"}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")


def _upgrade_data_transform(v1):
    """Move V1 data layers' scale/mean_file/crop_size/mirror into transform_param."""
    field = _TRANSFORMED.get(caffe_pb2.V1LayerParameter.LayerType.Name(v1.type))
    if field is None or not v1.HasField(field):
        return
    params = getattr(v1, field)
    for name in _TRANSFORM_FIELDS:
        if params.HasField(name):
            setattr(v1.transform_param, name, getattr(params, name))
            params.ClearField(name)


def _upgrade_v1_layer(v1, where):
    v1 = caffe_pb2.V1LayerParameter.FromString(v1.SerializeToString())
    _upgrade_data_transform(v1)
    layer = caffe_pb2.LayerParameter()
    for name in _SHARED:
        field = caffe_pb2.V1LayerParameter.DESCRIPTOR.fields_by_name[name]
        if field.label == field.LABEL_REPEATED:
            getattr(layer, name).extend(getattr(v1, name))
        elif v1.HasField(name):
            if field.message_type is not None:
                getattr(layer, name).CopyFrom(getattr(v1, name))
            else:
                setattr(layer, name, getattr(v1, name))
    if v1.HasField("layer"):
        raise UpgradeError("%s: layer %r uses the V0 format (layers { layer { ... } }), "
                           "which is not supported; upgrade it with Caffe 1.0 first" % (where, v1.name))
    type_name = caffe_pb2.V1LayerParameter.LayerType.Name(v1.type)
    if type_name == "NONE":
        raise UpgradeError("%s: V1 layer %r has no type" % (where, v1.name))
    layer.type = V1_TYPES[type_name]
    count = max(len(v1.param), len(v1.blobs_lr), len(v1.weight_decay), len(v1.blob_share_mode))
    for i in range(count):
        spec = layer.param.add()
        if i < len(v1.param) and v1.param[i]:
            spec.name = v1.param[i]
        if i < len(v1.blob_share_mode):
            spec.share_mode = v1.blob_share_mode[i]
        if i < len(v1.blobs_lr):
            spec.lr_mult = v1.blobs_lr[i]
        if i < len(v1.weight_decay):
            spec.decay_mult = v1.weight_decay[i]
    return layer


def _upgrade_inputs(net, where):
    if not net.input:
        return
    if net.input_dim and net.input_shape:
        raise UpgradeError("%s: use either input_dim or input_shape, not both" % where)
    shapes = []
    if net.input_dim:
        if len(net.input_dim) != 4 * len(net.input):
            raise UpgradeError("%s: %d inputs need %d input_dim values, got %d"
                               % (where, len(net.input), 4 * len(net.input), len(net.input_dim)))
        for i in range(len(net.input)):
            shapes.append(list(net.input_dim[4 * i:4 * i + 4]))
    elif net.input_shape:
        if len(net.input_shape) not in (1, len(net.input)):
            raise UpgradeError("%s: %d inputs but %d input_shape entries"
                               % (where, len(net.input), len(net.input_shape)))
        shapes = [list(s.dim) for s in net.input_shape]
    else:
        # Caffe's rule: inputs without shapes come from old .caffemodel
        # files, where dropping them is all the upgrade there is.
        del net.input[:]
        return
    layer = caffe_pb2.LayerParameter(name="input", type="Input")
    layer.top.extend(net.input)
    for shape in shapes:
        layer.input_param.shape.add().dim.extend(shape)
    existing = list(net.layer)
    del net.layer[:]
    net.layer.extend([layer] + existing)
    del net.input[:]
    del net.input_dim[:]
    del net.input_shape[:]


def upgrade_net(net, source=None):
    """Rewrite a NetParameter in place to the current format. Returns True if anything changed."""
    where = source.filename if source is not None else "<net>"
    changed = False
    if len(net.layers):
        if len(net.layer):
            raise UpgradeError("%s: mixes V1 `layers` and current `layer` blocks" % where)
        for i, v1 in enumerate(net.layers):
            spot = source.layer_index(i) if source is not None else where
            net.layer.add().CopyFrom(_upgrade_v1_layer(v1, spot))
        del net.layers[:]
        changed = True
    if len(net.input):
        _upgrade_inputs(net, where)
        changed = True
    for layer in net.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            if any(spec.lr_mult != 0 or spec.decay_mult != 0 for spec in layer.param):
                for spec in layer.param:
                    spec.lr_mult = spec.decay_mult = 0
                changed = True
    return changed


def upgrade_solver(solver, source=None):
    """Map the legacy solver_type enum onto the string `type`."""
    if not solver.HasField("solver_type"):
        return False
    legacy = SOLVER_TYPES[caffe_pb2.SolverParameter.SolverType.Name(solver.solver_type)]
    if solver.HasField("type") and solver.type != legacy:
        where = source.field("type") if source is not None else "<solver>"
        raise UpgradeError("%s: solver_type %s conflicts with type %r" % (where, legacy, solver.type))
    solver.type = legacy
    solver.ClearField("solver_type")
    return True
