"""`pycaffe-dist device_query`: what devices this machine offers."""
import os

import numpy

from .. import backend
from .common import parser, user_errors


@user_errors("device_query")
def main(argv):
    parser("device_query", "Show the CPU and any GPUs this machine offers.").parse_args(argv)
    print("CPU: %d cores, numpy %s" % (os.cpu_count() or 1, numpy.__version__))
    if not backend.cupy_available:
        print("GPU: none (cupy missing or no device); training runs on the CPU")
        return 0
    cupy = backend.cupy
    for i in range(cupy.cuda.runtime.getDeviceCount()):
        props = cupy.cuda.runtime.getDeviceProperties(i)
        print("GPU %d: %s, %.1f GiB" % (i, props["name"].decode(), props["totalGlobalMem"] / 2 ** 30))
    return 0
