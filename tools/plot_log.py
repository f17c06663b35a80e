#!/usr/bin/env python3
"""Caffe's plot_training_log.py, simplified; the same as `pycaffe-dist plot_log`."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycaffe_dist.tools.plot_log import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
