"""IDX files (MNIST, Fashion-MNIST), plain or gzipped.

Layout: a big-endian uint32 magic (2051 images, 2049 labels), then the
sizes of each axis as big-endian uint32 (count, rows, cols / count), then
uint8 values.
"""
import gzip
import struct

import numpy

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
_AXES = {IMAGES_MAGIC: 3, LABELS_MAGIC: 1}
_NAMES = {IMAGES_MAGIC: "images", LABELS_MAGIC: "labels"}


class IdxError(Exception):
    """A malformed IDX file; the message names the file and what is wrong."""


def _read_bytes(path):
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise IdxError(f"{path}: no such file") from None
    except OSError as e:
        raise IdxError(f"{path}: cannot read: {e.strerror}") from None
    if raw[:2] == b"\x1f\x8b":   # gzip, as the datasets are distributed
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise IdxError(f"{path}: corrupt gzip data: {e}") from None
    return raw


def read_idx(path, expect_magic):
    """Read an IDX file and check its magic number; returns a uint8 array.

    Images come back as count x rows x cols, labels as count.
    """
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise IdxError(f"{path}: too short to be an IDX file ({len(raw)} bytes)")
    magic = struct.unpack(">I", raw[:4])[0]
    if magic != expect_magic:
        raise IdxError(f"{path}: wrong magic number {magic}, expected {expect_magic} "
                       f"(an IDX {_NAMES[expect_magic]} file)")
    axes = _AXES[magic]
    header = 4 + 4 * axes
    if len(raw) < header:
        raise IdxError(f"{path}: truncated header ({len(raw)} bytes, need {header})")
    shape = struct.unpack(f">{axes}I", raw[4:header])
    need = 1
    for d in shape:             # Python ints: int64 wraps on a hostile header (fuzzer-found)
        need *= d
    have = len(raw) - header
    if have < need:
        raise IdxError(f"{path}: truncated: header promises {' x '.join(map(str, shape))} = {need} "
                       f"bytes of data, file holds {have}")
    try:
        return numpy.frombuffer(raw, numpy.uint8, count=need, offset=header).reshape(shape)
    except ValueError:      # an empty axis beside axes too large to address (fuzzer-found)
        raise IdxError(f"{path}: impossible shape {' x '.join(map(str, shape))}") from None


def write_idx(path, array):
    """Write a uint8 array as IDX (3 axes: images, 1 axis: labels); used by tests and tools."""
    array = numpy.asarray(array, numpy.uint8)
    magic = {3: IMAGES_MAGIC, 1: LABELS_MAGIC}[array.ndim]
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.tobytes())
