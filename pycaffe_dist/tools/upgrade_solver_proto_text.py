"""`pycaffe-dist upgrade_solver_proto_text IN OUT`: a solver prototxt with `type` for `solver_type`."""
from .common import user_errors
from .upgrade import build_parser, upgrade_solver_text


@user_errors("upgrade_solver_proto_text")
def main(argv):
    return upgrade_solver_text(build_parser("upgrade_solver_proto_text", "solver prototxt").parse_args(argv))
