"""A live progress line under the training log: iterations/s and time left.

Shown only when stderr is a terminal. Log lines are written above the bar
(it is cleared, the line written, the bar drawn again), so every log line
stays whole; when stderr is a file or a pipe there is no bar at all and the
log is exactly Caffe's lines, for parse_log and other tools.
"""
import logging
import sys

from tqdm import tqdm

from ..solvers.base import Callback


class _AboveBar(logging.Handler):
    """Forwards records to `handler` with the bars on its stream cleared while it writes."""

    def __init__(self, handler):
        super().__init__(handler.level)
        self.handler = handler

    def emit(self, record):
        with tqdm.external_write_mode(file=self.handler.stream):
            self.handler.handle(record)


class TrainingProgress(Callback):
    """Context manager: a tqdm bar following `solver.iter` up to max_iter.

    Args:
        solver: the engine Solver being trained.
        stream: where the bar and the log go (default stderr).
        enabled: None shows the bar only on a terminal; True/False force it.
    """

    def __init__(self, solver, stream=None, enabled=None, logger="pycaffe_dist"):
        self.solver = solver
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.logger = logging.getLogger(logger)
        self.bar = None
        self._swapped = []
        self._started = False

    def __enter__(self):
        total = max(self.solver.param.max_iter, self.solver.iter)
        disable = None if self.enabled is None else not self.enabled
        self.bar = tqdm(total=total, initial=self.solver.iter, unit="iter", desc="train", file=self.stream,
                        disable=disable, dynamic_ncols=True, leave=False, mininterval=0.5, smoothing=0.1)
        if not self.bar.disable:
            for i, handler in enumerate(self.logger.handlers):
                if getattr(handler, "stream", None) is self.stream:
                    self._swapped.append((i, handler))
                    self.logger.handlers[i] = _AboveBar(handler)
        self.solver.add_callback(self)
        return self

    def on_start(self, solver):
        if not self._started:
            # solve(resume=...) restores after the bar exists: start the clock
            # and the count at the iteration training really starts from.
            self._started = True
            self.bar.reset(total=max(solver.param.max_iter, solver.iter))
            self.bar.initial = self.bar.n = solver.iter
            self.bar.refresh()

    def on_gradients_ready(self, solver):
        # The update that follows completes iteration iter + 1.
        if solver.iter + 1 > self.bar.n:
            self.bar.update(solver.iter + 1 - self.bar.n)

    def __exit__(self, *exc):
        self.solver.callbacks.remove(self)
        for i, handler in self._swapped:
            self.logger.handlers[i] = handler
        self._swapped = []
        self.bar.close()
        return False
