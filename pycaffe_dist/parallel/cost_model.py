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

On one machine with more ranks than cores (Network.cores), the ranks take
turns on the cores and a phase costs the CPU work of all its ranks shared
out over the cores, unless its longest path at one rank per core is
longer. Every message step then costs alpha_shared, measured with all
ranks exchanging 8 bytes around a ring (a scheduler's time slice, not a
wire's latency). A ring or a tree passes data along chains of ranks, so a
rank cannot finish a step before both its neighbours have had a turn; as
measured here (bench/bench_cluster.py), their bytes and additions then
cost what they cost in a 2-rank exchange of a buffer far larger than the
caches (beta_shared, gamma_shared), whatever the message size.
Halving-doubling exchanges with one partner per step, and a pair that
shares the cores finishes its step at the 2-rank rates of the message's
own size. Phases in which no more ranks work than there are
cores (the fold of 3 ranks into 2 on 2 cores) cost what they cost with
one rank per core.
"""
import math
from dataclasses import dataclass

ALLREDUCE_ALGORITHMS = ("ps", "binomial", "ring", "halving_doubling")


@dataclass(frozen=True)
class Network:
    """alpha: seconds per message; beta: seconds per byte; gamma: seconds per byte summed; cores: 0 = one per rank.

    beta_oneway: seconds per byte sent one way (None: beta, which is per byte of an exchange
        step, in which a rank sends and receives as much).
    With more ranks than cores: alpha_shared, seconds per message step; beta_shared and
        gamma_shared, seconds per byte exchanged and summed by ranks along a ring or a tree
        (None: alpha, beta, gamma).
    """

    alpha: float = 5e-6
    beta: float = 1 / 10e9
    gamma: float = 0.0
    cores: int = 0
    alpha_shared: float = None
    beta_shared: float = None
    gamma_shared: float = None
    beta_oneway: float = None

    def shared(self, ranks):
        """Whether `ranks` at work at once outnumber the cores."""
        return bool(self.cores) and ranks > self.cores

    def step(self, p):
        """Seconds per message step in a job of p ranks."""
        return self.alpha_shared if self.shared(p) and self.alpha_shared is not None else self.alpha

    def cpu_seconds(self, sent, summed, chains=True):
        """Seconds for the cores to move `sent` bytes (each byte sent by one rank and received by
        another) and sum `summed` bytes, shared out over all of them; `chains`: along a ring or tree."""
        beta = self.beta_shared if chains and self.beta_shared is not None else self.beta
        gamma = self.gamma_shared if chains and self.gamma_shared is not None else self.gamma
        return (sent * beta + summed * gamma) / self.cores

    @property
    def oneway(self):
        return self.beta_oneway if self.beta_oneway is not None else self.beta

    @classmethod
    def from_bandwidth(cls, gbit_per_s, latency_us=5.0, gamma=0.0):
        return cls(alpha=latency_us * 1e-6, beta=8 / (gbit_per_s * 1e9), gamma=gamma)


def allreduce_seconds(algorithm, n_bytes, p, net, servers=1):
    """Seconds to sum n_bytes over p workers with `algorithm` (ALLREDUCE_ALGORITHMS, or "mpi")."""
    if p <= 1:
        return 0.0
    n = float(n_bytes)
    log_p = math.ceil(math.log2(p))
    if algorithm == "ps":
        # Every worker pushes and fetches its shard of each server; a server's link carries 2p messages.
        return 2 * p * (net.alpha + n / servers * net.beta) + p * n / servers * net.gamma
    if algorithm == "binomial":
        # Pipelined by pieces: the root receives, adds and sends the buffer once per level,
        # and each of the p - 1 edges of the tree carries it up and down.
        path = 2 * log_p * n * net.oneway + log_p * n * net.gamma
        if net.shared(p):
            path = max(path, net.cpu_seconds(2 * (p - 1) * n, (p - 1) * n))
        return 2 * log_p * net.step(p) + path
    if algorithm == "ring":
        path = 2 * (p - 1) / p * n * net.beta + (p - 1) / p * n * net.gamma
        if net.shared(p):
            path = max(path, net.cpu_seconds(2 * (p - 1) * n, (p - 1) * n))
        return 2 * (p - 1) * net.step(p) + path
    if algorithm in ("halving_doubling", "mpi"):
        p2 = 1 << int(math.log2(p))
        extra = p - p2
        path = 2 * (p2 - 1) / p2 * n * net.beta + (p2 - 1) / p2 * n * net.gamma
        if net.shared(p2):
            path = max(path, net.cpu_seconds(2 * (p2 - 1) * n, (p2 - 1) * n, chains=False))
        total = 2 * math.log2(p2) * net.step(p2) + path
        if extra:   # first and last, the extra ranks hand their buffers over and get the sum back
            path = 2 * n * net.oneway + n * net.gamma
            if net.shared(2 * extra):
                path = max(path, net.cpu_seconds(2 * extra * n, extra * n, chains=False))
            total += 2 * net.step(2 * extra) + path
        return total
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

