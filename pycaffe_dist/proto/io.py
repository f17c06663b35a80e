"""Reading and writing Caffe's text and binary files, with errors users can act on."""
import os
import tempfile

from google.protobuf import message as _message
from google.protobuf import text_format

from . import caffe_pb2
from .errors import ProtoError
from .source import SourceMap
from .upgrade import upgrade_net, upgrade_solver


def _read_text(path):
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ProtoError("%s: no such file" % path) from None
    except IsADirectoryError:
        raise ProtoError("%s: is a directory, expected a prototxt file" % path) from None
    except OSError as e:
        raise ProtoError("%s: cannot read: %s" % (path, e.strerror)) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ProtoError("%s:%d: not UTF-8 text (is this a binary file?)" % (path, line)) from None


def read_text(path):
    """The UTF-8 text of a prototxt file; errors name the file (and line)."""
    return _read_text(path)


def parse_text(text, message, filename="<string>"):
    """Parse protobuf text into `message`, raising ProtoError with file:line:col."""
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        line, col = e.GetLine(), e.GetColumn()
        detail = str(e)
        # The library prefixes "line:col : "; keep only the message.
        prefix = "%s:%s : " % (line, col)
        if detail.startswith(prefix):
            detail = detail[len(prefix):]
        where = "%s:%s:%s" % (filename, line, col) if line else filename
        raise ProtoError("%s: %s" % (where, detail)) from None
    return message


def parse_net_text(text, filename="<string>"):
    """NetParameter from prototxt text, upgraded from legacy formats; with its SourceMap."""
    param = parse_text(text, caffe_pb2.NetParameter(), filename)
    source = SourceMap(filename, text)
    upgrade_net(param, source)
    return param, source


def read_net(path):
    """NetParameter and SourceMap from a net prototxt file."""
    return parse_net_text(_read_text(path), path)


def read_solver(path):
    """SolverParameter from a solver prototxt file, upgraded from the legacy solver_type enum."""
    text = _read_text(path)
    param = parse_text(text, caffe_pb2.SolverParameter(), path)
    upgrade_solver(param, SourceMap(path, text))
    return param


def read_binary(path, message_class):
    """A binary protobuf file (.caffemodel, .solverstate, .binaryproto)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ProtoError("%s: no such file" % path) from None
    except OSError as e:
        raise ProtoError("%s: cannot read: %s" % (path, e.strerror)) from None
    message = message_class()
    try:
        message.ParseFromString(raw)
    except (_message.DecodeError, RuntimeError, ValueError) as e:
        raise ProtoError("%s: not a valid %s file (truncated or corrupt: %s)"
                         % (path, message_class.DESCRIPTOR.name, e)) from None
    return message


def write_atomic(path, payload):
    """Write bytes so that `path` holds either the old file or the whole new one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and e.filename is None:
            e.filename = path     # a full disk fails in write(), which names no file
        raise


def write_binary(path, message):
    write_atomic(path, message.SerializeToString())


def write_text(path, message):
    write_atomic(path, text_format.MessageToString(message).encode("utf-8"))
