"""The asynchronous prefetch pipeline: reader -> decode/transform pool -> bounded queue.

One reader thread pulls the raw records of each batch from a *source* (an
LMDB cursor, a list of image files) in order, hands the batch to a pool of
decode/transform workers, and queues the pending result. The queue holds at
most `prefetch` batches (Caffe's `data_param.prefetch`), so memory stays
bounded while the solver runs ahead of nothing. Batches come out in the
order they were read whatever the worker count, and every random choice is
keyed by record offset (see transformer.py), so a seed fixes the output.

Workers are threads by default: Pillow decodes and numpy transforms release
the GIL, and threads share memory for free. A process pool is there for
transforms that hold the GIL; bench/bench_data.py compares the two.

In GPU mode the arrays of each ready batch are also copied to the device
where it is decoded, on a CUDA stream of that thread's own (_DeviceCopy), so
the copy overlaps the training step's kernels and the step finds its batch
on the GPU.

The consumer's waits are measured: `wait_seconds_last` for the latest batch,
`wait_seconds_total` over all of them. `close()` stops every thread and
process; all threads are daemons, so even a crash that skips close() cannot
keep the interpreter alive, and a finalizer closes a pipeline nobody holds.
"""
import concurrent.futures
import copy
import multiprocessing
import queue
import threading
import time
import weakref

import numpy

from .. import backend

_POLL = 0.1  # seconds between checks for a stop request while blocked


class PipelineError(RuntimeError):
    """The pipeline was used after close(), or its reader died."""


class _InlinePool:
    """No workers: the reader decodes each batch itself.

    For raw records decoding costs less than handing a batch to another
    thread and waking it, so one thread doing both is the fastest pool.
    """

    @staticmethod
    def submit(fn, *args):
        future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            future.set_exception(e)
        return future

    def shutdown(self):
        pass

    def alive(self):
        return []


class _ThreadPool:
    """A minimal pool of daemon threads returning concurrent.futures.Future objects."""

    def __init__(self, workers, name):
        self._jobs = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._run, args=(self._jobs,), daemon=True,
                                          name=f"{name}-decode-{i}") for i in range(workers)]
        for t in self._threads:
            t.start()

    @staticmethod
    def _run(jobs):
        while True:
            job = jobs.get()
            if job is None:
                return
            future, fn, args = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
                    future.set_exception(e)

    def submit(self, fn, *args):
        future = concurrent.futures.Future()
        self._jobs.put((future, fn, args))
        return future

    def shutdown(self):
        for _ in self._threads:
            self._jobs.put(None)
        for t in self._threads:
            t.join(timeout=5)

    def alive(self):
        return [t for t in self._threads if t.is_alive()]


# In a decode process: the decode function, sent once when the process starts
# rather than pickled again with every batch (a mean file can be megabytes).
_installed_decode = None


def _install(decode):
    global _installed_decode
    _installed_decode = decode


def _run_installed(records):
    return _installed_decode(records)


class _DeviceCopy:
    """batch -> the batch with its numpy arrays on the GPU, copied on a
    non-blocking stream per thread and waited for there (not by the step)."""

    def __init__(self, device_id):
        self.device_id = device_id
        self.local = threading.local()

    def __call__(self, batch):
        cupy = backend.cupy
        with cupy.cuda.Device(self.device_id):
            stream = getattr(self.local, "stream", None)
            if stream is None:
                stream = self.local.stream = cupy.cuda.Stream(non_blocking=True)
            with stream:
                batch = self._moved(cupy, batch)
            stream.synchronize()
        return batch

    @staticmethod
    def _moved(cupy, batch):
        """The batch with its numpy arrays (the batch itself, tuple items or
        attributes) replaced by device copies; other values kept."""
        if isinstance(batch, numpy.ndarray):
            return cupy.asarray(batch)
        if isinstance(batch, tuple):
            items = [cupy.asarray(a) if isinstance(a, numpy.ndarray) else a for a in batch]
            return batch._make(items) if hasattr(batch, "_make") else tuple(items)
        if hasattr(batch, "__dict__"):
            batch = copy.copy(batch)
            for name, value in vars(batch).items():
                if isinstance(value, numpy.ndarray):
                    setattr(batch, name, cupy.asarray(value))
        return batch


def _then(future, fn):
    """A future of fn(future's result), computed by whichever thread completes `future`."""
    chained = concurrent.futures.Future()

    def done(f):
        try:
            chained.set_result(fn(f.result()))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            chained.set_exception(e)
    future.add_done_callback(done)
    return chained


class _Shared:
    """Everything the reader thread touches; kept apart from the Pipeline object
    so that the threads do not keep the Pipeline alive and its finalizer can run."""

    def __init__(self, source, decode, batch_size, prefetch, pool):
        self.source = source
        self.decode = decode
        self.batch_size = batch_size
        self.ready = queue.Queue(maxsize=max(1, prefetch))
        self.stop = threading.Event()
        self.pool = pool
        self.to_device = None

    def read_loop(self):
        try:
            while not self.stop.is_set():
                records = self.source.read(self.batch_size)
                future = self.pool.submit(self.decode, records)
                if self.to_device is not None:
                    future = _then(future, self.to_device)
                self._put((future, self.source.state()))
        except BaseException as e:  # noqa: BLE001 - the consumer re-raises it at its next batch
            failed = concurrent.futures.Future()
            failed.set_exception(e)
            self._put((failed, None))
        finally:
            self.source.close()

    def _put(self, item):
        while not self.stop.is_set():
            try:
                self.ready.put(item, timeout=_POLL)
                return
            except queue.Full:
                continue

    def shutdown(self, reader):
        self.stop.set()
        # Empty the queue so a reader blocked on put() sees the stop flag.
        while reader.is_alive():
            try:
                while True:
                    self.ready.get_nowait()
            except queue.Empty:
                pass
            reader.join(timeout=_POLL)
        if isinstance(self.pool, (_ThreadPool, _InlinePool)):
            self.pool.shutdown()
        else:
            self.pool.shutdown(wait=True, cancel_futures=True)


class Pipeline:
    """Batches from `source`, decoded by `decode`, prefetched into a bounded queue.

    Args:
        source: has read(n) -> records, state() -> JSON-able position, close().
            read() runs only on the reader thread.
        decode: decode(records) -> batch; a module-level function (or a
            functools.partial of one) when mode is "process".
        batch_size: records per batch.
        prefetch: batches ready or in progress at most (Caffe's prefetch).
        workers: decode workers; 0 decodes on the reader thread.
        mode: "thread" or "process" workers. Process workers start as spawned
            interpreters, so a script using them needs an `if __name__ == "__main__"` guard.
        name: used for thread names.
        device: copy batches to the GPU (see _DeviceCopy); None: when
            backend.gpu_mode() is on at construction.
    """

    def __init__(self, source, decode, batch_size, prefetch=4, workers=1, mode="thread", name="data",
                 device=None):
        if mode not in ("thread", "process"):
            raise ValueError(f"decode mode must be 'thread' or 'process', got {mode!r}")
        if workers <= 0:
            pool = _InlinePool()
        elif mode == "thread":
            pool = _ThreadPool(workers, name)
        elif mode == "process":
            # forkserver: forking a process that already runs threads can deadlock.
            context = multiprocessing.get_context("forkserver")
            pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context,
                                                          initializer=_install, initargs=(decode,))
            decode = _run_installed
        self._shared = _Shared(source, decode, batch_size, prefetch, pool)
        if backend.gpu_mode() if device is None else device:
            if not backend.cupy_available:
                raise ValueError("device=True: copying batches to the GPU needs a usable GPU (cupy reports none)")
            self._shared.to_device = _DeviceCopy(backend.cupy.cuda.Device().id)
        self._reader = threading.Thread(target=self._shared.read_loop, daemon=True, name=f"{name}-reader")
        self._reader.start()
        self._finalizer = weakref.finalize(self, self._shared.shutdown, self._reader)
        self.state = None               # source position after the batch last returned
        self.wait_seconds_last = 0.0
        self.wait_seconds_total = 0.0
        self.batches = 0

    def next(self):
        """The next batch, blocking until it is ready; the wait is recorded."""
        if not self._finalizer.alive:
            raise PipelineError("the data pipeline is closed")
        start = time.perf_counter()
        while True:
            try:
                future, state = self._shared.ready.get(timeout=_POLL)
                break
            except queue.Empty:
                if not self._reader.is_alive() and self._shared.ready.empty():
                    raise PipelineError("the data reader stopped") from None
        batch = future.result()
        waited = time.perf_counter() - start
        self.wait_seconds_last = waited
        self.wait_seconds_total += waited
        self.batches += 1
        self.state = state
        return batch

    def close(self):
        """Stop the reader and the workers and wait for them; safe to call twice."""
        self._finalizer()

    @property
    def closed(self):
        return not self._finalizer.alive

    def threads(self):
        """The pipeline's live threads (for tests that check a clean shutdown)."""
        pool = self._shared.pool
        workers = pool.alive() if isinstance(pool, (_ThreadPool, _InlinePool)) else []
        return [t for t in [self._reader] + workers if t.is_alive()]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
