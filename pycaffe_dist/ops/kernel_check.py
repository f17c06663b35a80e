"""Checking the kernel sources of ops/kernel_sources.py without a GPU.

HostKernels builds them with a C++ compiler (CUDA's few names stubbed for
one block of one thread) and runs them on numpy arrays, with the interface
of the CuPy launcher in ops/kernels.py, so tests compare each kernel with its
numpy twin anywhere. nvrtc_check compiles them to PTX with NVRTC, which
needs the CUDA wheels but no device.
"""
import ctypes
import os
import subprocess
import tempfile

import numpy

from .kernel_sources import (RAW_KERNELS, SOLVER_ARRAYS_IN, SOLVER_RULES, SOLVER_SCALARS, _dtype_name,
                             module_source, solver_body, solver_outputs)


# Enough of CUDA for a C++ compiler: one block of one thread runs each grid-stride loop whole.
_HOST_PRELUDE = """
#include <cmath>
#include <algorithm>
using std::max; using std::min; using std::pow; using std::exp; using std::log; using std::sqrt;
struct HostIndex { unsigned x, y, z; };
static const HostIndex blockIdx = {0, 0, 0}, threadIdx = {0, 0, 0}, blockDim = {1, 1, 1}, gridDim = {1, 1, 1};
#define __global__
#define __device__
"""


def _host_solver_source(solver_type):
    """An ElementwiseKernel body as a loop: arrays by reference, scalars by value, as CuPy binds them."""
    outs = solver_outputs(solver_type)
    params = ", ".join([f"const T* {a}_" for a in SOLVER_ARRAYS_IN] + [f"T* {o}_" for o in outs]
                       + [f"{'int' if s == 'l1' else 'T'} {s}" for s in SOLVER_SCALARS])
    binds = "".join(f"const T {a} = {a}_[i]; " for a in SOLVER_ARRAYS_IN) + "".join(
        f"T& {o} = {o}_[i]; " for o in outs)
    return (f'extern "C" void {solver_type.lower()}_update(long long n, {params}) {{\n'
            f"  for (long long i = 0; i < n; ++i) {{ {binds}\n{solver_body(solver_type)}\n  }}\n}}\n")


class HostKernels:
    """The same sources built with a C++ compiler and run on numpy arrays
    (serially), for tests and checks on machines without a GPU. With
    `syntax_only` the sources are only checked, and nothing can be launched."""

    def __init__(self, dtype, compiler="g++", syntax_only=False):
        self.dtype = numpy.dtype(dtype)
        source = (_HOST_PRELUDE + module_source(dtype)
                  + "".join(_host_solver_source(s) for s in SOLVER_RULES))
        self._dir = tempfile.TemporaryDirectory(prefix="pycaffe_kernels_")
        src, lib = os.path.join(self._dir.name, "k.cpp"), os.path.join(self._dir.name, "k.so")
        with open(src, "w") as f:
            f.write(source)
        build = ["-fsyntax-only"] if syntax_only else ["-O0", "-shared", "-fPIC", "-o", lib]
        done = subprocess.run([compiler, "-Wall", "-Werror", "-Wno-unused-variable", *build, src],
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{compiler} rejected the kernel sources:\n{done.stderr}")
        self.library = None if syntax_only else ctypes.CDLL(lib)

    def _arg(self, kind, value):
        if kind in ("T*", "cT*"):
            if not (isinstance(value, numpy.ndarray) and value.dtype == self.dtype and value.flags.c_contiguous):
                raise TypeError(f"expected a contiguous {self.dtype} array, got {type(value)}")
            return ctypes.c_void_p(value.ctypes.data)
        if kind == "i":
            return ctypes.c_int(int(value))
        return (ctypes.c_float if self.dtype == numpy.float32 else ctypes.c_double)(value)

    def launch(self, name, n, args, dtype):
        signature, _ = RAW_KERNELS[name]
        getattr(self.library, name)(ctypes.c_longlong(n), *[self._arg(kind, a) for (_, kind), a
                                                              in zip(signature, args)])

    def solver(self, solver_type, arrays, scalars):
        outs = solver_outputs(solver_type)
        args = [self._arg("cT*", arrays[a]) for a in SOLVER_ARRAYS_IN] + \
               [self._arg("T*", arrays[o]) for o in outs] + \
               [self._arg("i" if s == "l1" else "T", scalars[s]) for s in SOLVER_SCALARS]
        getattr(self.library, f"{solver_type.lower()}_update")(ctypes.c_longlong(arrays["w"].size), *args)


def nvrtc_check(arch="compute_75"):
    """Compile every kernel to PTX with NVRTC (no GPU needed; needs the
    cupy-cuda12x and nvidia-cuda-nvrtc-cu12 wheels). Returns {name: PTX
    bytes}; raises RuntimeError with NVRTC's log on an error."""
    from cupy_backends.cuda.libs import nvrtc
    sources = {f"raw_{_dtype_name(d)}": module_source(d) for d in (numpy.float32, numpy.float64)}
    for s in SOLVER_RULES:   # the bodies as CuPy binds them (see _host_solver_source)
        sources[f"{s}_float"] = "typedef float T;\n" + _host_solver_source(s).replace(
            'extern "C" void', 'extern "C" __global__ void')
    sizes = {}
    for name, source in sources.items():
        program = nvrtc.createProgram(source, name + ".cu", [], [])
        try:
            nvrtc.compileProgram(program, [f"-arch={arch}", "--std=c++11"])
            sizes[name] = len(nvrtc.getPTX(program))
        except nvrtc.NVRTCError as e:
            raise RuntimeError(f"NVRTC rejected {name}: {e}\n{nvrtc.getProgramLog(program)}") from None
        finally:
            nvrtc.destroyProgram(program)
    return sizes
