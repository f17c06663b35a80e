"""What the upgrade_* commands share: read as written, upgrade, write atomically.

Caffe's tools write the output even when the input needed no upgrade (and
say so); an input that cannot be upgraded is an error and nothing is written.
"""
import logging

from ..proto import caffe_pb2, io as proto_io
from ..proto.source import SourceMap
from ..proto.upgrade import upgrade_net, upgrade_solver
from .common import parser

log = logging.getLogger("pycaffe_dist")

# Nets a SolverParameter may carry inline; upgraded along with the solver.
SOLVER_NETS = ("net_param", "train_net_param", "test_net_param")


def build_parser(command, what):
    p = parser(command, "Upgrade a %s written for an older Caffe to the current format." % what)
    p.add_argument("input", help="the %s to read" % what)
    p.add_argument("output", help="where to write the upgraded %s (may be the input)" % what)
    return p


def report(changed, args, what):
    if not changed:
        log.info("File already in latest proto format: %s", args.input)
    log.info("Wrote upgraded %s to %s", what, args.output)
    return 0


def upgrade_net_text(args):
    text = proto_io.read_text(args.input)
    net = proto_io.parse_text(text, caffe_pb2.NetParameter(), args.input)
    changed = upgrade_net(net, SourceMap(args.input, text))
    proto_io.write_text(args.output, net)
    return report(changed, args, "NetParameter text proto")


def upgrade_net_binary(args):
    net = proto_io.read_binary(args.input, caffe_pb2.NetParameter)
    changed = upgrade_net(net)
    proto_io.write_binary(args.output, net)
    return report(changed, args, "NetParameter binary proto")


def upgrade_solver_text(args):
    text = proto_io.read_text(args.input)
    solver = proto_io.parse_text(text, caffe_pb2.SolverParameter(), args.input)
    changed = upgrade_solver(solver, SourceMap(args.input, text))
    for field in SOLVER_NETS:
        nets = getattr(solver, field)
        for net in (nets if field == "test_net_param" else [nets] if solver.HasField(field) else []):
            changed |= upgrade_net(net)
    proto_io.write_text(args.output, solver)
    return report(changed, args, "SolverParameter text proto")
