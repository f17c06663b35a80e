"""Small problems for the cluster tests: a separable data set fed through MemoryData, and an MLP."""
import os

import numpy

CLASSES, FEATURES = 4, 8
TRAIN, TEST = 576, 200          # 576 = 16 * lcm(2, 3, 4) * 3: every shard is whole batches


def write_separable(path, seed=0):
    """An .npz of four well separated Gaussian clusters in 8-D (train_x/train_y, test_x/test_y)."""
    centres = numpy.random.default_rng(0).normal(0, 3, (CLASSES, FEATURES))
    rng = numpy.random.default_rng(seed)

    def draw(n):
        y = rng.integers(CLASSES, size=n)
        x = centres[y] + rng.normal(0, 1, (n, FEATURES))
        return x.reshape(n, FEATURES, 1, 1).astype(numpy.float32), y.astype(numpy.float32)
    train_x, train_y = draw(TRAIN)
    test_x, test_y = draw(TEST)
    numpy.savez(path, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y)
    return path


MLP = '''name: "separable_mlp"
layer { name: "data" type: "MemoryData" top: "data" top: "label" include { phase: TRAIN }
  memory_data_param { batch_size: %(batch)d channels: %(features)d height: 1 width: 1 } }
layer { name: "data" type: "MemoryData" top: "data" top: "label" include { phase: TEST }
  memory_data_param { batch_size: 50 channels: %(features)d height: 1 width: 1 } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param { num_output: 16 weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: %(classes)d weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy" include { phase: TEST } }
'''


def write_mlp_solver(folder, name, max_iter=40, batch=16, extra=""):
    """A solver training the MLP above with momentum SGD; the root tests on all 200 test points at the end."""
    net = os.path.join(folder, name + "_net.prototxt")
    with open(net, "w") as f:
        f.write(MLP % {"batch": batch, "features": FEATURES, "classes": CLASSES})
    path = os.path.join(folder, name + "_solver.prototxt")
    with open(path, "w") as f:
        f.write('net: "%s" test_iter: %d test_interval: %d test_initialization: false\n'
                'base_lr: 0.05 momentum: 0.9 weight_decay: 0.0005 lr_policy: "fixed"\n'
                'max_iter: %d display: 0 snapshot_after_train: false random_seed: 5\n%s\n'
                % (net, TEST // 50, max_iter, max_iter, extra))
    return path
