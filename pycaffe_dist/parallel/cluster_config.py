"""How a run under mpiexec is parallelised: parallel_param, overridden by the command line.

    parallel_param {
      strategy: "sync"        # sync | ps | downpour | easgd | eamsgd | ssp (default: sync)
      algorithm: "ring"       # sync, easgd: mpi | tree | binomial | ring | halving_doubling
      layer_wise_reduce: true # sync: reduce each layer's gradient as its backward ends
      compression: "onebit"   # sync: none | onebit | fp16 | topk
      topk_ratio: 0.01        # topk: the fraction of values each rank sends
      error_feedback: true    # onebit, fp16, topk: carry what compression lost into the next step
      servers: 1              # ps, downpour: the last `servers` ranks hold the weights
      n_fetch: 1  n_push: 1   # ps, downpour: fetch weights / push updates every n steps
      tau: 10                 # easgd, eamsgd: elastic exchange every tau steps
      alpha: 0  beta: 0.9     # easgd, eamsgd: moving rate alpha (0: beta / ranks)
      staleness: 0            # ssp: how many clocks ahead of the slowest a rank may run (0: BSP)
      timeout: 300            # seconds a rank waits for a peer before the job is ended
      chunk_bytes: 1048576    # message piece size of the point-to-point algorithms
    }

Every rank runs the prototxt's batch on its shard of the data
(offset % workers == worker rank), so N ranks see N times the batch.
"""
from dataclasses import dataclass, fields, replace

from .config import ConfigError

STRATEGIES = ("sync", "ps", "downpour", "easgd", "eamsgd", "ssp")
ALGORITHMS = ("mpi", "tree", "binomial", "ring", "halving_doubling")
COMPRESSIONS = ("none", "onebit", "fp16", "topk")


@dataclass(frozen=True)
class ClusterSettings:
    """A resolved MPI run configuration (see the module docstring for each field)."""

    strategy: str = "sync"
    algorithm: str = "mpi"
    layer_wise: bool = True
    compression: str = "none"
    topk_ratio: float = 0.01
    error_feedback: bool = True
    servers: int = 1
    n_fetch: int = 1
    n_push: int = 1
    tau: int = 10
    alpha: float = 0.0
    beta: float = 0.9
    staleness: int = 0
    timeout: float = 300.0
    chunk_bytes: int = 1 << 20

    def checked(self, size):
        """These settings for a job of `size` ranks; raises ConfigError when they cannot run."""
        s = self
        if s.strategy not in STRATEGIES:
            hint = " (hogwild shares memory: it runs on one machine, with --workers)" * (s.strategy == "hogwild")
            raise ConfigError("unknown cluster strategy %r%s (known: %s)" % (s.strategy, hint, ", ".join(STRATEGIES)))
        if s.algorithm not in ALGORITHMS:
            raise ConfigError("unknown allreduce algorithm %r (known: %s)" % (s.algorithm, ", ".join(ALGORITHMS)))
        if s.compression not in COMPRESSIONS:
            raise ConfigError("unknown compression %r (known: %s)" % (s.compression, ", ".join(COMPRESSIONS)))
        if s.compression != "none" and s.strategy != "sync":
            raise ConfigError("compression %r works with strategy sync, not %r" % (s.compression, s.strategy))
        if not 0 < s.topk_ratio <= 1:
            raise ConfigError("topk_ratio must be in (0, 1], got %g" % s.topk_ratio)
        if s.strategy in ("ps", "downpour"):
            if not 1 <= s.servers < size:
                raise ConfigError("%s needs 1 <= servers < ranks (%d ranks, servers %d)"
                                  % (s.strategy, size, s.servers))
            if s.n_fetch < 1 or s.n_push < 1:
                raise ConfigError("n_fetch and n_push must be at least 1")
            if s.strategy == "ps" and s.n_fetch != s.n_push:
                raise ConfigError("synchronous ps exchanges in rounds: n_fetch (%d) must equal n_push (%d)"
                                  % (s.n_fetch, s.n_push))
        if s.tau < 1:
            raise ConfigError("tau must be at least 1, got %d" % s.tau)
        if s.staleness < 0:
            raise ConfigError("staleness must be 0 (BSP) or more, got %d" % s.staleness)
        if s.timeout <= 0:
            raise ConfigError("timeout must be positive, got %g" % s.timeout)
        if s.chunk_bytes < 8:
            raise ConfigError("chunk_bytes must be at least 8, got %d" % s.chunk_bytes)
        workers = size - s.servers if s.strategy in ("ps", "downpour") else size
        alpha = s.alpha or s.beta / workers
        if s.strategy in ("easgd", "eamsgd") and not 0 < alpha * workers < 2:
            # The center's update sums `workers` elastic forces: beyond 2 it overshoots (NIPS 2015, sec. 5).
            raise ConfigError("easgd needs 0 < alpha * ranks < 2 to be stable, got alpha %g with %d ranks"
                              % (alpha, workers))
        return replace(s, alpha=alpha)

    def workers(self, size):
        """How many of `size` ranks train (the others serve weights)."""
        return size - self.servers if self.strategy in ("ps", "downpour") else size


_FIELDS = {"layer_wise": "layer_wise_reduce"}     # Settings name -> parallel_param name where they differ


def from_solver(param, size, **overrides):
    """ClusterSettings from a SolverParameter's parallel_param; overrides that are not None win."""
    p = param.parallel_param
    values = {}
    for f in fields(ClusterSettings):
        given = overrides.get(f.name)
        values[f.name] = given if given is not None else type(f.default)(getattr(p, _FIELDS.get(f.name, f.name)))
    unknown = set(overrides) - set(values)
    if unknown:
        raise TypeError("unknown cluster settings: %s" % ", ".join(sorted(unknown)))
    return ClusterSettings(**values).checked(size)
