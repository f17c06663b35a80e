"""Datum records and BlobProto mean files <-> numpy arrays.

A Datum holds one image: raw uint8 bytes in C x H x W order (colour as BGR),
or floats in `float_data`, or (with `encoded`) the bytes of a JPEG/PNG file.
"""
import math

import numpy

from ..proto import caffe_pb2
from . import image


class DatumError(Exception):
    """A record that is not a valid Datum; the message names the record."""


def array_to_datum(arr, label=0):
    """C x H x W (or H x W) array -> Datum: uint8 into `data`, anything else into `float_data`."""
    arr = numpy.asarray(arr)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"a Datum holds a C x H x W array, got shape {arr.shape}")
    datum = caffe_pb2.Datum(channels=arr.shape[0], height=arr.shape[1], width=arr.shape[2],
                            label=int(label))
    if arr.dtype == numpy.uint8:
        datum.data = numpy.ascontiguousarray(arr).tobytes()
    else:
        datum.float_data.extend(arr.astype(numpy.float32).ravel().tolist())
    return datum


def encoded_datum(payload, label=0):
    """A Datum holding the bytes of an encoded image file."""
    return caffe_pb2.Datum(data=payload, label=int(label), encoded=True)


def parse(value, key=None):
    """Serialized bytes -> Datum, with an error naming the record."""
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(value)
    except Exception as e:  # noqa: BLE001 - DecodeError, or whatever the protobuf runtime raises
        raise DatumError(f"record {record_name(key)}: not a Datum ({e})") from None
    return datum


def _dims(shape):
    return "x".join(str(d) for d in shape)


def record_name(key):
    if isinstance(key, bytes):
        key = key.decode("utf-8", "replace")
    return repr(key) if key is not None else "?"


def datum_to_array(datum, color=None, key=None):
    """Datum -> C x H x W array (uint8 for byte data, float32 for float_data).

    `color` (True/False/None) applies to encoded records: force 3 channels,
    force 1, or keep the file's own, as Caffe's force_color/force_gray.
    """
    if datum.encoded:
        try:
            return image.decode(datum.data, color=color, name=f"record {record_name(key)}")
        except image.ImageError as e:
            raise DatumError(str(e)) from None
    shape = (datum.channels, datum.height, datum.width)
    if min(shape) < 0:      # int32 fields; a negative one would reach reshape (fuzzer-found)
        raise DatumError(f"record {record_name(key)}: negative shape {_dims(shape)}")
    count = shape[0] * shape[1] * shape[2]
    if datum.data:
        if len(datum.data) != count:
            raise DatumError(f"record {record_name(key)}: {len(datum.data)} data bytes for shape {_dims(shape)}")
        return numpy.frombuffer(datum.data, numpy.uint8).reshape(shape)
    if len(datum.float_data) != count:
        raise DatumError(f"record {record_name(key)}: {len(datum.float_data)} float_data values "
                         f"for shape {_dims(shape)}")
    return numpy.asarray(datum.float_data, numpy.float32).reshape(shape)


# -- mean files (.binaryproto) ---------------------------------------------

def array_to_blobproto(arr):
    """Array -> BlobProto in the legacy num/channels/height/width form Caffe's mean files use."""
    arr = numpy.asarray(arr, numpy.float32)
    dims = (1,) * (4 - arr.ndim) + arr.shape
    if len(dims) != 4:
        raise ValueError(f"a mean blob has at most 4 axes, got {arr.shape}")
    blob = caffe_pb2.BlobProto(num=dims[0], channels=dims[1], height=dims[2], width=dims[3])
    blob.data.extend(arr.ravel().tolist())
    return blob


def blobproto_to_array(blob, name="blob"):
    """BlobProto -> float array shaped by `shape.dim`, or by the legacy 4 dims.

    A shape that does not match the values held is a ValueError starting
    with `name`; nothing is allocated beyond the values the file holds.
    """
    if blob.HasField("shape"):
        shape = tuple(int(d) for d in blob.shape.dim)
    else:
        shape = (blob.num, blob.channels, blob.height, blob.width)
    double = len(blob.double_data) > 0
    values = blob.double_data if double else blob.data
    if min(shape, default=0) < 0:
        raise ValueError(f"{name}: negative dimension in shape {_dims(shape)}")
    declared = math.prod(shape)   # Python ints: a hostile shape cannot wrap around
    if declared != len(values):
        raise ValueError(f"{name}: shape {_dims(shape)} declares {declared} values but the file "
                         f"holds {len(values)}")
    return numpy.asarray(values, numpy.float64 if double else numpy.float32).reshape(shape)


class MeanError(ValueError):
    """A mean file that cannot be used; the message starts with its path."""


def load_mean(path):
    """A mean.binaryproto file -> C x H x W float32 array.

    Raises MeanError (a ValueError) naming the file for a missing, truncated
    or foreign file, a shape that does not match the values it holds, or
    one that is not a single C x H x W image.
    """
    from ..proto.io import read_binary
    try:
        blob = read_binary(path, caffe_pb2.BlobProto)
    except ValueError as e:     # ProtoError: missing, unreadable, not a BlobProto
        raise MeanError(str(e)) from None
    if not len(blob.data) and not len(blob.double_data):
        raise MeanError(f"{path}: holds no values (not a mean .binaryproto; compute_image_mean writes one)")
    try:
        arr = blobproto_to_array(blob, path)
    except ValueError as e:
        raise MeanError(str(e)) from None
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise MeanError(f"{path}: a mean file holds one image, found num={arr.shape[0]}")
        arr = arr[0]
    if arr.ndim != 3:
        raise MeanError(f"{path}: a mean file holds C x H x W values, found shape {_dims(arr.shape)}")
    return arr.astype(numpy.float32)


def save_mean(path, mean):
    """Write a C x H x W mean as a legacy 1 x C x H x W BlobProto, atomically."""
    from ..proto.io import write_binary
    write_binary(path, array_to_blobproto(numpy.asarray(mean)[None]))
