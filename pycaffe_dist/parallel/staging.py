"""GPU buffers through host memory, for an MPI that reads host memory only.

pip's MPICH is not CUDA-aware: it cannot read a CuPy array's device
pointer. So the MPI communicator copies a device buffer into a host buffer
before a call and back after it. The host buffers are page-locked (pinned)
when CuPy is there, so the copies run at full PCIe speed, and they are
pooled: allocated the first time a size is needed and reused afterwards.

The helper is written for any array module: a buffer is "on the device"
when it is not a numpy array, and `HostStaging(stage_numpy=True)` treats
numpy arrays as device arrays too, so the staging path can run (and be
tested) on a machine with no GPU.
"""
import contextlib

import numpy

from .. import backend


def _allocate(nbytes):
    """A writable host buffer of `nbytes`: pinned memory when CuPy has a GPU, else plain memory."""
    if backend.cupy_available:
        memory = backend.cupy.cuda.alloc_pinned_memory(nbytes)
        return numpy.frombuffer(memory, numpy.uint8, nbytes)
    return numpy.empty(nbytes, numpy.uint8)


def download(buf, host):
    """Copy device array `buf` into the 1-D host array `host` (same dtype and size)."""
    if isinstance(buf, numpy.ndarray):
        numpy.copyto(host, buf.reshape(-1))
    else:
        buf.reshape(-1).get(out=host)


def upload(host, buf):
    """Copy the 1-D host array `host` into device array `buf`."""
    if isinstance(buf, numpy.ndarray):
        numpy.copyto(buf.reshape(-1), host)
    else:
        buf.reshape(-1).set(host)


class HostStaging:
    """A pool of host buffers that device buffers are copied through.

    Args:
        stage_numpy: stage numpy arrays too (what a test without a GPU does).
        allocate: callable(nbytes) -> 1-D uint8 host array (default: pinned when possible).

    `allocations` counts the host buffers made so far: after the first
    iterations of a training run it stops growing.
    """

    def __init__(self, stage_numpy=False, allocate=_allocate):
        self.stage_numpy = stage_numpy
        self._allocate = allocate
        self._free = {}         # nbytes -> host buffers not in use
        self._leased = {}       # id(host array) -> (host array, its buffer)
        self.allocations = 0

    def needed(self, buf):
        """Whether `buf` must go through host memory."""
        return self.stage_numpy or not isinstance(buf, numpy.ndarray)

    def lease(self, buf, copy=True):
        """A 1-D host array of `buf`'s dtype and size (holding its values when `copy`); give it back with release()."""
        if not buf.flags.c_contiguous:
            raise TypeError("MPI buffers must be contiguous; got a strided array of shape %s" % (buf.shape,))
        dtype = numpy.dtype(buf.dtype)
        nbytes = buf.size * dtype.itemsize
        free = self._free.get(max(nbytes, 1))
        raw = free.pop() if free else None
        if raw is None:
            raw = self._allocate(max(nbytes, 1))
            self.allocations += 1
        host = raw[:nbytes].view(dtype)
        self._leased[id(host)] = (host, raw)
        if copy:
            download(buf, host)
        return host

    def release(self, host):
        """Put a leased host array back in the pool."""
        _, raw = self._leased.pop(id(host))
        self._free.setdefault(raw.size, []).append(raw)

    @contextlib.contextmanager
    def on_host(self, buf, copy_in=True, copy_out=True):
        """`with staging.on_host(buf) as host:` a host array for the call, copied back into `buf` after it.

        A buffer that needs no staging is handed through as it is.
        """
        if not self.needed(buf):
            yield buf
            return
        host = self.lease(buf, copy=copy_in)
        try:
            yield host
            if copy_out:
                upload(host, buf)
        finally:
            self.release(host)
