"""Property-based fuzzing of the readers: any input gives the reader's own error or a result.

`make test` runs a few hundred inputs per reader; `make fuzz` (HYPOTHESIS_PROFILE=fuzz)
runs FUZZ_EXAMPLES (default 100,000) per test.
"""
import gzip
import os
import struct

import numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pycaffe_dist.data import datum as datum_io
from pycaffe_dist.data import idx
from pycaffe_dist.proto import caffe_pb2, io
from pycaffe_dist.proto.errors import ProtoError

from .test_crash import NET

FUZZ = os.environ.get("HYPOTHESIS_PROFILE") == "fuzz"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", 100_000)) if FUZZ else 1000
fuzz = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))

VALID_NET = (NET % 6) + '''
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 } }
layers { name: "old" type: RELU bottom: "conv" top: "conv" }
input: "extra" input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 4
'''


def mutated(valid, alphabet):
    """Bytes or text of a valid file with slices deleted, replaced, duplicated or cut."""
    @st.composite
    def build(draw):
        out = valid
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(out)))
            j = draw(st.integers(i, min(len(out), i + 16)))
            kind = draw(st.sampled_from(["delete", "insert", "duplicate", "truncate"]))
            if kind == "delete":
                out = out[:i] + out[j:]
            elif kind == "insert":
                out = out[:i] + draw(alphabet) + out[j:]
            elif kind == "duplicate":
                out = out[:j] + out[i:j] + out[j:]
            else:
                out = out[:i]
        return out
    return build()


TOKENS = st.sampled_from(['{', '}', ':', '"', '-', '2000000000', '-1', '1e999', 'nan', 'layer', 'shape',
                          'dim', 'num_output', '#', '\n', '\\', "'", 'type', 'V1', '0x7f'])
SOME_TEXT = st.one_of(st.text(max_size=8), st.lists(TOKENS, max_size=4).map(" ".join))


def check_net_text(text):
    try:
        io.parse_net_text(text, "fuzz.prototxt")
    except ProtoError:
        pass


@fuzz
@given(st.text(max_size=400))
def test_prototxt_random_text(text):
    check_net_text(text)


@fuzz
@given(mutated(VALID_NET, SOME_TEXT))
def test_prototxt_mutated_net(text):
    check_net_text(text)


def valid_binaries():
    net = caffe_pb2.NetParameter()
    io.parse_text(NET % 6, net)
    blob = net.layer[1].blobs.add()
    blob.shape.dim.extend([3, 6])
    blob.data.extend(numpy.linspace(-1, 1, 18).tolist())
    state = caffe_pb2.SolverState(iter=7, learned_net="x.caffemodel")
    state.history.add().CopyFrom(blob)
    return [m.SerializeToString() for m in (net, state, blob)]


BINARIES = valid_binaries()
SOME_BYTES = st.binary(max_size=12)
MESSAGES = st.sampled_from([caffe_pb2.NetParameter, caffe_pb2.SolverState, caffe_pb2.BlobProto])


def check_binary(tmp_path_factory, payload, message_class):
    path = str(tmp_path_factory.getbasetemp() / "fuzz.bin")
    with open(path, "wb") as f:
        f.write(payload)
    try:
        io.read_binary(path, message_class)
    except ProtoError:
        pass


@fuzz
@given(payload=st.one_of(st.binary(max_size=400), st.sampled_from(BINARIES).flatmap(
    lambda b: mutated(b, SOME_BYTES))), message_class=MESSAGES)
def test_binary_protobuf(tmp_path_factory, payload, message_class):
    check_binary(tmp_path_factory, payload, message_class)


VALID_DATUM = [datum_io.array_to_datum(numpy.arange(24, dtype=numpy.uint8).reshape(2, 3, 4), 3).SerializeToString(),
               datum_io.array_to_datum(numpy.ones((1, 2, 2), numpy.float32), 1).SerializeToString()]


@fuzz
@given(st.one_of(st.binary(max_size=200), st.sampled_from(VALID_DATUM).flatmap(lambda b: mutated(b, SOME_BYTES)),
                 st.builds(lambda c, h, w, data: caffe_pb2.Datum(channels=c, height=h, width=w,
                                                                 data=data).SerializeToString(),
                           st.integers(-2 ** 31, 2 ** 31 - 1), st.integers(-2 ** 31, 2 ** 31 - 1),
                           st.integers(-2 ** 31, 2 ** 31 - 1), st.binary(max_size=8))))
def test_datum(value):
    try:
        datum_io.datum_to_array(datum_io.parse(value, b"key"), key=b"key")
    except datum_io.DatumError:
        pass


def idx_file(magic, dims, data):
    return struct.pack(">I", magic) + struct.pack(">%dI" % len(dims), *dims) + data


VALID_IDX = [idx_file(idx.IMAGES_MAGIC, (2, 3, 4), bytes(range(24))), idx_file(idx.LABELS_MAGIC, (5,), bytes(5))]


@fuzz
@given(raw=st.one_of(st.binary(max_size=64), st.sampled_from(VALID_IDX).flatmap(lambda b: mutated(b, SOME_BYTES)),
                     st.builds(idx_file, st.sampled_from([idx.IMAGES_MAGIC, idx.LABELS_MAGIC]),
                               st.lists(st.integers(0, 2 ** 32 - 1), min_size=1, max_size=3),
                               st.binary(max_size=16))),
       zipped=st.booleans(), magic=st.sampled_from([idx.IMAGES_MAGIC, idx.LABELS_MAGIC]))
def test_idx(tmp_path_factory, raw, zipped, magic):
    path = str(tmp_path_factory.getbasetemp() / "fuzz.idx")
    with open(path, "wb") as f:
        f.write(gzip.compress(raw, mtime=0)[:len(raw) + 20 if zipped else None] if zipped else raw)
    try:
        idx.read_idx(path, magic)
    except idx.IdxError:
        pass


def blob_bytes(legacy, dims, values, double):
    blob = caffe_pb2.BlobProto(num=legacy[0], channels=legacy[1], height=legacy[2], width=legacy[3])
    if dims is not None:
        blob.shape.dim.extend(dims)
    (blob.double_data if double else blob.data).extend(values)
    return blob.SerializeToString()


VALID_MEAN = blob_bytes((1, 2, 2, 3), None, [float(v) for v in range(12)], False)
INT32 = st.integers(-2 ** 31, 2 ** 31 - 1)


@fuzz
@given(raw=st.one_of(
    st.builds(blob_bytes, st.tuples(INT32, INT32, INT32, INT32),
              st.none() | st.lists(st.integers(-2 ** 63, 2 ** 63 - 1), max_size=5),
              st.lists(st.floats(width=32), max_size=16), st.booleans()),
    st.builds(blob_bytes, st.tuples(*[st.integers(0, 4)] * 4), st.none(),
              st.lists(st.just(1.0), max_size=48), st.booleans()),
    mutated(VALID_MEAN, SOME_BYTES), st.binary(max_size=64)))
def test_mean_file(tmp_path_factory, raw):
    path = str(tmp_path_factory.getbasetemp() / "fuzz_mean.binaryproto")
    with open(path, "wb") as f:
        f.write(raw)
    try:
        mean = datum_io.load_mean(path)
    except datum_io.MeanError as e:
        assert str(e).startswith(path + ": ")
    else:
        assert mean.ndim == 3 and mean.dtype == numpy.float32
