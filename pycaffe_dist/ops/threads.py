"""Running an op's chunks on several CPU threads.

The ops cut their work into cache-sized chunks (images for convolution,
plane blocks for pooling). With T BLAS threads allowed, the chunks are
split into T contiguous runs, one per thread, and BLAS is held to one thread
meanwhile: OpenBLAS splitting a small per-chunk GEMM across cores costs more
than it gains, and numpy's copies, which are half the work, never use more
than the calling thread. numpy releases the GIL inside its copies and GEMMs,
so the threads overlap everywhere but in the Python glue between calls.

The thread count follows BLAS's: OPENBLAS_NUM_THREADS / OMP_NUM_THREADS,
or a threadpoolctl limit (the parallel launcher sets one while worker
threads train, so ops inside them stay serial). Without threadpoolctl the
ops run serially. A given thread count always splits the same way, so its
results are reproducible to the bit; one thread gives the serial order.
"""
import concurrent.futures
import threading

import numpy

_lock = threading.Lock()
_state = {"blas": None, "pool": None, "pool_size": 0}


def _blas():
    """threadpoolctl's controller of numpy's BLAS, or False without one."""
    if _state["blas"] is None:
        try:
            from threadpoolctl import ThreadpoolController
            found = ThreadpoolController().select(user_api="blas").lib_controllers
            _state["blas"] = found[0] if found else False
        except ImportError:
            _state["blas"] = False
    return _state["blas"]


def count(xp=numpy):
    """Threads an op on `xp` arrays may use now (1 on a GPU, or off the main thread)."""
    if xp is not numpy or threading.current_thread() is not threading.main_thread():
        return 1
    blas = _blas()
    return max(1, blas.get_num_threads()) if blas else 1


def split(items, parts):
    """`items` cut into `parts` contiguous runs of nearly equal length."""
    size, extra = divmod(len(items), parts)
    runs, start = [], 0
    for k in range(parts):
        end = start + size + (k < extra)
        runs.append(items[start:end])
        start = end
    return runs


def run(tasks):
    """Call every task (no arguments), the first on this thread and the rest
    on the pool, with BLAS on one thread until all have finished. Re-raises
    the first task's error."""
    blas = _blas()
    if len(tasks) == 1 or not blas:
        return [task() for task in tasks]
    with _lock:
        if _state["pool_size"] < len(tasks) - 1:
            if _state["pool"] is not None:
                _state["pool"].shutdown()
            _state["pool"] = concurrent.futures.ThreadPoolExecutor(len(tasks) - 1, "pycaffe-dist-op")
            _state["pool_size"] = len(tasks) - 1
        pool = _state["pool"]
    before = blas.get_num_threads()
    blas.set_num_threads(1)
    try:
        futures = [pool.submit(task) for task in tasks[1:]]
        first = tasks[0]()
        return [first] + [f.result() for f in futures]
    finally:
        concurrent.futures.wait(futures)
        blas.set_num_threads(before)
