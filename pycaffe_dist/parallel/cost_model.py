"""What one training iteration costs on P workers: the alpha-beta(-gamma) model and FireCaffe's formulas.

A message of n bytes costs alpha + n * beta (latency, seconds per byte);
summing n bytes costs n * gamma (Thakur, Rabenseifner and Gropp, 2005).
Per synchronisation of n bytes over p workers:

    parameter server   2p(alpha + n beta)                  (one server; S servers split n)
    binomial tree      2 log2(p) (alpha + n beta) + log2(p) n gamma
    ring               2(p-1) alpha + 2(p-1)/p n beta + (p-1)/p n gamma
    halving-doubling   2 log2(p) alpha + 2(p-1)/p n beta + (p-1)/p n gamma

FireCaffe (Iandola et al., CVPR 2016) writes the first two in bits over a
bandwidth: 32 |W| p / BW for the server, 2 * 32 |W| log2(p) / BW for the
tree. The strategies' costs follow from how often and how much they send.

With more ranks than cores on one machine (Network.cores), the ranks that
copy and add at the same time share the cores, so each step's byte terms
grow by active ranks / cores: every rank is busy at every step of the ring
and of halving-doubling, only p / 2^k ranks at level k of the tree.
"""
import math
from dataclasses import dataclass

ALLREDUCE_ALGORITHMS = ("ps", "binomial", "ring", "halving_doubling")


@dataclass(frozen=True)
class Network:
    """alpha: seconds per message; beta: seconds per byte; gamma: seconds per byte summed; cores: 0 = one per rank."""

    alpha: float = 5e-6
    beta: float = 1 / 10e9
    gamma: float = 0.0
    cores: int = 0

    def crowding(self, active):
        """How much slower byte work runs when `active` ranks share the cores."""
        return max(1.0, active / self.cores) if self.cores else 1.0

    @classmethod
    def from_bandwidth(cls, gbit_per_s, latency_us=5.0, gamma=0.0):
        return cls(alpha=latency_us * 1e-6, beta=8 / (gbit_per_s * 1e9), gamma=gamma)


def allreduce_seconds(algorithm, n_bytes, p, net, servers=1):
    """Seconds to sum n_bytes over p workers with `algorithm` (ALLREDUCE_ALGORITHMS, or "mpi")."""
    if p <= 1:
        return 0.0
    a, n = net.alpha, float(n_bytes)
    log_p = math.ceil(math.log2(p))
    if algorithm == "ps":
        # Every worker pushes and fetches its shard of each server; a server's link carries 2p messages.
        return 2 * p * (a + n / servers * net.beta) + p * n / servers * net.gamma
    if algorithm == "binomial":
        level = [net.crowding(p / 2 ** k) for k in range(log_p)]    # ranks at work on each level
        return 2 * log_p * a + sum(level) * n * (2 * net.beta + net.gamma)
    f = net.crowding(p)
    b, g = net.beta * f, net.gamma * f
    if algorithm == "ring":
        return 2 * (p - 1) * a + 2 * (p - 1) / p * n * b + (p - 1) / p * n * g
    if algorithm in ("halving_doubling", "mpi"):
        p2 = 1 << int(math.log2(p))
        fold = 0.0 if p2 == p else 2 * (a + n * b) + n * g   # the extra ranks' hand-off and return
        return fold + 2 * math.log2(p2) * a + 2 * (p2 - 1) / p2 * n * b + (p2 - 1) / p2 * n * g
    raise ValueError("unknown algorithm %r (known: %s, mpi)" % (algorithm, ", ".join(ALLREDUCE_ALGORITHMS)))


def firecaffe_seconds(kind, params, p, bandwidth_bits):
    """FireCaffe's communication time per iteration: kind "ps" or "tree", |W| = params (32-bit)."""
    if kind == "ps":
        return 32 * params * p / bandwidth_bits
    return 2 * 32 * params * math.log2(p) / bandwidth_bits


@dataclass(frozen=True)
class Workload:
    """One iteration of one worker: parameter count, compute seconds, backward's share of it."""

    params: int
    compute_s: float
    backward_share: float = 2 / 3     # backward is about two thirds of forward+backward
    bytes_per_value: int = 4


def iteration_seconds(work, p, net, strategy="sync", algorithm="ring", overlap=True, servers=1,
                      n_fetch=1, n_push=1, tau=10, compression="none", topk_ratio=0.01):
    """Seconds per iteration on p workers, each with the same batch (weak scaling)."""
    n = work.params * work.bytes_per_value
    if p <= 1:
        return work.compute_s
    if strategy == "sync":
        if compression == "onebit":
            comm = _allgather_seconds(n / 32 + 8 * math.sqrt(work.params), p, net) + n * net.gamma
        elif compression == "topk":
            comm = _allgather_seconds(2 * topk_ratio * n, p, net)
        else:
            size = n / 2 if compression == "fp16" else n
            comm = allreduce_seconds(algorithm, size, p, net)
        hidden = work.compute_s * work.backward_share if overlap and compression == "none" else 0.0
        return work.compute_s + max(0.0, comm - hidden)
    if strategy in ("ps", "downpour"):
        # A round moves every worker's shard to and from each server; servers work in parallel.
        per_round = p * (2 * net.alpha + n / servers * net.beta * 2)
        if strategy == "ps":
            return work.compute_s + per_round
        # Asynchronous: nobody waits for the others, but the servers' links bound the throughput.
        load = p * (n / servers * net.beta) * (1 / n_push + 1 / n_fetch)
        return max(work.compute_s + 2 * (net.alpha + n / servers * net.beta) / max(n_fetch, 1), load)
    if strategy in ("easgd", "eamsgd"):
        return work.compute_s + allreduce_seconds(algorithm, n, p, net) / tau
    if strategy == "ssp":
        return work.compute_s + (p - 1) * (net.alpha + n * net.beta)
    raise ValueError("unknown strategy %r" % strategy)


def _allgather_seconds(payload_bytes, p, net):
    return (p - 1) * (net.alpha + payload_bytes * net.beta)


def speedup(work, p, net, **strategy):
    """Samples per second of p workers over one worker's (each worker keeps its batch)."""
    return p * work.compute_s / iteration_seconds(work, p, net, **strategy)


def strong_speedup(work, p, net, kind="tree"):
    """FireCaffe's setting: a fixed global batch split over p workers (compute_s is the whole batch on one)."""
    comm = 0.0 if p == 1 else firecaffe_seconds(kind, work.params, p, 8 / net.beta)
    return work.compute_s / (work.compute_s / p + comm)


# FireCaffe's comparison (CVPR 2016). |W| from the published architectures; the network is a
# 56 Gbit/s Infiniband FDR link; compute assumes ~250 images/s for GoogLeNet forward+backward
# on one K20-class GPU (our assumption, not a published figure), over the paper's batch of 1024.
FIRECAFFE_NETWORK = Network.from_bandwidth(56.0)
GOOGLENET = Workload(params=6_800_000, compute_s=1024 / 250.0)

