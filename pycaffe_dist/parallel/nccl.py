"""NCCL communicator through CuPy: one worker process per GPU.

Imports safely without a GPU: `available` says whether it can be used (it
follows backend.cupy_available, which asks cupy for a real device). Rank 0
makes the NCCL unique id and hands it to the others over the loopback
communicator that the launcher gives every process group (chainermn does
the same over MPI). Buffers are cupy arrays; every call waits for its
stream, so the communicator behaves like the loopback one.
"""
import numpy

from .. import backend
from .comm import CommError, Communicator

try:  # pragma: no cover - needs a GPU
    if not backend.cupy_available:
        raise ImportError("no usable GPU")
    from cupy.cuda import nccl as _nccl
    available = True
except Exception:  # ImportError, or a cupy built without NCCL
    _nccl = None
    available = False

_ID_LENGTH = 128  # NCCL_UNIQUE_ID_BYTES


def _dtype_code(dtype):
    codes = {numpy.dtype(numpy.float32): _nccl.NCCL_FLOAT32,
             numpy.dtype(numpy.float64): _nccl.NCCL_FLOAT64,
             numpy.dtype(numpy.float16): _nccl.NCCL_FLOAT16,
             numpy.dtype(numpy.int32): _nccl.NCCL_INT32,
             numpy.dtype(numpy.int64): _nccl.NCCL_INT64,
             numpy.dtype(numpy.uint8): _nccl.NCCL_UINT8}
    try:
        return codes[numpy.dtype(dtype)]
    except KeyError:
        raise TypeError("NCCL cannot reduce %s buffers" % numpy.dtype(dtype)) from None


class NcclComm(Communicator):  # pragma: no cover - needs a GPU
    """One GPU's communicator; `host` is a Communicator over the same ranks used to bootstrap."""

    def __init__(self, host, device):
        if not available:
            raise CommError("NCCL needs cupy with a usable GPU; this machine has none")
        self.rank, self.size = host.rank, host.size
        self.device = int(device)
        backend.cupy.cuda.Device(self.device).use()
        uid = numpy.zeros(_ID_LENGTH, numpy.int64)
        if self.rank == 0:
            made = _nccl.get_unique_id()
            uid[:len(made)] = made
        host.bcast(uid, 0)
        self._comm = _nccl.NcclCommunicator(self.size, tuple(int(v) for v in uid), self.rank)

    def _args(self, buf):
        if not isinstance(buf, backend.cupy.ndarray) or not buf.flags.c_contiguous:
            raise TypeError("NCCL communicators take contiguous cupy arrays, got %r" % type(buf))
        return buf.data.ptr, buf.size, _dtype_code(buf.dtype)

    def _stream(self):
        return backend.cupy.cuda.get_current_stream()

    def _finish(self, stream):
        stream.synchronize()

    def allreduce(self, buf):
        ptr, n, code = self._args(buf)
        stream = self._stream()
        self._comm.allReduce(ptr, ptr, n, code, _nccl.NCCL_SUM, stream.ptr)
        self._finish(stream)

    def reduce(self, buf, root=0):
        ptr, n, code = self._args(buf)
        stream = self._stream()
        self._comm.reduce(ptr, ptr, n, code, _nccl.NCCL_SUM, root, stream.ptr)
        self._finish(stream)

    def bcast(self, buf, root=0):
        ptr, n, code = self._args(buf)
        stream = self._stream()
        self._comm.bcast(ptr, n, code, root, stream.ptr)
        self._finish(stream)

    def barrier(self):
        token = backend.cupy.zeros(1, numpy.float32)
        self.allreduce(token)

    def send(self, buf, dest):
        ptr, n, code = self._args(buf)
        stream = self._stream()
        self._comm.send(ptr, n, code, dest, stream.ptr)
        self._finish(stream)

    def recv(self, buf, source):
        ptr, n, code = self._args(buf)
        stream = self._stream()
        self._comm.recv(ptr, n, code, source, stream.ptr)
        self._finish(stream)

    def close(self):
        if getattr(self, "_comm", None) is not None:
            self._comm.destroy()
            self._comm = None
