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
for LRN, InnerProduct's GEMMs cut by output columns (large ones only:
ops/inner_product.py), average pooling's GEMM cut by planes (likewise),
and runs of blocks of large elementwise ops (ReLU: elementwise() below);
other GEMMs run on one thread. Without threadpoolctl BLAS is left alone
and the ops run serially. Worker threads of the parallel launcher (which
limits BLAS while they train) always run serially.

A given thread count always splits the same way, so its results are
reproducible to the bit; one thread gives the serial order.

Whether the split pays is measured, not assumed (issue #8): on two cores a
split op can run slower than on one (its lanes queue for the GIL between
short numpy calls, or another job holds the second core). So an op passes
a Choice to run(), which times its calls both ways, its lanes on the pool
or one after another on the calling thread, and keeps the faster, trying
the other way again now and then. The lanes and the order their results
are combined in are the same either way, so the choice changes no bit.
"""
import collections
import concurrent.futures
import functools
import itertools
import os
import queue
import statistics
import threading
import time

import numpy

# False: a split op always runs its lanes at once (for comparisons in bench/).
MEASURED = True

_lock = threading.Lock()
_state = {"blas": None, "lanes": [], "threads": 0}


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


def set_count(threads):
    """Let the ops use `threads` threads from now on (BLAS stays at one),
    where threadpoolctl is found; for benchmarks that compare counts in one
    process."""
    count()
    _state["threads"] = max(1, int(threads))


def split(items, parts):
    """`items` cut into `parts` contiguous runs of nearly equal length."""
    size, extra = divmod(len(items), parts)
    runs, start = [], 0
    for k in range(parts):
        end = start + size + (k < extra)
        runs.append(items[start:end])
        start = end
    return runs


class Choice:
    """One op's measured choice between running its lanes at once and one
    after another (see above). The first calls alternate, starting at once
    (the first of each way untimed: it makes that way's buffers); then the
    faster way runs, and now and then the other one: every PROBE-th call
    while the two are within CLEAR of each other, every PROBE_CLEAR-th once
    one is clearly faster. Ways are compared in pairs of consecutive calls,
    one each way (time at once over time in turn), so a load that changes
    from second to second weighs on both sides of a pair alike; the median
    of the last KEEP pairs decides. A change in the number of lanes starts
    the measuring again.

    Each probe costs the slower way's extra time: with every Choice probing
    every 16th call, and all of them in the same step, one cifar10_quick
    step in 16 took 78 ms instead of 49 at two threads (2 ms a step on
    average, where at once beat in turn by 1.5-2x). So clear choices probe
    eight times less often, and each Choice starts its count at its own
    phase, so that probes fall in different steps."""

    WARMUP = 2        # calls not timed, one each way
    TRIALS = 3        # timed calls each way before choosing
    PROBE = 16
    PROBE_CLEAR = 128
    CLEAR = 1.25      # a median ratio beyond this (or below its inverse) is a clear choice
    KEEP = 5
    _made = itertools.count()

    def __init__(self):
        self._lanes = 0
        self._phase = next(Choice._made) * 7

    def _reset(self, lanes):
        self._lanes, self._calls = lanes, 0
        self._last = {}                                   # way -> (call number, seconds)
        self._ratios = collections.deque(maxlen=self.KEEP)
        self._median = None

    def parallel(self, lanes):
        """Whether the next call with `lanes` lanes runs them at once."""
        if lanes != self._lanes:
            self._reset(lanes)
        self._calls += 1
        if self._calls <= self.WARMUP + 2 * self.TRIALS:
            return self._calls % 2 == 1
        best = self.best()
        return best if (self._calls + self._phase) % self.interval() else not best

    def best(self):
        """The way that is faster so far (at once: True)."""
        return self._median is None or self._median <= 1.0

    def interval(self):
        """Calls per probe of the slower way, as the ratios stand now."""
        clear = self._median is not None and not 1 / self.CLEAR <= self._median <= self.CLEAR
        return self.PROBE_CLEAR if clear else self.PROBE

    def record(self, parallel, seconds):
        if self._calls <= self.WARMUP:
            return
        other = self._last.get(not parallel)
        if other is not None and other[0] == self._calls - 1:     # a pair
            at_once, in_turn = (seconds, other[1]) if parallel else (other[1], seconds)
            self._ratios.append(at_once / max(in_turn, 1e-9))
            self._median = statistics.median(self._ratios)
        self._last[parallel] = (self._calls, seconds)


class Choices(dict):
    """An op's Choice per kind of call (a key: "forward", ("backward", ...)),
    each made on first use."""

    def __missing__(self, key):
        choice = self[key] = Choice()
        return choice


def run(tasks, choice=None):
    """Call every task (no arguments), the first on this thread and the rest
    on the pool, or all on this thread in order where `choice` (a Choice)
    measured that to be faster. Re-raises the first task's error."""
    if len(tasks) == 1:
        return [tasks[0]()]
    if choice is None or not MEASURED:
        return _on_pool(tasks)
    parallel = choice.parallel(len(tasks))
    start = time.perf_counter()
    results = _on_pool(tasks) if parallel else [task() for task in tasks]
    choice.record(parallel, time.perf_counter() - start)
    return results


class _Lane(threading.Thread):
    """A thread that runs lane k's tasks, and only those: each lane's
    thread-local scratch (ops/fourier.py) then lives on one thread and is
    sized once. (A ThreadPoolExecutor hands a task to whichever idle thread
    takes it: after a test had run with four threads, a two-lane op's
    second lane moved between three threads and grew a new scratch buffer
    on each.)"""

    def __init__(self, k):
        super().__init__(name=f"pycaffe-dist-op-{k}", daemon=True)
        self.tasks = queue.SimpleQueue()
        self.start()

    def run(self):
        while True:
            future, task = self.tasks.get()
            try:
                future.set_result(task())
            except BaseException as error:   # handed to the caller, who re-raises it
                future.set_exception(error)

    def submit(self, task):
        future = concurrent.futures.Future()
        self.tasks.put((future, task))
        return future


def _forget_lanes():
    """In a forked child the lanes' threads are gone (and the lock may have
    been held by one of the parent's threads): start afresh on demand."""
    global _lock
    _lock = threading.Lock()
    _state["lanes"] = []


os.register_at_fork(after_in_child=_forget_lanes)


def _on_pool(tasks):
    with _lock:
        while len(_state["lanes"]) < len(tasks) - 1:
            _state["lanes"].append(_Lane(len(_state["lanes"]) + 1))
        lanes = _state["lanes"]
    futures = [lane.submit(task) for lane, task in zip(lanes, tasks[1:])]
    try:
        first = tasks[0]()
        return [first] + [f.result() for f in futures]
    finally:
        concurrent.futures.wait(futures)


# Elementwise ops (ReLU) on arrays that outgrow L2 (2 MB a core) run in
# blocks, so that an op of several passes (ReLU's backward: a mask, then
# a product) keeps its intermediate in cache between them: x0.69-0.85 of
# whole-array passes on 12-19 MB arrays at one thread (caches evicted
# between calls; bench/bench_elementwise.py). With several threads the
# blocks are cut into one contiguous run per lane, run at once or in turn
# as the op's Choice measures: x0.42-0.97 at two threads. Smaller arrays
# stay whole (their mask fits L2 anyway; blocks measured x1.04-1.5 there),
# except that with several threads an op of several passes splits from
# ELEMENTWISE_LANES elements, one block per lane: in cifar10_quick at two
# threads its relu1 and relu2 backward (0.8M elements, written by the
# convolutions' lanes just before) took 0.53 and 0.47 ms split, 0.69 and
# 0.64 whole, while relu3 (0.4M) and the one-pass forward lost split. A
# one-pass op on one thread always stays whole (blocks: x1.04-1.07).
ELEMENTWISE_BLOCK = 1 << 18     # elements: 1 MB of float32
ELEMENTWISE_WHOLE = 1 << 20     # elements up to this stay whole...
ELEMENTWISE_LANES = 1 << 19     # ...but from this many, ops of several passes split over several threads


def elementwise(xp, size, body, choice, block=None, one_pass=False):
    """Call body(lane, start, stop) over [0, size) in blocks of `block`
    elements (default: above), cut into one contiguous run per lane of the
    ops' threads and run by `run` with `choice`; one call body(0, 0, size)
    where the sizes above say so, and on a GPU. Elementwise results do not
    depend on the cut, so the bits are the same at any thread count."""
    lanes = count(xp) if xp is numpy else 1
    if one_pass:
        split_up = lanes > 1 and size > ELEMENTWISE_WHOLE
    else:
        split_up = xp is numpy and (size > ELEMENTWISE_WHOLE or (lanes > 1 and size >= ELEMENTWISE_LANES))
    if not split_up:
        body(0, 0, size)
        return
    block = block or (ELEMENTWISE_BLOCK if size > ELEMENTWISE_WHOLE else -(-size // lanes))
    starts = list(range(0, size, block))

    def lane(k, part):
        for start in part:
            body(k, start, min(size, start + block))
    run([functools.partial(lane, k, part) for k, part in enumerate(split(starts, min(lanes, len(starts))))], choice)
