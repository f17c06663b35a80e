"""`pycaffe-dist train`: train a net from a solver prototxt (Caffe's `caffe train`)."""
import contextlib
import logging
import os
import signal
import sys

from .. import backend, parallel
from ..layers.base import LayerError
from ..layers.dataset import BAD_RECORD_ENV
from ..parallel import config as parallel_config, guardian, mpi
from ..proto.io import read_solver
from ..solvers import get_solver
from ..solvers.base import SNAPSHOT, STOP
from .common import UserError, parse_gpus, parser, user_errors
from .progress import TrainingProgress

log = logging.getLogger("pycaffe_dist")
EFFECTS = {"stop": STOP, "snapshot": SNAPSHOT, "none": None}


class SignalActions:
    """Turns SIGINT/SIGHUP into solver requests taken at the next iteration boundary."""

    def __init__(self, sigint_effect, sighup_effect):
        self.effects = {signal.SIGINT: EFFECTS[sigint_effect], signal.SIGHUP: EFFECTS[sighup_effect]}
        self.pending = None
        self.previous = {}

    def _handler(self, signum, frame):
        effect = self.effects.get(signum)
        if effect is not None:
            self.pending = STOP if STOP in (effect, self.pending) else effect

    def __enter__(self):
        for signum in self.effects:
            self.previous[signum] = signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def __call__(self):
        request, self.pending = self.pending, None
        return request


def build_parser():
    p = parser("train", "Train a net as a solver prototxt declares it.")
    p.add_flag("solver", required=True, help="solver prototxt")
    p.add_flag("weights", help="comma-separated .caffemodel files to fine-tune from (layers matched by name)")
    p.add_flag("snapshot", help=".solverstate to resume from")
    p.add_flag("gpu", default="", help="GPU ids: '0', '0,1' or 'all' (default: CPU); several GPUs train "
               "synchronously, one worker process each, over NCCL")
    p.add_flag("workers", type=int, help="parallel workers on this machine (default: the solver's "
               "parallel_param.workers, else 1); each runs the prototxt's batch on its shard of the data")
    p.add_flag("strategy", choices=parallel_config.STRATEGIES + parallel_config.MPI_STRATEGIES,
               help="sync: synchronous data parallel (the default); hogwild: lock-free shared weights; "
               "under mpiexec also ps, downpour, easgd, eamsgd, ssp")
    p.add_flag("algorithm", choices=parallel_config.ALGORITHMS + parallel_config.MPI_ALGORITHMS,
               help="sync: the allreduce (mpi, tree; under mpiexec also binomial, ring, halving_doubling)")
    p.add_flag("compression", choices=("none", "onebit", "fp16", "topk"),
               help="under mpiexec, sync: compressed gradients with error feedback")
    p.add_flag("timeout", type=float, help="under mpiexec: seconds a rank waits for a peer before the job "
               "is ended with a message naming it (default: parallel_param.timeout, 300)")
    p.add_flag("deterministic", action="store_true", default=None,
               help="exact mode: the same weights to the bit for any worker count dividing --shards")
    p.add_flag("shards", type=int, help="--deterministic: shards per iteration (default: one per worker)")
    p.add_flag("mode", choices=parallel_config.MODES,
               help="workers as processes (the default: they use every core) or threads in this process")
    p.add_flag("sigint_effect", default="stop", choices=sorted(EFFECTS),
               help="what Ctrl-C does: stop (default), snapshot, none")
    p.add_flag("sighup_effect", default="snapshot", choices=sorted(EFFECTS),
               help="what SIGHUP does: snapshot (default), stop, none")
    p.add_flag("bad_record", choices=("stop", "skip"),
               help="what every Data/ImageData layer does with a bad record (not a Datum, wrong size, an "
               "image that does not decode): stop the run naming it, or skip it with a counted warning "
               "(default: each layer's data_param.bad_record, STOP)")
    return p


@contextlib.contextmanager
def bad_record_choice(choice):
    """Set the data layers' bad-record choice for this process and the workers it starts."""
    if not choice:
        yield
        return
    previous = os.environ.get(BAD_RECORD_ENV)
    os.environ[BAD_RECORD_ENV] = choice
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(BAD_RECORD_ENV, None)
        else:
            os.environ[BAD_RECORD_ENV] = previous


@user_errors("train")
def main(argv):
    args = build_parser().parse_args(argv)
    with bad_record_choice(args.bad_record):
        return _train(args, argv)


def _train(args, argv):
    if args.weights and args.snapshot:
        raise UserError("give -weights or -snapshot, not both (Caffe's rule)")
    if mpi.launched():
        if guardian.wanted():       # under Hydra: a guardian names this rank if it is killed
            return guardian.run_guarded([sys.executable, "-m", "pycaffe_dist", "train"] + list(argv))
        return train_cluster(args)
    gpus = parse_gpus(args.gpu)
    try:
        settings = parallel_config.from_solver(read_solver(args.solver), workers=args.workers,
                                               strategy=args.strategy, gpus=gpus,
                                               deterministic=args.deterministic, shards=args.shards,
                                               algorithm=args.algorithm, mode=args.mode)
    except parallel_config.ConfigError as e:
        raise UserError(str(e)) from None
    if settings.parallel:
        return train_parallel(args, settings)
    if gpus:
        backend.set_mode_gpu()
        backend.set_device(gpus[0])
    solver = get_solver(args.solver)
    if args.weights:
        for path in args.weights.split(","):
            log.info("Finetuning from %s", path)
            solver.net.copy_from(path)
    try:
        with SignalActions(args.sigint_effect, args.sighup_effect) as actions, TrainingProgress(solver):
            solver.action_request = actions
            solver.solve(resume=args.snapshot)
    except LayerError as e:      # a layer failing mid-run, a bad record with STOP: it names the layer
        raise UserError(str(e)) from None
    finally:
        solver.close()
    return 0


def train_parallel(args, settings):
    """Several workers (pycaffe_dist.parallel); the root logs, tests and snapshots."""
    weights = args.weights.split(",") if args.weights else ()
    with SignalActions(args.sigint_effect, args.sighup_effect) as actions:
        try:
            parallel.train(args.solver, settings, resume=args.snapshot, weights=weights,
                           action_request=actions)
        except parallel.WorkerError as e:
            raise UserError(str(e)) from None
    return 0


def train_cluster(args):
    """One rank of an mpiexec/srun job (pycaffe_dist.parallel.cluster); the root logs, tests and snapshots."""
    from ..parallel import cluster
    if args.workers or args.deterministic:
        raise UserError("under mpiexec each rank is one worker: -workers and -deterministic do not apply")
    gpus = parse_gpus(args.gpu)      # each rank takes one: gpus[local rank % len(gpus)]
    if gpus and not backend.cupy_available:
        raise UserError("-gpu %s: no GPU is available on this machine (cupy is missing or sees no device)" % args.gpu)
    weights = args.weights.split(",") if args.weights else ()
    with SignalActions(args.sigint_effect, args.sighup_effect) as actions:
        try:
            cluster.train(args.solver, resume=args.snapshot, weights=weights, action_request=actions,
                          strategy=args.strategy, algorithm=args.algorithm, compression=args.compression,
                          timeout=args.timeout, gpus=gpus)
        except parallel_config.ConfigError as e:
            raise UserError(str(e)) from None
    return 0
