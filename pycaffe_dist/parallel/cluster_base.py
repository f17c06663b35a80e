"""What the cluster strategies share: a start, an exchange each iteration, and a finish.

A strategy is a solver Callback (DESIGN.md, contract 5). `start` runs at the
first on_start (every rank adopts the root's weights there, so seeded or
not, restored or not, all ranks begin alike); `iteration` at every later
on_start, that is, after the previous iteration's update; `finish` when
the solver's step loop returns, before the root's final test and snapshot,
so those see the run's final weights.
"""
from ..solvers.base import Callback


class ClusterStrategy(Callback):
    """Base of the strategies that exchange weights or updates rather than gradients."""

    def __init__(self, comm):
        self.comm = comm
        self.solver = None
        self._started = False

    def attach(self, solver):
        """Plug into `solver`: its callbacks, and a finish when its step loop returns."""
        self.solver = solver
        solver.add_callback(self)
        step = solver.step

        def step_then_finish(iters):
            step(iters)
            self.finish(solver)
        solver.step = step_then_finish       # the Solver offers no end-of-loop callback
        return self

    def on_start(self, solver):
        if not self._started:
            self._started = True
            self.start(solver)
        else:
            self.iteration(solver)

    def start(self, solver):
        self.comm.bcast(solver.net.flat_data, 0)

    def iteration(self, solver):
        pass

    def finish(self, solver):
        pass
