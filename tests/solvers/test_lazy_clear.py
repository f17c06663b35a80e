"""The solver clears InnerProduct weight gradients lazily (Net.clear_param_diffs(lazily=True)):
the layer writes them whole instead of adding to zeros. Training must not change by a bit."""
import numpy
from google.protobuf import text_format

from pycaffe_dist.net import Net
from pycaffe_dist.proto import caffe_pb2
from pycaffe_dist.solvers import Solver

NET = '''
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 8 dim: 12 } shape { dim: 8 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param { num_output: 10 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" param { name: "shared" }
        inner_product_param { num_output: 10 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "ip3" type: "InnerProduct" bottom: "ip2" top: "ip3" param { name: "shared" }
        inner_product_param { num_output: 10 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "frozen" type: "InnerProduct" bottom: "ip3" top: "frozen" param { lr_mult: 0 }
        inner_product_param { num_output: 10 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "ip4" type: "InnerProduct" bottom: "frozen" top: "ip4"
        inner_product_param { num_output: 3 transpose: true weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip4" bottom: "label" top: "loss" }
'''


def solver():
    param = text_format.Parse('base_lr: 0.05 momentum: 0.9 weight_decay: 0.01 lr_policy: "fixed" iter_size: 2 '
                              'display: 0 max_iter: 100 random_seed: 3', caffe_pb2.SolverParameter())
    param.net_param.CopyFrom(text_format.Parse(NET, caffe_pb2.NetParameter()))
    s = Solver(param)
    rng = numpy.random.default_rng(0)
    s.net.blobs["data"].data[...] = rng.standard_normal((8, 12))
    s.net.blobs["label"].data[...] = rng.integers(0, 3, 8)
    return s


def test_lazy_clearing_trains_to_the_same_bits(monkeypatch):
    lazy = solver()
    blobs, _ = lazy.net._write_first()
    chosen = {name for name, layer in zip(lazy.net.layer_names, lazy.net.layers)
              if layer.blobs and any(layer.blobs[0] is b for b in blobs)}
    assert chosen == {"ip1", "ip4"}       # not the shared weights, not the frozen ones
    lazy.step(6)
    monkeypatch.setattr(Net, "clear_param_diffs", lambda self, lazily=False: self.flat_diff.fill(0))
    eager = solver()
    eager.step(6)
    assert numpy.array_equal(lazy.net.flat_data, eager.net.flat_data)
    assert numpy.array_equal(lazy.net.flat_diff, eager.net.flat_diff)


def test_a_lazily_cleared_gradient_reads_as_zeros():
    s = solver()
    s.step(1)
    net = s.net
    assert numpy.abs(net.flat_diff).max() > 0
    net.clear_param_diffs(lazily=True)
    for name in ("ip1", "ip4"):
        weight = net.params[name][0]
        assert weight.diff_owes_zeros
        assert not weight.diff.any()                # reading writes the zeros
        assert not weight.diff_owes_zeros
    net.clear_param_diffs(lazily=True)
    net.forward()
    net.backward(start="ip4", end="ip4")            # only ip4 writes its gradient
    assert net.params["ip4"][0].diff.any()
    assert not net.flat_diff[net.learnable[0].offset:net.learnable[0].offset + 120].any()   # ip1's: zeros
    assert not any(p.blob.diff_owes_zeros for p in net.learnable)
