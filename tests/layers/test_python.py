"""The Python layer: user classes written as for pycaffe, inside nets and solvers."""
import sys
import textwrap

import numpy
import pytest
from google.protobuf import text_format

import pycaffe_dist as caffe
from pycaffe_dist.blob import Blob
from pycaffe_dist.gradient_check import check_gradient
from pycaffe_dist.layers import layer_class
from pycaffe_dist.net import NetError
from pycaffe_dist.proto import caffe_pb2

MODULE = "pycaffe_dist_test_userlayers"
SOURCE = '''
import json
import numpy
import pycaffe_dist as caffe


class BrokenError(Exception):
    pass


class ScaleByParam(caffe.Layer):
    """y = k * w * x: k from param_str (JSON), w a learnable scalar starting at 1.5."""

    def setup(self, bottom, top):
        if len(bottom) != 1:
            raise ValueError("ScaleByParam takes one bottom")
        self.k = json.loads(self.param_str)["k"]
        self.blobs.add_blob(1)
        self.blobs[0].data[...] = 1.5

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.k * self.blobs[0].data[0] * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = self.k * self.blobs[0].data[0] * top[0].diff
        self.blobs[0].diff[0] += self.k * (top[0].diff * bottom[0].data).sum()


class EuclideanPy(caffe.Layer):
    """Caffe's pyloss example: sum((a - b)^2) / 2N."""

    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        self.diff = numpy.zeros_like(bottom[0].data)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = numpy.sum(self.diff ** 2) / bottom[0].num / 2.0

    def backward(self, top, propagate_down, bottom):
        for i, sign in ((0, 1), (1, -1)):
            if propagate_down[i]:
                bottom[i].diff[...] = sign * top[0].diff[0] * self.diff / bottom[i].num


class PhaseTag(caffe.Layer):
    def reshape(self, bottom, top):
        top[0].reshape(1)

    def forward(self, bottom, top):
        top[0].data[...] = self.phase


class Broken(caffe.Layer):
    def setup(self, bottom, top):
        if self.param_str == "setup":
            raise BrokenError("broken in setup")
        if self.param_str == "value":
            raise ValueError("a user's own ValueError")

    def reshape(self, bottom, top):
        top[0].reshape(1)

    def forward(self, bottom, top):
        raise BrokenError("broken in forward")
'''


@pytest.fixture(scope="module")
def user_module(tmp_path_factory):
    folder = tmp_path_factory.mktemp("userlayers")
    (folder / (MODULE + ".py")).write_text(textwrap.dedent(SOURCE))
    sys.path.insert(0, str(folder))
    yield __import__(MODULE)
    sys.path.remove(str(folder))
    sys.modules.pop(MODULE, None)


def python_layer(cls, param_str="", extra=""):
    return 'python_param { module: "%s" layer: "%s" param_str: \'%s\' } %s' % (MODULE, cls, param_str, extra)


def net_from(tmp_path, text, phase=caffe.TRAIN):
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    return caffe.Net(str(path), phase)


def test_forward_backward_and_gradient_check(user_module):
    text = 'name: "s" type: "Python" bottom: "x" top: "y" ' + python_layer("ScaleByParam", '{"k": 2.0}')
    layer = layer_class("Python")(text_format.Parse(text, caffe_pb2.LayerParameter()), 0)
    layer.dtype = numpy.float64
    x = numpy.random.default_rng(0).normal(size=(2, 3))
    bottom, top = [Blob(x.shape, numpy.float64)], [Blob((), numpy.float64)]
    bottom[0].data[...] = x
    checked = check_gradient(layer, bottom, top)
    assert checked == x.size + 1
    numpy.testing.assert_allclose(top[0].data, 2.0 * 1.5 * x)


def test_in_a_net_with_attributes_and_learnable_blob(user_module, tmp_path):
    text = '''
      force_backward: true
      layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
      layer { name: "scale" type: "Python" bottom: "x" top: "y" %s }
      layer { name: "tag" type: "Python" top: "phase" %s }
    ''' % (python_layer("ScaleByParam", '{"k": 3.0}'), python_layer("PhaseTag"))
    net = net_from(tmp_path, text, caffe.TEST)
    user = net.layer_dict["scale"]
    assert isinstance(user, user_module.ScaleByParam)
    assert user.param_str == '{"k": 3.0}' and user.phase == caffe.TEST and user.type == "Python"
    # Its learnable blob is the net's parameter, in the flat buffer.
    assert net.params["scale"][0] is user.blobs[0] and net.params["scale"][0].data[0] == 1.5
    x = numpy.arange(6, dtype=numpy.float32).reshape(2, 3)
    out = net.forward(x=x)
    numpy.testing.assert_allclose(out["y"], 4.5 * x)
    assert out["phase"][0] == caffe.TEST
    net.clear_param_diffs()
    diffs = net.backward(y=numpy.ones((2, 3), numpy.float32), phase=numpy.zeros(1, numpy.float32))
    numpy.testing.assert_allclose(diffs["x"], numpy.full((2, 3), 4.5))
    assert net.params["scale"][0].diff[0] == pytest.approx(3.0 * x.sum())


def test_python_loss_trains_like_the_builtin_one(user_module, tmp_path):
    net = '''
      layer { name: "in" type: "Input" top: "data" top: "y"
              input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 } } }
      layer { name: "ip" type: "InnerProduct" bottom: "data" top: "pred"
              inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 } } }
      layer { name: "loss" type: "%s" bottom: "pred" bottom: "y" top: "loss" %s }
    '''
    solver = 'net: "%s" base_lr: 0.1 momentum: 0.9 lr_policy: "fixed" max_iter: 10 display: 0 random_seed: 7'
    (tmp_path / "builtin.prototxt").write_text(net % ("EuclideanLoss", ""))
    (tmp_path / "python.prototxt").write_text(net % ("Python", "loss_weight: 1 " + python_layer("EuclideanPy")))
    rng = numpy.random.default_rng(4)
    x, y = rng.normal(size=(4, 3)), rng.normal(size=(4, 2))
    weights = []
    for name in ("builtin", "python"):
        (tmp_path / (name + "_solver.prototxt")).write_text(solver % (tmp_path / (name + ".prototxt")))
        s = caffe.SGDSolver(str(tmp_path / (name + "_solver.prototxt")))
        s.net.blobs["data"].data[...] = x
        s.net.blobs["y"].data[...] = y
        s.step(5)
        weights.append(s.net.params["ip"][0].data.copy())
    numpy.testing.assert_allclose(weights[1], weights[0], rtol=1e-5, atol=1e-6)


def test_user_exceptions_reach_the_caller_unchanged(user_module, tmp_path):
    base = 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 } } }\n'
    broken = 'layer { name: "b" type: "Python" bottom: "x" top: "y" %s }'
    with pytest.raises(user_module.BrokenError, match="broken in setup"):
        net_from(tmp_path, base + broken % python_layer("Broken", "setup"))
    with pytest.raises(ValueError, match="a user's own ValueError") as info:
        net_from(tmp_path, base + broken % python_layer("Broken", "value"))
    assert type(info.value) is ValueError
    net = net_from(tmp_path, base + broken % python_layer("Broken"))
    with pytest.raises(user_module.BrokenError, match="broken in forward"):
        net.forward()


def test_missing_module_or_class_is_a_net_error_with_position(user_module, tmp_path):
    text = 'layer { name: "p" type: "Python" top: "y" python_param { module: "no_such_mod_xyz" layer: "X" } }'
    with pytest.raises(NetError, match=r"net.prototxt:1:.*no_such_mod_xyz.*PYTHONPATH"):
        net_from(tmp_path, text)
    text = 'layer { name: "p" type: "Python" top: "y" python_param { module: "%s" layer: "Nope" } }' % MODULE
    with pytest.raises(NetError, match="has no class 'Nope'"):
        net_from(tmp_path, text)


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_python_loss_under_the_parallel_solver(user_module, tmp_path, monkeypatch, mode):
    from pycaffe_dist import parallel
    monkeypatch.setenv("PYTHONPATH", str(user_module.__file__).rpartition("/")[0])
    (tmp_path / "net.prototxt").write_text('''
      layer { name: "d" type: "DummyData" top: "data" top: "y"
              dummy_data_param { shape { dim: 8 dim: 3 } shape { dim: 8 dim: 2 } data_filler { type: "gaussian" } } }
      layer { name: "ip" type: "InnerProduct" bottom: "data" top: "pred"
              inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 } } }
      layer { name: "loss" type: "Python" bottom: "pred" bottom: "y" top: "loss" loss_weight: 1 %s }
    ''' % python_layer("EuclideanPy"))
    (tmp_path / "solver.prototxt").write_text(
        'net: "%s" base_lr: 0.01 lr_policy: "fixed" max_iter: 4 display: 0 random_seed: 1'
        % (tmp_path / "net.prototxt"))
    result = parallel.train(str(tmp_path / "solver.prototxt"), workers=2, mode=mode)
    assert result.iter == 4 and result.digests[0] == result.digests[1]
