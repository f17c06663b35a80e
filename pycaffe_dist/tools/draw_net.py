"""`pycaffe-dist draw_net NET OUT.png|svg|pdf|dot`: a picture of a net (Caffe's draw_net.py)."""
from .. import draw
from ..net import TEST, TRAIN
from ..proto import io as proto_io
from .common import UserError, parser, user_errors

PHASES = {"TRAIN": TRAIN, "TEST": TEST, "ALL": None}


def build_parser():
    p = parser("draw_net", "Draw a net prototxt with graphviz; the output's extension picks the format.")
    p.add_argument("net", help="net prototxt")
    p.add_argument("output", help="image file: .png, .svg, .pdf, ... (graphviz's formats) or .dot")
    p.add_flag("rankdir", default="LR", choices=["LR", "TB", "BT", "RL"],
               help="direction of the graph: LR (default, left to right), TB, BT, RL")
    p.add_flag("phase", default="ALL", type=str.upper, choices=sorted(PHASES),
               help="draw only the layers of TRAIN or TEST (default: ALL)")
    p.add_flag("display_lrm", action="store_true", help="show each parameter's lr_mult and decay_mult")
    return p


@user_errors("draw_net")
def main(argv):
    """Entry point of `pycaffe-dist draw_net`; returns the exit status."""
    args = build_parser().parse_args(argv)
    net, _ = proto_io.read_net(args.net)
    try:
        draw.draw_net_to_file(net, args.output, args.rankdir, PHASES[args.phase], args.display_lrm)
    except RuntimeError as e:
        raise UserError(str(e)) from None
    print("Drawing net to %s" % args.output)
    return 0
