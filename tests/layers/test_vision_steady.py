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
    # Fourier (ops/fourier.py): cifar10's conv2 at batch 64
    ('name: "c" type: "Convolution" convolution_param { num_output: 32 kernel_size: 5 pad: 2 '
     'weight_filler { type: "gaussian" } }', (64, 32, 16, 16)),
    ('name: "c" type: "Convolution" convolution_param { num_output: 32 kernel_size: 5 pad: 2 group: 2 '
     'weight_filler { type: "gaussian" } }', (64, 32, 16, 16)),
    ('name: "c" type: "Convolution" convolution_param { num_output: 20 kernel_size: 5 '
     'weight_filler { type: "gaussian" } }', (512, 1, 28, 28)),
    ('name: "c" type: "Convolution" convolution_param { num_output: 50 kernel_size: 5 '
     'weight_filler { type: "gaussian" } }', (96, 20, 12, 12)),
    ('name: "c" type: "Convolution" convolution_param { num_output: 16 kernel_size: 3 stride: 2 pad: 1 group: 2 '
     'weight_filler { type: "gaussian" } }', (128, 16, 24, 24)),
    # Winograd F(2x2, 3x3), F(4x4, 3x3) and F(2x2, 5x5) (ops/winograd.py)
    ('name: "c" type: "Convolution" convolution_param { num_output: 128 kernel_size: 3 pad: 1 '
     'weight_filler { type: "gaussian" } }', (16, 128, 14, 14)),
    ('name: "c" type: "Convolution" convolution_param { num_output: 128 kernel_size: 3 pad: 1 '
     'weight_filler { type: "gaussian" } }', (4, 128, 28, 28)),
    ('name: "c" type: "Convolution" convolution_param { num_output: 64 kernel_size: 5 pad: 2 '
     'weight_filler { type: "gaussian" } }', (4, 64, 32, 32)),
    ('name: "d" type: "Deconvolution" convolution_param { num_output: 16 kernel_size: 4 stride: 2 pad: 1 '
     'weight_filler { type: "gaussian" } }', (128, 16, 12, 12)),
    ('name: "p" type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 }', (32, 32, 32, 32)),
    ('name: "p" type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 }', (32, 8, 64, 64)),
    ('name: "p" type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 }', (32, 8, 64, 64)),
    ('name: "s" type: "SPP" spp_param { pyramid_height: 3 pool: MAX }', (64, 256, 8, 8)),
    ('name: "n" type: "LRN" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }', (16, 96, 27, 27)),
    ('name: "n" type: "LRN" lrn_param { local_size: 3 alpha: 0.00005 beta: 0.75 norm_region: WITHIN_CHANNEL }',
     (100, 32, 16, 16)),
    ('name: "ip" type: "InnerProduct" inner_product_param { num_output: 1024 '
     'weight_filler { type: "gaussian" } }', (256, 1024)),
    ('name: "r" type: "ReLU"', (64, 64, 8, 8)),
    ('name: "d" type: "Dropout" dropout_param { dropout_ratio: 0.5 }', (64, 64, 8, 8)),
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


NET = '''
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 16 dim: 3 dim: 32 dim: 32 } shape { dim: 16 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 64 pad: 2 kernel_size: 5 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layer { name: "pool2" type: "Pooling" bottom: "norm1" top: "pool2"
  pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layer { name: "fc1" type: "InnerProduct" bottom: "pool2" top: "fc1"
  inner_product_param { num_output: 256 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "relu2" type: "ReLU" bottom: "fc1" top: "fc1" }
layer { name: "drop" type: "Dropout" bottom: "fc1" top: "fc1" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2"
  inner_product_param { num_output: 10 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc2" bottom: "label" top: "loss" }
'''


def test_a_whole_training_iteration_reuses_its_buffers():
    # forward, backward and the SGD update (momentum, weight decay) of a net
    # whose conv1 output is 4 MB and fc1 weights 4 MB
    from google.protobuf import text_format

    from pycaffe_dist.proto import caffe_pb2
    from pycaffe_dist.solvers import Solver
    param = text_format.Parse('base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: "fixed" '
                              'display: 0 max_iter: 100 random_seed: 1', caffe_pb2.SolverParameter())
    param.net_param.CopyFrom(text_format.Parse(NET, caffe_pb2.NetParameter()))
    solver = Solver(param)
    rng = numpy.random.default_rng(0)
    solver.net.blobs["data"].data[...] = rng.random((16, 3, 32, 32))
    solver.net.blobs["label"].data[...] = rng.integers(0, 10, 16)
    solver.step(2)
    assert solver.net.blobs["conv1"].data.nbytes >= 16 * ALLOWANCE
    assert solver.net.layers[solver.net.layer_index("fc1")].blobs[0].data.nbytes >= 16 * ALLOWANCE
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        solver.step(1)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert peak < ALLOWANCE, f"a training iteration allocated {peak} bytes at its peak"
