"""`pycaffe-dist upgrade_net_proto_binary IN OUT`: an old .caffemodel in the current format (Caffe's tool)."""
from .common import user_errors
from .upgrade import build_parser, upgrade_net_binary


@user_errors("upgrade_net_proto_binary")
def main(argv):
    return upgrade_net_binary(build_parser("upgrade_net_proto_binary", "binary net (.caffemodel)").parse_args(argv))
