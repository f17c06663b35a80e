"""`pycaffe-dist upgrade_net_proto_text IN OUT`: a net prototxt in the current format (Caffe's tool)."""
from .common import user_errors
from .upgrade import build_parser, upgrade_net_text


@user_errors("upgrade_net_proto_text")
def main(argv):
    return upgrade_net_text(build_parser("upgrade_net_proto_text", "net prototxt").parse_args(argv))
