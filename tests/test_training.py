"""End to end: Caffe's LeNet and cifar10_quick learn a small separable problem.

The nets are Caffe's, layer for layer; only the data layers (MemoryData, with
smaller batches to keep the suite quick) and cifar10_quick's learning rate
(0.01 rather than 0.001, to learn in 80 iterations) differ.
"""
import numpy
from google.protobuf import text_format

from pycaffe_dist.proto import caffe_pb2
from pycaffe_dist.solvers import Solver

# Caffe's examples/mnist/lenet_train_test.prototxt with MemoryData in place of Data.
LENET = '''
name: "LeNet"
layer { name: "mnist" type: "MemoryData" top: "data" top: "label" include { phase: TRAIN }
  memory_data_param { batch_size: 32 channels: 1 height: 28 width: 28 } }
layer { name: "mnist" type: "MemoryData" top: "data" top: "label" include { phase: TEST }
  memory_data_param { batch_size: 50 channels: 1 height: 28 width: 28 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 20 kernel_size: 5 stride: 1
    weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 50 kernel_size: 5 stride: 1
    weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: 500 weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy"
  include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
'''

LENET_SOLVER = '''
test_iter: 4 test_interval: 1000 base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005
lr_policy: "inv" gamma: 0.0001 power: 0.75 display: 0 max_iter: %d
snapshot_after_train: false random_seed: 1
'''

# Caffe's examples/cifar10/cifar10_quick_train_test.prototxt with MemoryData.
CIFAR10_QUICK = '''
name: "CIFAR10_quick"
layer { name: "cifar" type: "MemoryData" top: "data" top: "label" include { phase: TRAIN }
  memory_data_param { batch_size: 16 channels: 3 height: 32 width: 32 } }
layer { name: "cifar" type: "MemoryData" top: "data" top: "label" include { phase: TEST }
  memory_data_param { batch_size: 50 channels: 3 height: 32 width: 32 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 32 pad: 2 kernel_size: 5 stride: 1
    weight_filler { type: "gaussian" std: 0.0001 } bias_filler { type: "constant" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "pool1" top: "pool1" }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 32 pad: 2 kernel_size: 5 stride: 1
    weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layer { name: "conv3" type: "Convolution" bottom: "pool2" top: "conv3"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 64 pad: 2 kernel_size: 5 stride: 1
    weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" } } }
layer { name: "relu3" type: "ReLU" bottom: "conv3" top: "conv3" }
layer { name: "pool3" type: "Pooling" bottom: "conv3" top: "pool3"
  pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool3" top: "ip1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: 64 weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "constant" } } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: 10 weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "constant" } } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy"
  include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
'''

CIFAR_SOLVER = '''
test_iter: 4 test_interval: 1000 base_lr: 0.01 momentum: 0.9 weight_decay: 0.004
lr_policy: "fixed" display: 0 max_iter: %d snapshot_after_train: false random_seed: 1
'''


def separable(n, channels, size, classes, seed):
    """Each class is a bright square at its own place, on noise."""
    rng = numpy.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    images = rng.uniform(0, 0.3, (n, channels, size, size)).astype(numpy.float32)
    cell = size // 4
    for i, c in enumerate(labels):
        r, q = divmod(int(c), 4)
        images[i, :, r * cell:(r + 1) * cell, q * cell:(q + 1) * cell] += 0.7
    return images, labels.astype(numpy.float32)


def train(net_text, solver_text, iters, channels, size, classes):
    param = text_format.Parse(solver_text % iters, caffe_pb2.SolverParameter())
    param.net_param.CopyFrom(text_format.Parse(net_text, caffe_pb2.NetParameter()))
    solver = Solver(param)
    train_batch = solver.net.layers[0].batch_size
    solver.net.layers[0].set_input_arrays(*separable(train_batch * 8, channels, size, classes, 1))
    solver.test_nets[0].layers[0].set_input_arrays(*separable(400, channels, size, classes, 2))
    before = solver.test(0)["accuracy"]
    solver.step(iters)
    after = solver.test(0)
    return before, after


def test_lenet_learns_well_above_chance():
    before, after = train(LENET, LENET_SOLVER, 80, 1, 28, 8)
    assert before < 0.4                 # 8 classes: chance is 0.125
    assert after["accuracy"] >= 0.95
    assert after["loss"] < 0.3


def test_cifar10_quick_learns_well_above_chance():
    before, after = train(CIFAR10_QUICK, CIFAR_SOLVER, 80, 3, 32, 4)
    assert before < 0.5                 # 4 classes: chance is 0.25
    assert after["accuracy"] >= 0.9
