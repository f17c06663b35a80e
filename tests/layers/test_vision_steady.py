"""Steady state: after a warm-up iteration, the vision layers' forward and
backward allocate no array anywhere near the size of their data; every
scratch buffer is reused (numpy reports its allocations to tracemalloc)."""
import tracemalloc

import numpy
import pytest

from pycaffe_dist.blob import Blob
from tests.layers.test_vision import blob, make_layer

F32 = numpy.float32

# Every bottom and top holds at least 1 MB, four times the allowance for
# what numpy itself allocates per call (iteration and casting buffers of
# 8192 elements, a few small reshaped copies): an activation-sized array
# would show.
ALLOWANCE = 256 * 1024
LAYERS = [
    ('name: "c" type: "Convolution" convolution_param { num_output: 32 kernel_size: 5 pad: 2 '
     'weight_filler { type: "gaussian" } }', (64, 32, 16, 16)),
    ('name: "c" type: "Convolution" convolution_param { num_output: 20 kernel_size: 5 '
     'weight_filler { type: "gaussian" } }', (512, 1, 28, 28)),
    ('name: "c" type: "Convolution" convolution_param { num_output: 50 kernel_size: 5 '
     'weight_filler { type: "gaussian" } }', (96, 20, 12, 12)),
    ('name: "c" type: "Convolution" convolution_param { num_output: 16 kernel_size: 3 stride: 2 pad: 1 group: 2 '
     'weight_filler { type: "gaussian" } }', (128, 16, 24, 24)),
    ('name: "d" type: "Deconvolution" convolution_param { num_output: 16 kernel_size: 4 stride: 2 pad: 1 '
     'weight_filler { type: "gaussian" } }', (128, 16, 12, 12)),
    ('name: "p" type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 }', (32, 32, 32, 32)),
    ('name: "p" type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 }', (32, 8, 64, 64)),
]


def iteration(layer, bottom, top):
    layer.forward(bottom, top)
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)


@pytest.mark.parametrize("text, shape", LAYERS)
def test_a_training_iteration_reuses_its_buffers(text, shape):
    layer = make_layer(text, dtype=F32)
    bottom, top = [blob(numpy.random.default_rng(0).standard_normal(shape).astype(F32))], [Blob((), dtype=F32)]
    layer.setup(bottom, top)
    for _ in range(2):
        iteration(layer, bottom, top)
    assert min(bottom[0].data.nbytes, top[0].data.nbytes) >= 4 * ALLOWANCE
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        iteration(layer, bottom, top)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert peak < ALLOWANCE, f"an iteration allocated {peak} bytes at its peak"
