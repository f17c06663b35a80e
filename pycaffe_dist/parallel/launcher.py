"""Start N workers (threads or processes), watch them, and stop them all cleanly.

`run_workers(target, size, ...)` calls `target(worker)` once per rank and
returns the per-rank return values. Whatever happens, no worker outlives
the call:

* a worker that raises reports its rank, exception and traceback; the
  others are stopped (processes killed, threads told to stop and, in a
  loopback group, woken from blocking calls) and WorkerError is raised;
* a worker process that dies without a report (killed, crashed) is named
  with the signal or status it died of;
* the parent dying takes its worker processes with it (each watches its
  parent), and KeyboardInterrupt in the parent stops every worker.

Processes use the "spawn" start method: a fresh interpreter, no inherited
threads or locks, BLAS threads chosen before numpy loads, and CUDA safe.
"""
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
import traceback

log = logging.getLogger("pycaffe_dist")

NONE, SNAPSHOT, STOP = 0, 1, 2        # requests the parent passes to the workers
_BLAS_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_GRACE = 0.5       # seconds to collect more reports after a first failure
_TERMINATE_WAIT = 3.0


class WorkerError(RuntimeError):
    """A worker failed; `rank` says which, `details` holds its traceback."""

    def __init__(self, rank, summary, details=""):
        super().__init__("worker %d %s" % (rank, summary))
        self.rank = rank
        self.details = details


class Requests:
    """What the parent asks the workers (STOP, SNAPSHOT) at their next iteration boundary."""

    def __init__(self, context=None):
        if context is None:
            self._value = _ThreadValue()
        else:
            self._value = context.Value("i", NONE)

    def post(self, request):
        """Ask for STOP or SNAPSHOT (a STOP is never downgraded to a SNAPSHOT)."""
        with self._value.get_lock():
            self._value.value = max(self._value.value, request)

    def peek(self):
        return self._value.value

    def take(self):
        """The pending request; a SNAPSHOT is consumed, a STOP stays for everyone to see."""
        with self._value.get_lock():
            request = self._value.value
            if request == SNAPSHOT:
                self._value.value = NONE
            return request


class _ThreadValue:
    def __init__(self):
        self.value = NONE
        self._lock = threading.Lock()

    def get_lock(self):
        return self._lock


class Worker:
    """What a worker knows about itself: rank, size, the shared group, the parent's requests."""

    def __init__(self, rank, size, group, requests, payload, threaded):
        self.rank, self.size = rank, size
        self.group = group
        self.requests = requests
        self.payload = payload
        self.threaded = threaded

    def comm(self):
        """This worker's communicator in the group the launcher made (a loopback one)."""
        return self.group.comm(self.rank)


def run_workers(target, size, payload=None, processes=True, group=None, blas_threads=None,
                poll=None, poll_interval=0.1):
    """Run `target(Worker)` on `size` workers; return their results, rank by rank.

    Args:
        target: a module-level function (processes pickle it by name).
        payload: passed to every worker as `worker.payload` (picklable for processes).
        group: a LoopbackGroup made for this many workers, or None.
        blas_threads: BLAS threads per worker process (default: cores / workers).
        poll: called every poll_interval seconds in the parent with the
            Requests object; forwards signals (see tools/train.py).

    Raises:
        WorkerError: a worker raised or died; every other worker is stopped.
    """
    if processes:
        return _run_processes(target, size, payload, group, blas_threads, poll, poll_interval)
    with _blas_limit(blas_threads or 1):
        return _run_threads(target, size, payload, group, poll, poll_interval)


# -- processes ------------------------------------------------------------------------
def _process_entry(target, rank, size, group, requests, payload, conn, parent_pid):
    # The parent decides what Ctrl-C and SIGHUP mean; workers take its requests.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGHUP})
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="watch-parent", daemon=True).start()
    try:
        result = target(Worker(rank, size, group, requests, payload, threaded=False))
        conn.send(("ok", rank, result))
        status = 0
    except BaseException as e:
        conn.send(("error", rank, _summary(e), "" if _users_mistake(e) else traceback.format_exc()))
        status = 1
    finally:
        logging.shutdown()
    conn.close()
    os._exit(status)   # skip interpreter teardown: prefetch threads are daemons


def _users_mistake(error):
    """Errors that already name the file, line, layer or record: their traceback would only bury that."""
    from ..data.datum import DatumError, MeanError
    from ..data.db import DBError
    from ..layers.base import LayerError
    from ..proto.errors import ProtoError
    return isinstance(error, (LayerError, ProtoError, DatumError, MeanError, DBError))


def _watch_parent(parent_pid):
    # Re-parenting means the parent died: a worker left behind would block forever.
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(1)


def _summary(error):
    text = str(error).strip().splitlines()
    return "raised %s%s" % (type(error).__name__, ": " + text[0] if text else "")


def _death(process):
    code = process.exitcode
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "signal %d" % -code
        return "(pid %d) was killed by %s" % (process.pid, name)
    return "(pid %d) exited with status %s without reporting" % (process.pid, code)


def _start_processes(context, target, size, group, requests, payload, blas_threads):
    threads = str(blas_threads or max(1, (os.cpu_count() or 1) // size))
    saved = {k: os.environ.get(k) for k in _BLAS_VARIABLES}
    # Workers inherit a blocked SIGINT until they have chosen to ignore it.
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGHUP})
    procs, conns = [], []
    try:
        for k in _BLAS_VARIABLES:
            os.environ[k] = threads
        for rank in range(size):
            receive, send = context.Pipe(duplex=False)
            proc = context.Process(target=_process_entry, name="pycaffe-dist-worker-%d" % rank,
                                   args=(target, rank, size, group, requests, payload, send, os.getpid()))
            proc.start()
            send.close()
            procs.append(proc)
            conns.append(receive)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return procs, conns


def _run_processes(target, size, payload, group, blas_threads, poll, poll_interval):
    context = multiprocessing.get_context("spawn")
    requests = Requests(context)
    procs, conns = [], []
    try:
        procs, conns = _start_processes(context, target, size, group, requests, payload, blas_threads)
        return _watch_processes(procs, conns, requests, poll, poll_interval)
    finally:
        _stop_processes(procs)
        for c in conns:
            c.close()


def _watch_processes(procs, conns, requests, poll, poll_interval):
    results, errors = {}, {}
    open_conns = {c: rank for rank, c in enumerate(conns)}
    running = {p.sentinel: rank for rank, p in enumerate(procs)}
    failed_at = None
    while len(results) < len(procs):
        ready = multiprocessing.connection.wait(list(open_conns) + list(running), timeout=poll_interval)
        # Reports first: a worker may exit right after sending one.
        for obj in [o for o in ready if o in open_conns] + [o for o in ready if o in running]:
            if obj in open_conns:
                _receive(obj, open_conns, results, errors)
            elif obj in running:
                rank = running.pop(obj)
                procs[rank].join()
                conn = conns[rank]
                while conn in open_conns and conn.poll():
                    _receive(conn, open_conns, results, errors)
                if rank not in results and rank not in errors:
                    errors[rank] = (_death(procs[rank]), "")
        if errors and failed_at is None:
            failed_at = time.monotonic()
        if failed_at is not None and (time.monotonic() - failed_at > _GRACE or not running):
            rank = _first(errors)
            summary, details = errors[rank]
            if details:     # a crash: its traceback; a user's mistake is said once, by WorkerError
                log.error("worker %d failed:\n%s", rank, details.rstrip())
            raise WorkerError(rank, summary, details)
        if poll is not None:
            poll(requests)
    return [results[r] for r in range(len(procs))]


def _receive(conn, open_conns, results, errors):
    rank = open_conns[conn]
    try:
        message = conn.recv()
    except (EOFError, OSError):
        del open_conns[conn]
        return
    if message[0] == "ok":
        results[rank] = message[2]
    else:
        errors[rank] = (message[2], message[3])


def _stop_processes(procs):
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.terminate()
    deadline = time.monotonic() + _TERMINATE_WAIT
    for p in alive:
        p.join(max(deadline - time.monotonic(), 0))
        if p.is_alive():
            p.kill()
            p.join()


# -- threads ----------------------------------------------------------------------------
@contextlib.contextmanager
def _blas_limit(threads):
    """BLAS threads for the whole process while worker threads run.

    Worker threads are the parallelism; a multi-threaded BLAS under each of
    them oversubscribes the cores, and OpenBLAS's spinning threads then
    make every call many times slower (measured: 40x on 2 busy cores).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        log.warning("threadpoolctl is not installed: BLAS keeps its own threads under %d worker "
                    "threads (pip install threadpoolctl, or set OPENBLAS_NUM_THREADS=1)", threads)
        yield
        return
    with threadpool_limits(limits=threads, user_api="blas"):
        yield


def _run_threads(target, size, payload, group, poll, poll_interval):
    requests = Requests()
    results, errors = {}, {}

    def body(rank):
        try:
            results[rank] = target(Worker(rank, size, group, requests, payload, threaded=True))
        except BaseException as e:
            errors[rank] = (_summary(e), "" if _users_mistake(e) else traceback.format_exc())
            requests.post(STOP)              # the others stop at their next iteration
            if group is not None:
                group.abort()                # and wake from any blocking call

    threads = [threading.Thread(target=body, args=(rank,), name="pycaffe-dist-worker-%d" % rank, daemon=True)
               for rank in range(size)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(poll_interval)
                if poll is not None:
                    poll(requests)
    except KeyboardInterrupt:
        requests.post(STOP)
        if group is not None:
            group.abort()
        for t in threads:
            t.join()
        raise
    if errors:
        rank = _first(errors)
        summary, details = errors[rank]
        if details:
            log.error("worker %d failed:\n%s", rank, details.rstrip())
        raise WorkerError(rank, summary, details)
    return [results[r] for r in range(size)]


def _first(errors):
    """The rank to blame: the lowest one whose failure was not caused by another's."""
    return min(errors, key=lambda r: ("CommError" in errors[r][0], r))
