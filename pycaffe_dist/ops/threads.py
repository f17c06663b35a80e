"""Running an op's chunks on several CPU threads.

The ops cut their work into cache-sized chunks (images for convolution,
plane blocks for pooling). With T threads allowed, the chunks are split
into T contiguous runs, one per thread. numpy releases the GIL inside its
copies and GEMMs, so the threads overlap everywhere but in the Python glue
between calls.

T is what BLAS was given (OPENBLAS_NUM_THREADS / OMP_NUM_THREADS, or a
threadpoolctl limit), and the first op to use it takes it over: BLAS is set
to one thread for the rest of the process. Measured on 2 busy cores, a
multi-threaded OpenBLAS made LeNet's step 2.5x slower and cifar10_quick's
15x: its threads split GEMMs far too small to share and then spin waiting
for the next one, on the very cores the ops' threads need. The ops'
threads run every convolution and pooling chunk instead, runs of images
for LRN, and InnerProduct's GEMMs cut by output columns (large ones only:
ops/inner_product.py); other GEMMs run on one thread. Without threadpoolctl BLAS is left alone
and the ops run serially. Worker threads of the parallel launcher (which
limits BLAS while they train) always run serially.

A given thread count always splits the same way, so its results are
reproducible to the bit; one thread gives the serial order.
"""
import concurrent.futures
import threading

import numpy

_lock = threading.Lock()
_state = {"blas": None, "pool": None, "pool_size": 0, "threads": 0}


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
    """Threads an op on `xp` arrays may use now: BLAS's thread count, taken
    over on first sight (see above); 1 on a GPU or off the main thread."""
    if xp is not numpy or threading.current_thread() is not threading.main_thread():
        return 1
    blas = _blas()
    if not blas:
        return 1
    current = blas.get_num_threads()
    if current > 1:         # set by the user (again): ours from now on
        _state["threads"] = current
        blas.set_num_threads(1)
    return _state["threads"] or 1


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
    on the pool. Re-raises the first task's error."""
    if len(tasks) == 1:
        return [tasks[0]()]
    with _lock:
        if _state["pool_size"] < len(tasks) - 1:
            if _state["pool"] is not None:
                _state["pool"].shutdown()
            _state["pool"] = concurrent.futures.ThreadPoolExecutor(len(tasks) - 1, "pycaffe-dist-op")
            _state["pool_size"] = len(tasks) - 1
        pool = _state["pool"]
    futures = [pool.submit(task) for task in tasks[1:]]
    try:
        first = tasks[0]()
        return [first] + [f.result() for f in futures]
    finally:
        concurrent.futures.wait(futures)
