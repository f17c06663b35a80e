#!/usr/bin/env python3
"""Caffe's extract_features tool; the same as `pycaffe-dist extract_features`."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycaffe_dist.tools.extract_features import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
