#!/usr/bin/env python3
"""Caffe's draw_net.py; the same as `pycaffe-dist draw_net`."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycaffe_dist.tools.draw_net import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
