#!/usr/bin/env python3
"""Caffe's convert_imageset tool; the same as `pycaffe-dist convert_imageset`."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycaffe_dist.tools.convert_imageset import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
