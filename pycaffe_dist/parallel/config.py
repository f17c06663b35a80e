"""How a run is parallelised: the solver's parallel_param, overridden by the command line.

    parallel_param {
      strategy: "sync"          # "sync" (data parallel, Caffe's -gpu) or "hogwild"
      workers: 2                # how many; --workers N overrides, --gpu 0,1 implies 2
      mode: "process"           # "process" (the default) or "thread"; --mode overrides
      layer_wise_reduce: true   # sync: reduce each layer's gradients as soon as its backward ends
      algorithm: "mpi"          # sync: "mpi" (the communicator's own allreduce) or "tree" (Caffe's P2P tree)
      deterministic: false      # sync: exact equivalence mode, see below
      shards: 0                 # deterministic: shards per iteration (0: one per worker)
    }

Deterministic mode splits every iteration's global batch (workers x the
prototxt's batch) into `shards` equal shards, shard s reading the records
with offset % shards == s. Each shard's gradient is computed on its own and
the shards are summed in shard order, so any number of workers that divides
`shards` gives the same weights to the bit: 2 workers with batch B and 1
worker with batch 2B (both `shards: 2`) are the same run. BLAS runs on one
thread per worker there, so its results cannot depend on how it splits work.

Without it, N workers equal one worker with N times the batch to float
rounding only: one worker sums the gradient of all samples at once, N
workers sum theirs and then add the sums. In float32 the weights then
differ by an ulp or two, until some ReLU input or max-pooling pair lies
within that rounding of its threshold: one sample's gradient takes another
route and the runs separate as any two float32 runs started one ulp apart
do (LeNet at batch 64: ~5e-3 after 50 iterations, either way; see
tests/parallel/test_lenet.py). In float64 they stay within 1e-10.
"""
from dataclasses import dataclass, field, replace

STRATEGIES = ("sync", "hogwild")
MODES = ("process", "thread")
ALGORITHMS = ("mpi", "tree")
# Strategies and algorithms that run only under mpiexec (parallel/cluster_config.py).
MPI_STRATEGIES = ("ps", "downpour", "easgd", "eamsgd", "ssp")
MPI_ALGORITHMS = ("binomial", "ring", "halving_doubling")


class ConfigError(ValueError):
    """Settings that do not make a runnable parallel run; the message says which and why."""


@dataclass(frozen=True)
class Settings:
    """A resolved parallel configuration (see the module docstring for each field)."""

    strategy: str = "sync"
    workers: int = 1
    mode: str = ""
    layer_wise: bool = True
    algorithm: str = "mpi"
    deterministic: bool = False
    shards: int = 0
    gpus: tuple = field(default_factory=tuple)

    @property
    def parallel(self):
        """Whether the run needs the parallel launcher at all."""
        return (self.workers > 1 or self.strategy != "sync" or self.deterministic
                or len(self.gpus) > 1)

    @property
    def shards_per_worker(self):
        return self.shards // self.workers if self.deterministic else 1

    def checked(self):
        """These settings with defaults filled in; raises ConfigError when they conflict."""
        s = self
        if s.strategy in MPI_STRATEGIES or (s.algorithm in MPI_ALGORITHMS and (s.workers > 1 or s.gpus)):
            raise ConfigError("%s runs over MPI: launch with `mpiexec -n N pycaffe-dist train --solver ...`"
                              % (s.strategy if s.strategy in MPI_STRATEGIES else "algorithm " + s.algorithm))
        if s.algorithm in MPI_ALGORITHMS:
            s = replace(s, algorithm="mpi")      # one worker reduces nothing: a cluster solver runs alone too
        if s.strategy not in STRATEGIES:
            raise ConfigError("unknown parallel strategy %r (known: %s)" % (s.strategy, ", ".join(STRATEGIES)))
        if s.gpus:
            if s.workers not in (1, len(s.gpus)):
                raise ConfigError("--workers %d conflicts with %d GPUs in --gpu" % (s.workers, len(s.gpus)))
            s = replace(s, workers=len(s.gpus))
        if s.workers < 1:
            raise ConfigError("workers must be at least 1, got %d" % s.workers)
        # Processes by default, Hogwild too: on two idle cores Hogwild processes
        # trained LeNet at 1.89x one worker, threads at 1.50x (the GIL between
        # numpy calls; BENCHMARKS.md).
        mode = s.mode or "process"
        if mode not in MODES:
            raise ConfigError("unknown parallel mode %r (known: %s)" % (mode, ", ".join(MODES)))
        if s.strategy == "hogwild" and s.gpus:
            raise ConfigError("hogwild shares one weight array between CPU workers; it does not run on GPUs")
        if s.gpus and mode != "process":
            raise ConfigError("GPU workers run as processes (one per GPU); mode %r is CPU only" % mode)
        if s.algorithm not in ALGORITHMS:
            raise ConfigError("unknown reduction algorithm %r (known: %s)"
                              % (s.algorithm, ", ".join(ALGORITHMS)))
        if s.strategy == "hogwild" and s.deterministic:
            raise ConfigError("hogwild updates without locks, so it cannot be deterministic")
        shards = s.shards or s.workers
        if s.deterministic and shards % s.workers:
            raise ConfigError("deterministic mode needs shards (%d) to be a multiple of workers (%d)"
                              % (shards, s.workers))
        return replace(s, mode=mode, shards=shards)


def from_solver(param, workers=None, strategy=None, gpus=None, deterministic=None, shards=None,
                mode=None, layer_wise=None, algorithm=None):
    """Settings from a SolverParameter's parallel_param; arguments that are not None override it."""
    p = param.parallel_param
    settings = Settings(
        strategy=strategy or p.strategy,
        workers=int(workers if workers is not None else p.workers),
        mode=mode if mode is not None else p.mode,
        layer_wise=bool(layer_wise if layer_wise is not None else p.layer_wise_reduce),
        algorithm=algorithm or p.algorithm,
        deterministic=bool(deterministic if deterministic is not None else p.deterministic),
        shards=int(shards if shards is not None else p.shards),
        gpus=tuple(gpus or ()))
    return settings.checked()
