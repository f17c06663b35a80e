"""pycaffe's solvers: SGDSolver, NesterovSolver, ..., and get_solver.

Each wraps the engine's `pycaffe_dist.solvers.Solver` (as `solver._solver`);
the class fixes the update rule, as in Caffe, whatever `type` the file names.
"""
from ..proto import caffe_pb2
from ..proto import io as proto_io
from ..solvers import Solver as _EngineSolver
from .net import Net


class _Callbacks:
    """pycaffe's add_callback(on_start, on_gradients_ready): two callables taking no arguments."""

    def __init__(self, on_start, on_gradients_ready):
        self._on_start, self._on_gradients_ready = on_start, on_gradients_ready

    def on_start(self, solver):
        self._on_start()

    def on_gradients_ready(self, solver):
        self._on_gradients_ready()


class Solver:
    """A solver built from a solver prototxt (pycaffe's `caffe.Solver`).

    Use a subclass (`caffe.SGDSolver(path)`, ...) or `caffe.get_solver(path)`,
    which picks the class the file's `type` names.
    """

    _type = None  # the update rule; None: the file's own `type`

    def __init__(self, solver_file):
        if isinstance(solver_file, str):
            path, param = solver_file, proto_io.read_solver(solver_file)
        else:
            path, param = "<solver>", caffe_pb2.SolverParameter.FromString(solver_file.SerializeToString())
        if self._type is not None:
            param.type = self._type
        self._solver = _EngineSolver(param, path)
        self._net = Net._wrap(self._solver.net)
        self._test_nets = [Net._wrap(n) for n in self._solver.test_nets]

    @property
    def net(self):
        """The training Net."""
        return self._net

    @property
    def test_nets(self):
        """The test Nets, sharing the training net's weights."""
        return list(self._test_nets)

    @property
    def iter(self):
        """Iterations done so far."""
        return self._solver.iter

    @property
    def param(self):
        """The SolverParameter (base_lr, max_iter, ...)."""
        return self._solver.param

    @property
    def max_iter(self):
        return self._solver.param.max_iter

    def step(self, iters):
        """Train `iters` iterations (testing, displaying and snapshotting as the file says)."""
        self._solver.step(int(iters))

    def solve(self, resume=None):
        """Train to max_iter, first restoring `resume` (a .solverstate path) when given."""
        self._solver.solve(resume=resume)

    def restore(self, state_file):
        """Continue from a .solverstate (and the .caffemodel it names)."""
        self._solver.restore(state_file)

    def snapshot(self):
        """Write <prefix>_iter_N.caffemodel and .solverstate now."""
        self._solver.snapshot()

    def apply_update(self):
        """Turn the gradients in the diffs into one update of the weights (and count no iteration)."""
        self._solver.apply_update()

    def share_weights(self, net):
        """Make `net` use this solver's training weights (its layers matched by name)."""
        net.share_with(self._net)

    def add_callback(self, *args):
        """add_callback(on_start, on_gradients_ready): call these at each iteration's start
        and once its gradients are ready (before the update); or add_callback(obj) with an
        object that has on_start(solver) and on_gradients_ready(solver) (an NCCL object).
        """
        if len(args) == 2:
            self._solver.add_callback(_Callbacks(*args))
        elif len(args) == 1:
            self._solver.add_callback(args[0])
        else:
            raise TypeError("add_callback(on_start, on_gradients_ready) or add_callback(callback)")


class SGDSolver(Solver):
    """Stochastic gradient descent with momentum."""

    _type = "SGD"

    @property
    def lr(self):
        """The learning rate the policy gives at the current iteration."""
        return self._solver.learning_rate()


class NesterovSolver(SGDSolver):
    """Nesterov's accelerated gradient."""

    _type = "Nesterov"


class AdaGradSolver(SGDSolver):
    """AdaGrad."""

    _type = "AdaGrad"


class RMSPropSolver(SGDSolver):
    """RMSProp (rms_decay)."""

    _type = "RMSProp"


class AdaDeltaSolver(SGDSolver):
    """AdaDelta (momentum is the decay)."""

    _type = "AdaDelta"


class AdamSolver(SGDSolver):
    """Adam (momentum, momentum2, delta)."""

    _type = "Adam"


SOLVERS = {cls._type: cls for cls in (SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver,
                                      AdaDeltaSolver, AdamSolver)}


def get_solver(solver_file):
    """The solver of the type the file names (`type: "Adam"`, or the old solver_type enum)."""
    param = proto_io.read_solver(solver_file) if isinstance(solver_file, str) else solver_file
    cls = SOLVERS.get(param.type or "SGD")
    if cls is None:
        raise ValueError("%s: unknown solver type %r (known: %s)"
                         % (solver_file if isinstance(solver_file, str) else "<solver>", param.type,
                            ", ".join(sorted(SOLVERS))))
    return cls(solver_file)
