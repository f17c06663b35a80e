#!/usr/bin/env python3
"""Caffe's upgrade_net_proto_text tool; the same as `pycaffe-dist upgrade_net_proto_text`."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycaffe_dist.tools.upgrade_net_proto_text import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
