"""Blobs to and from BlobProto; .caffemodel weights loading (layers matched by name)."""
import os

import numpy

from . import backend
from .blob import Blob
from .proto import caffe_pb2, io as proto_io
from .proto.errors import ProtoError


def blob_to_proto(blob, write_diff=False, double=None):
    """BlobProto of a Blob (or array) with `shape`, float or double data as its dtype."""
    is_blob = isinstance(blob, Blob)
    data = backend.to_host(blob.data if is_blob else blob)
    proto = caffe_pb2.BlobProto()
    proto.shape.dim.extend(int(d) for d in data.shape)
    double = data.dtype == numpy.float64 if double is None else double
    flat = numpy.ascontiguousarray(data).reshape(-1)
    if double:
        proto.double_data.extend(flat.astype(numpy.float64).tolist())
    else:
        proto.data.extend(flat.astype(numpy.float32).tolist())
    if write_diff and is_blob:
        diff = numpy.ascontiguousarray(backend.to_host(blob.diff)).reshape(-1)
        (proto.double_diff if double else proto.diff).extend(diff.tolist())
    return proto


def proto_shape(proto):
    """The shape a BlobProto declares: `shape.dim`, or legacy num/channels/height/width."""
    if proto.HasField("shape"):
        return tuple(int(d) for d in proto.shape.dim)
    legacy = (proto.num, proto.channels, proto.height, proto.width)
    if any(legacy):
        return tuple(int(d) for d in legacy)
    return (len(proto.double_data) or len(proto.data),)


def proto_to_array(proto, where="blob"):
    """numpy array of a BlobProto's data, checking the data fills the declared shape."""
    shape = proto_shape(proto)
    if any(d < 0 for d in shape):
        raise ProtoError("%s: negative dimension in shape %s" % (where, shape))
    count = 1
    for d in shape:
        count *= d
    values = proto.double_data if len(proto.double_data) else proto.data
    if len(values) != count:
        raise ProtoError("%s: shape %s needs %d values but the file holds %d"
                         % (where, shape, count, len(values)))
    dtype = numpy.float64 if len(proto.double_data) else numpy.float32
    return numpy.asarray(values, dtype=dtype).reshape(shape)


def _legacy_equivalent(a, b):
    """Caffe's rule: an old 4-D blob matches a newer shape with the same element layout."""
    def squeeze(shape):
        shape = list(shape)
        while len(shape) > 1 and shape[0] == 1:
            shape.pop(0)
        return tuple(shape)
    return squeeze(a) == squeeze(b)


def load_weights(net, source):
    """Copy blobs from a .caffemodel path or NetParameter into `net`, by layer name.

    A path ending in .h5 is read as Caffe's HDF5 weights (as Net::CopyTrainedLayersFrom does).
    """
    if isinstance(source, str) and source.endswith(".h5"):
        from . import weights_hdf5
        if not os.path.exists(source):
            raise ProtoError("%s: no such file" % source)
        return weights_hdf5.load(net, source)
    if isinstance(source, str):
        where = source
        param = proto_io.read_binary(source, caffe_pb2.NetParameter)
        from .proto.upgrade import upgrade_net
        upgrade_net(param)
    else:
        where, param = "<weights>", source
    by_name = dict(zip(net.layer_names, net.layers))
    for lp in param.layer:
        layer = by_name.get(lp.name)
        if layer is None or not len(lp.blobs):
            continue
        if len(lp.blobs) != len(layer.blobs):
            raise ProtoError("%s: layer %r has %d learned blobs in the file but %d in the net"
                             % (where, lp.name, len(lp.blobs), len(layer.blobs)))
        for j, (bp, blob) in enumerate(zip(lp.blobs, layer.blobs)):
            label = "%s: layer %r blob %d" % (where, lp.name, j)
            shape = proto_shape(bp)
            if shape != blob.shape and not (not bp.HasField("shape") and _legacy_equivalent(shape, blob.shape)):
                raise ProtoError("%s has shape %s but the net expects %s" % (label, shape, blob.shape))
            values = proto_to_array(bp, label)
            blob.data[...] = backend.to_device(values.reshape(blob.shape).astype(blob.dtype), blob.xp)
