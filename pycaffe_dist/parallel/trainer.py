"""`train()`: a solver prototxt trained by N workers on this machine."""
import logging
import os
from dataclasses import dataclass

import numpy

from ..proto import io as proto_io
from . import config, launcher
from .loopback import DEFAULT_CAPACITY, LoopbackGroup
from .worker import Job, train_worker

log = logging.getLogger("pycaffe_dist")


@dataclass
class RunResult:
    """What a parallel run leaves: the root's final state and every worker's report."""

    iter: int                  # the root's final iteration
    seconds: float             # the root's training time (after construction)
    iterations: int            # iterations the root ran in this call
    digests: list              # sha1 of each worker's final weights, by rank
    test_scores: list          # the root's last test results
    weights: object = None     # the root's flat weights (return_weights=True)
    stopped_early: bool = False
    reports: list = None

    @property
    def iterations_per_second(self):
        return self.iterations / self.seconds if self.seconds else 0.0


def train(solver, settings=None, dtype=numpy.float32, resume=None, weights=(), setup=None,
          action_request=None, return_weights=False, log_level=None, blas_threads=None, **overrides):
    """Train `solver` (a prototxt path or SolverParameter) with parallel workers.

    Worker processes are spawned (a fresh interpreter each), so a script
    that calls this must do so under `if __name__ == "__main__":`.

    Args:
        settings: a config.Settings; by default the solver's parallel_param
            with `overrides` applied (workers=, strategy=, deterministic=,
            shards=, mode=, layer_wise=, algorithm=, gpus=).
        dtype: numpy.float32 or numpy.float64 (deterministic float64 runs
            are exact to the bit).
        resume: a .solverstate to continue from, with any number of workers.
        weights: .caffemodel files to fine-tune from.
        setup: setup(TrainingWorker) runs in every worker once its solver
            exists (feed MemoryData layers, add callbacks); a module-level
            function when workers are processes.
        action_request: called about every 0.1 s in this process; returns
            None, "stop" or "snapshot" (tools/train.py passes its signal
            handler), which every worker takes at the same iteration.
        return_weights: put the root's final flat weights in the result.
        blas_threads: BLAS threads per worker process (default: cores / workers).

    Returns:
        RunResult.

    Raises:
        config.ConfigError: settings that conflict.
        launcher.WorkerError: a worker failed; names the rank. No worker is left running.
    """
    if isinstance(solver, str):
        path, param = solver, proto_io.read_solver(solver)
    else:
        path, param = "<solver>", solver
    if settings is None:
        settings = config.from_solver(param, **overrides)
    else:
        settings = settings.checked()
    processes = settings.mode == "process"
    if settings.deterministic and processes:
        blas_threads = 1       # BLAS results must not depend on how it splits the work
    job = Job(solver_bytes=param.SerializeToString(), solver_path=os.path.abspath(path) if path != "<solver>" else path,
              settings=settings, dtype=numpy.dtype(dtype).name, resume=resume, weights=tuple(weights),
              setup=setup, log_level=log_level if log_level is not None else log.getEffectiveLevel(),
              return_weights=return_weights, layer_modules=_layer_modules())
    group = LoopbackGroup(settings.workers, processes=processes, capacity=_capacity(settings))
    log.info("Training with %d %s worker%s (%s%s)", settings.workers, "process" if processes else "thread",
             "s" if settings.workers > 1 else "", settings.strategy,
             ", deterministic, %d shards" % settings.shards if settings.deterministic else "")
    poll = _forward(action_request) if action_request is not None else None
    reports = launcher.run_workers(train_worker, settings.workers, payload=job, processes=processes,
                                   group=group, blas_threads=blas_threads, poll=poll)
    root = reports[0]
    return RunResult(iter=root["iter"], seconds=root["seconds"], iterations=root["iterations"],
                     digests=[r["digest"] for r in reports], test_scores=root.get("test_scores", []),
                     weights=root.get("weights"), stopped_early=root["stopped_early"], reports=reports)


def _layer_modules():
    """Modules whose import registers the layers known here (a script's own __main__ cannot be)."""
    from ..layers import LAYERS
    return tuple(sorted({cls.__module__ for cls in LAYERS.values()} - {"__main__", "__mp_main__"}))


def _capacity(settings):
    # Hogwild only meets once (to share its weights): keep its slots small.
    return 64 << 10 if settings.strategy == "hogwild" else DEFAULT_CAPACITY


def _forward(action_request):
    codes = {"stop": launcher.STOP, "snapshot": launcher.SNAPSHOT}

    def poll(requests):
        request = action_request()
        if request in codes:
            requests.post(codes[request])
    return poll

