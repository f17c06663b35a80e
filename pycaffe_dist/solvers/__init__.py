"""Solvers: the shared step loop (base.Solver) and the update rules by type."""
from .base import Callback, Solver, SolverError  # noqa: F401
from ..proto import io as proto_io


def get_solver(path_or_param):
    """A solver of the type the solver prototxt names (pycaffe's get_solver)."""
    if isinstance(path_or_param, str):
        return Solver(proto_io.read_solver(path_or_param), path_or_param)
    return Solver(path_or_param)
