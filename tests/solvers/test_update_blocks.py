"""The solver update runs in cache-sized blocks with scalar multipliers per
block, split over the ops' threads: its bits must be those of the same
formulas applied to the whole flat buffer with per-element multipliers."""
import numpy
import pytest
from google.protobuf import text_format

from pycaffe_dist.ops import threads
from pycaffe_dist.proto import caffe_pb2
from pycaffe_dist.solvers import Solver, base, updates

NET = '''
layer { name: "data" type: "MemoryData" top: "data" top: "y"
        memory_data_param { batch_size: 2 channels: 6 height: 1 width: 1 } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "h"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 1 }
                              bias_filler { type: "gaussian" std: 1 } } }
layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "pred"
        param { lr_mult: 0.5 decay_mult: 3 } param { lr_mult: 0.5 decay_mult: 3 }
        inner_product_param { num_output: 1 weight_filler { type: "gaussian" std: 1 }
                              bias_filler { type: "gaussian" std: 1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "pred" bottom: "y" top: "loss" }
'''


def solver(solver_type, regularization):
    param = text_format.Parse('''
      base_lr: 0.05 lr_policy: "fixed" momentum: 0.9 momentum2: 0.999 delta: 1e-6 rms_decay: 0.95
      weight_decay: 0.01 regularization_type: "%s" iter_size: 3 type: "%s" max_iter: 1
      random_seed: 3 display: 0''' % (regularization, solver_type), caffe_pb2.SolverParameter())
    param.net_param.CopyFrom(text_format.Parse(NET, caffe_pb2.NetParameter()))
    return Solver(param, "<test>", dtype=numpy.float32)


def whole_buffer_update(s, g, w, history, rate):
    """The formulas over whole buffers, multipliers per element (as written out here)."""
    p, f32 = s.param, numpy.float32
    lr_mult, decay_mult = numpy.zeros_like(w), numpy.zeros_like(w)
    for info in s.net.learnable:
        lr_mult[info.offset:info.offset + info.blob.count] = info.lr_mult
        decay_mult[info.offset:info.offset + info.blob.count] = info.decay_mult
    g *= f32(1.0 / p.iter_size)
    shrink = numpy.sign(w) if p.regularization_type == "L1" else w
    g += shrink * (decay_mult * f32(p.weight_decay))
    tmp = numpy.empty_like(w)
    updates.RULES[s.type][0](numpy, p, g, lr_mult * f32(rate), history, tmp, s.iter)
    w -= g


@pytest.mark.parametrize("solver_type", sorted(updates.RULES))
@pytest.mark.parametrize("regularization", ["L2", "L1"])
@pytest.mark.parametrize("thread_count", [1, 2, 3])
def test_blocked_update_equals_the_whole_buffer_formulas(monkeypatch, solver_type, regularization, thread_count):
    monkeypatch.setattr(base, "_BLOCK", 4)           # blocks that cut through parameters
    monkeypatch.setattr(threads, "count", lambda xp=numpy: thread_count)
    s = solver(solver_type, regularization)
    assert len(s._blocks) > len(s.net.learnable)
    rng = numpy.random.default_rng(7)
    w, history = s.net.flat_data.copy(), [h.copy() for h in s.history]
    for _ in range(3):
        g = rng.normal(size=w.size).astype(numpy.float32)
        s.net.flat_diff[...] = g
        s.apply_update()
        whole_buffer_update(s, g, w, history, s.learning_rate())
        s.iter += 1
        assert s.net.flat_data.tobytes() == w.tobytes()
        for got, want in zip(s.history, history):
            assert got.tobytes() == want.tobytes()
    assert numpy.abs(w - s.net.flat_data).max() == 0 and numpy.abs(history[0]).max() > 0


@pytest.mark.parametrize("lanes", [1, 2, 3, 4])
def test_the_threads_get_equal_shares_of_the_update(lanes):
    """Each thread's run of blocks holds the same number of elements, give or
    take one, and together they are the blocks in order, multipliers kept."""
    s = solver("SGD", "L2")
    runs = base.lane_blocks(s._blocks, lanes)
    sizes = [sum(stop - start for start, stop, _, _ in run) for run in runs]
    assert len(runs) == lanes and max(sizes) - min(sizes) <= 1
    pieces = [block for run in runs for block in run]
    assert pieces[0][0] == s._blocks[0][0] and pieces[-1][1] == s._blocks[-1][1]
    assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))
    for start, stop, lr_mult, decay_mult in pieces:
        whole = next(b for b in s._blocks if b[0] <= start and stop <= b[1])
        assert (lr_mult, decay_mult) == whole[2:]
