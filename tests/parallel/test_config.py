"""parallel_param, its command-line overrides, and deterministic mode's batch rewrite."""
import pytest
from google.protobuf import text_format

from pycaffe_dist.graph import make_state
from pycaffe_dist.net import TRAIN
from pycaffe_dist.parallel import ConfigError, from_solver
from pycaffe_dist.parallel.shards import scale_batch
from pycaffe_dist.proto import caffe_pb2
from pycaffe_dist.solvers.base import SolverError


def solver(text=""):
    return text_format.Parse(text, caffe_pb2.SolverParameter())


def test_defaults_are_one_synchronous_worker():
    s = from_solver(solver())
    assert (s.strategy, s.workers, s.mode, s.layer_wise, s.deterministic, s.algorithm) == \
        ("sync", 1, "process", True, False, "mpi")
    assert not s.parallel


def test_workers_alone_mean_synchronous_data_parallel_in_processes():
    s = from_solver(solver(), workers=3)
    assert (s.strategy, s.workers, s.mode, s.shards) == ("sync", 3, "process", 3)
    assert s.parallel


def test_prototxt_declares_and_the_command_line_overrides():
    p = solver('parallel_param { strategy: "hogwild" workers: 4 }')
    s = from_solver(p)
    assert (s.strategy, s.workers, s.mode) == ("hogwild", 4, "process")
    assert from_solver(p, mode="thread").mode == "thread"
    s = from_solver(p, workers=2, strategy="sync")
    assert (s.strategy, s.workers, s.mode) == ("sync", 2, "process")


def test_gpus_set_the_worker_count():
    assert from_solver(solver(), gpus=[0, 1]).workers == 2
    with pytest.raises(ConfigError, match="--workers 3 conflicts with 2 GPUs"):
        from_solver(solver(), gpus=[0, 1], workers=3)


def test_deterministic_shards_default_to_workers_and_must_divide():
    s = from_solver(solver("parallel_param { deterministic: true }"), workers=2)
    assert (s.shards, s.shards_per_worker) == (2, 1)
    s = from_solver(solver(), workers=1, deterministic=True, shards=3)
    assert (s.shards, s.shards_per_worker) == (3, 3)
    assert s.parallel
    with pytest.raises(ConfigError, match="shards \\(3\\) to be a multiple of workers \\(2\\)"):
        from_solver(solver(), workers=2, deterministic=True, shards=3)


@pytest.mark.parametrize("overrides,message", [
    (dict(strategy="ring"), "unknown parallel strategy 'ring'"),
    (dict(workers=0), "workers must be at least 1"),
    (dict(mode="fork"), "unknown parallel mode 'fork'"),
    (dict(algorithm="gossip"), "unknown reduction algorithm 'gossip'"),
    (dict(strategy="hogwild", deterministic=True), "cannot be deterministic"),
    (dict(strategy="hogwild", gpus=[0]), "does not run on GPUs"),
])
def test_conflicts_are_explained(overrides, message):
    with pytest.raises(ConfigError, match=message):
        from_solver(solver(), **overrides)


NET = '''
layer { name: "train" type: "Data" top: "d" top: "l" include { phase: TRAIN } data_param { batch_size: 12 } }
layer { name: "test" type: "Data" top: "d" top: "l" include { phase: TEST } data_param { batch_size: 100 } }
layer { name: "both" type: "MemoryData" top: "m" top: "n" memory_data_param { batch_size: 6 } }
layer { name: "dummy" type: "DummyData" top: "x" top: "y"
  dummy_data_param { shape { dim: 12 dim: 3 } shape { dim: 12 } } }
layer { name: "input" type: "Input" top: "z" input_param { shape { dim: 5 } } }
'''


def test_scale_batch_rewrites_only_what_the_train_phase_reads():
    net = text_format.Parse(NET, caffe_pb2.NetParameter())
    out = scale_batch(net, 1, 3, make_state(TRAIN))
    layers = {layer.name: layer for layer in out.layer}
    assert layers["train"].data_param.batch_size == 4
    assert layers["test"].data_param.batch_size == 100
    assert layers["both"].memory_data_param.batch_size == 2
    assert [list(s.dim) for s in layers["dummy"].dummy_data_param.shape] == [[4, 3], [4]]
    assert list(layers["input"].input_param.shape[0].dim) == [5]
    assert net.layer[0].data_param.batch_size == 12       # the input is not changed


def test_scale_batch_refuses_uneven_shards():
    net = text_format.Parse(NET, caffe_pb2.NetParameter())
    with pytest.raises(SolverError, match="layer 'train': batch 12 cannot be split into 5 shards"):
        scale_batch(net, 1, 5, make_state(TRAIN))
