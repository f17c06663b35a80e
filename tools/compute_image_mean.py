#!/usr/bin/env python3
"""Caffe's compute_image_mean tool; the same as `pycaffe-dist compute_image_mean`."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycaffe_dist.tools.compute_image_mean import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
