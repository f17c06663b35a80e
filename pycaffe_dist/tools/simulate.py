"""`pycaffe-dist simulate`: predicted time per iteration and speedup of each algorithm and strategy.

    pycaffe-dist simulate --solver S --workers 1024 [--bandwidth 10] [--latency 5]
        [--compute_ms 40] [--params N] [--plot speedup.png] [--firecaffe]

The parameter count comes from the solver's train net (or --params); the
compute time of one iteration is measured here (or --compute_ms). The
network is --bandwidth Gbit/s with --latency microseconds per message.
Each worker keeps the prototxt's batch (weak scaling), as `mpiexec -n P
pycaffe-dist train` runs. --firecaffe prints FireCaffe's comparison instead:
GoogLeNet over Infiniband with a fixed global batch of 1024.
"""
import logging
import os

from ..parallel import cluster_config, cost_model
from ..proto.io import read_solver
from .common import UserError, parser, user_errors

log = logging.getLogger("pycaffe_dist")


def build_parser():
    p = parser("simulate", "Predict time per iteration and speedup of the parallel strategies.")
    p.add_flag("solver", help="solver prototxt (its train net gives the parameters and compute time)")
    p.add_flag("workers", type=int, default=1024, help="the largest worker count to predict (default 1024)")
    p.add_flag("bandwidth", type=float, default=10.0, help="network bandwidth, Gbit/s (default 10)")
    p.add_flag("latency", type=float, default=5.0, help="latency per message, microseconds (default 5)")
    p.add_flag("compute_ms", type=float, help="forward+backward ms of one iteration (default: measured)")
    p.add_flag("params", type=int, help="learnable parameter count (default: the train net's)")
    p.add_flag("plot", help="write a speedup plot (PNG) here")
    p.add_flag("firecaffe", action="store_true", help="FireCaffe's GoogLeNet comparison (tree vs server)")
    return p


def configurations(settings):
    """(label, iteration_seconds keyword arguments) of everything compared."""
    s = settings
    configs = [("sync ring", dict(strategy="sync", algorithm="ring")),
               ("sync halving-doubling", dict(strategy="sync", algorithm="halving_doubling")),
               ("sync binomial tree", dict(strategy="sync", algorithm="binomial")),
               ("sync 1-bit", dict(strategy="sync", compression="onebit")),
               ("sync top-k %g" % s.topk_ratio, dict(strategy="sync", compression="topk", topk_ratio=s.topk_ratio)),
               ("ps, %d server%s" % (s.servers, "s" * (s.servers > 1)), dict(strategy="ps", servers=s.servers)),
               ("downpour", dict(strategy="downpour", servers=s.servers, n_fetch=s.n_fetch, n_push=s.n_push)),
               ("easgd tau %d" % s.tau, dict(strategy="easgd", tau=s.tau, algorithm="ring")),
               ("ssp", dict(strategy="ssp"))]
    return configs


def worker_counts(largest):
    counts, p = [], 1
    while p < largest:
        counts.append(p)
        p *= 2
    return counts + [largest]


def measure(solver_path, time_it=True):
    """(parameters, forward+backward seconds, backward share) of the solver's train net, run here."""
    from ..net import TRAIN, Net
    from ..parallel.shards import train_net_param
    from .time import time_net
    param = read_solver(solver_path)
    net_param, state = train_net_param(param, os.path.dirname(os.path.abspath(solver_path)))
    net = Net(net_param, TRAIN, state.level, list(state.stage))
    if not time_it:
        return net.flat_data.size, None, 2 / 3
    try:
        fwd, bwd, total = time_net(net, 5)
    except Exception as e:
        raise UserError("cannot run the train net to time it (%s); give --compute_ms" % e) from None
    return net.flat_data.size, total / 1000.0, sum(bwd) / max(sum(fwd) + sum(bwd), 1e-12)


@user_errors("simulate")
def main(argv):
    args = build_parser().parse_args(argv)
    net = cost_model.Network.from_bandwidth(args.bandwidth, args.latency)
    if args.firecaffe:
        return firecaffe(args)
    if not args.solver and (args.params is None or args.compute_ms is None):
        raise UserError("give --solver, or both --params and --compute_ms")
    params, compute_s, backward = (args.params, None, 2 / 3)
    if args.solver and (args.params is None or args.compute_ms is None):
        measured = measure(args.solver, time_it=args.compute_ms is None)
        params = params if params is not None else measured[0]
        compute_s, backward = measured[1], measured[2]
    if args.compute_ms is not None:
        compute_s = args.compute_ms / 1000.0
    settings = (cluster_config.from_solver(read_solver(args.solver), 2) if args.solver
                else cluster_config.ClusterSettings())
    work = cost_model.Workload(params=params, compute_s=compute_s, backward_share=backward)
    counts = worker_counts(args.workers)
    print("%d parameters (%.1f MB), %.1f ms per iteration, %.3g Gbit/s, %.3g us latency"
          % (params, params * 4 / 1e6, compute_s * 1e3, args.bandwidth, args.latency))
    print("speedup over one worker (ms per iteration), each worker with the prototxt's batch")
    print("%-24s" % "workers" + "".join("%16d" % p for p in counts))
    curves = []
    for label, config in configurations(settings):
        cells, speeds = [], []
        for p in counts:
            seconds = cost_model.iteration_seconds(work, p, net, **config)
            speeds.append(p * compute_s / seconds)
            cells.append("%7.1fx %6.1fms" % (speeds[-1], seconds * 1e3))
        curves.append((label, speeds))
        print("%-24s" % label + "".join("%16s" % c for c in cells))
    if args.plot:
        plot(args.plot, counts, curves, "%d parameters, %.1f ms/iteration, %g Gbit/s"
             % (params, compute_s * 1e3, args.bandwidth))
    return 0


def firecaffe(args):
    """GoogLeNet on FireCaffe's 56 Gbit/s Infiniband with a global batch of 1024: tree vs parameter server."""
    work, net = cost_model.GOOGLENET, cost_model.FIRECAFFE_NETWORK
    counts = worker_counts(min(args.workers, 1024))
    print("FireCaffe's comparison: GoogLeNet (%d parameters), batch 1024, 56 Gbit/s (CVPR 2016: 47x on 128 GPUs)"
          % work.params)
    print("%-18s" % "workers" + "".join("%8d" % p for p in counts))
    curves = []
    for kind in ("tree", "ps"):
        speeds = [cost_model.strong_speedup(work, p, net, kind) for p in counts]
        curves.append(("reduction tree" if kind == "tree" else "parameter server", speeds))
        print("%-18s" % curves[-1][0] + "".join("%7.1fx" % s for s in speeds))
    if args.plot:
        plot(args.plot, counts, curves, "FireCaffe model: GoogLeNet, batch 1024, 56 Gbit/s", weak=False)
    return 0


def plot(path, counts, curves, title, weak=True):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("--plot needs matplotlib: pip install -e .[plot]") from None
    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.plot(counts, counts, "k:", label="linear")
    for label, speeds in curves:
        ax.plot(counts, speeds, marker="o", markersize=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("workers")
    ax.set_ylabel("speedup (%s)" % ("samples/s over one worker" if weak else "fixed global batch"))
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    log.info("Wrote %s", path)
