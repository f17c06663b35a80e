"""A NaN or Inf stops training with the iteration and the first layer named, or skips the step."""
import numpy
import pytest
from google.protobuf import text_format

from pycaffe_dist.proto import caffe_pb2
from pycaffe_dist.solvers import Solver
from pycaffe_dist.solvers.numerics import NumericalError

NET = '''
layer { name: "data" type: "MemoryData" top: "data" top: "label"
        memory_data_param { batch_size: 2 channels: 3 height: 1 width: 1 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
'''


def solver(policy=None, lr=0.1):
    param = text_format.Parse('base_lr: %g lr_policy: "fixed" max_iter: 10 display: 0 '
                              'snapshot_after_train: false' % lr, caffe_pb2.SolverParameter())
    if policy:
        param.nan_policy = policy
    param.net_param.CopyFrom(text_format.Parse(NET, caffe_pb2.NetParameter()))
    s = Solver(param)
    data = numpy.ones((6, 3, 1, 1), numpy.float32)
    data[2, 1] = numpy.nan                      # the second batch holds a NaN
    s.net.layers[0].set_input_arrays(data, numpy.zeros(6, numpy.float32))
    return s


def test_nan_in_the_data_stops_naming_iteration_and_layer():
    s = solver()
    with pytest.raises(NumericalError) as e:
        s.step(5)
    text = str(e.value)
    assert text.startswith("iteration 1: the loss is nan")
    assert "forward output 'data' of layer 'data' (MemoryData)" in text
    assert s.iter == 1


def test_skip_policy_leaves_the_weights_and_goes_on():
    s = solver("skip")
    s.step(1)
    before = s.net.flat_data.copy()
    s.step(1)                                   # the NaN batch: skipped
    assert numpy.array_equal(before, s.net.flat_data)
    assert s.iter == 2 and s.skipped_steps == 1
    s.step(1)
    assert not numpy.array_equal(before, s.net.flat_data)
    assert numpy.isfinite(s.net.flat_data).all()


def test_exploding_gradients_name_the_first_layer():
    s = solver(lr=1e30)
    # Class 1 must win on these inputs, or label 0's loss is already 0 and
    # nothing explodes (random weights made this a coin toss).
    s.net.params["ip"][0].data[...] = [[-1, -1, -1], [1, 1, 1]]
    s.net.layers[0].set_input_arrays(numpy.full((6, 3, 1, 1), 1e30, numpy.float32),
                                     numpy.zeros(6, numpy.float32))
    with pytest.raises(NumericalError, match=r"iteration \d+: .*layer 'ip' \(InnerProduct\)"):
        s.step(10)


@pytest.mark.parametrize("bad", [None, numpy.nan, numpy.inf, -numpy.inf, "overflow"])
def test_gradient_check_finds_every_non_finite_value_and_only_those(bad):
    """gradients_finite sums the gradients in one pass and confirms a
    non-finite sum with max/min: a NaN or an Inf anywhere is found, finite
    gradients whose float32 sum overflows are not reported."""
    from pycaffe_dist.solvers.numerics import gradients_finite
    s = solver()
    g = s.net.flat_diff
    g[...] = numpy.random.default_rng(0).standard_normal(g.size)
    expected = True
    if bad == "overflow":
        g[:] = 3e38                                   # finite; their sum is inf
        with numpy.errstate(over="ignore"):
            assert not numpy.isfinite(g.sum())
    elif bad is not None:
        g[g.size // 2] = bad
        expected = False
    assert gradients_finite(s.net) is expected
