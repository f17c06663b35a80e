"""ops.threads: a Choice keeps whichever way of running an op's lanes its
timings favour, and the way changes no result."""
import threading
import time

import numpy
import pytest

from pycaffe_dist.ops import ConvGeometry, Convolution, threads


def lanes_that_sleep(on_pool, on_caller, seen):
    """Two lanes that sleep `on_pool` seconds on a pool thread and
    `on_caller` on the calling thread, noting where they ran."""
    def lane():
        here = threading.current_thread() is threading.main_thread()
        seen.append(here)
        time.sleep(on_caller if here else on_pool)
    return [lane, lane]


@pytest.mark.parametrize("on_pool, on_caller, faster", [
    (0.01, 0.01, True),         # sleeps overlap on two threads: 10 ms at once, 20 ms in turn
    (0.02, 0.0, False),         # a pool thread is slow: in turn on the caller, ~0 ms
])
def test_choice_settles_on_the_faster_way(on_pool, on_caller, faster):
    choice, seen = threads.Choice(), []
    tasks = lanes_that_sleep(on_pool, on_caller, seen)
    trials = choice.WARMUP + 2 * choice.TRIALS
    for _ in range(trials):
        threads.run(tasks, choice)
    assert choice.best() is faster
    # 2x apart is a clear choice: the other way is tried once in PROBE_CLEAR calls.
    assert choice.interval() == choice.PROBE_CLEAR
    del seen[:]
    calls = choice.interval()
    for _ in range(calls):
        threads.run(tasks, choice)
    # One call in the interval tries the other way; every other call runs the faster one.
    on_pool_calls = seen.count(False)
    assert on_pool_calls == (calls - 1 if faster else 1)


def drive(choice, at_once, in_turn, calls):
    """`calls` calls of a Choice whose ways take these (made-up) times;
    returns the ways it picked."""
    ways = []
    for _ in range(calls):
        way = choice.parallel(2)
        choice.record(way, at_once if way else in_turn)
        ways.append(way)
    return ways


def test_probes_are_rarer_once_one_way_is_clearly_faster():
    choice = threads.Choice()
    settle = choice.WARMUP + 2 * choice.TRIALS
    drive(choice, 1.1, 1.0, settle)                 # 10% apart: not clear
    assert choice.best() is False and choice.interval() == choice.PROBE
    ways = drive(choice, 1.1, 1.0, choice.PROBE)
    assert ways.count(True) == 1                    # one probe at once per PROBE calls
    drive(choice, 0.5, 1.0, 4 * choice.PROBE)       # now at once takes half the time
    assert choice.best() is True and choice.interval() == choice.PROBE_CLEAR
    ways = drive(choice, 0.5, 1.0, choice.PROBE_CLEAR)
    assert ways.count(False) == 1


def test_choices_probe_in_different_calls():
    """Ops make their Choices together and are called once a step each:
    their probes fall in different steps, not all in one."""
    choices = [threads.Choice() for _ in range(4)]
    probes = []
    for choice in choices:
        ways = drive(choice, 0.9, 1.0, choice.WARMUP + 2 * choice.TRIALS + choice.PROBE)
        probes.append(ways.index(False, choice.WARMUP + 2 * choice.TRIALS))
    assert len(set(probes)) == len(probes)


def test_choice_measures_again_when_the_lanes_change():
    choice = threads.Choice()
    ways = [choice.parallel(2) for _ in range(choice.WARMUP + 2 * choice.TRIALS)]
    assert ways == [True, False] * (choice.WARMUP // 2 + choice.TRIALS)
    assert choice.parallel(3) is True and choice._calls == 1


def convolution_step(x, w, b, dy, way, monkeypatch):
    """A forward and backward of a 3x3 convolution on 2 lanes, its lanes run
    at once (way True) or in turn (False)."""
    monkeypatch.setattr(threads, "count", lambda xp=None: 2)
    monkeypatch.setattr(threads.Choice, "parallel", lambda self, lanes: way)
    monkeypatch.setattr(threads.Choice, "record", lambda self, way, seconds: None)
    op = Convolution(ConvGeometry((3, 3), (1, 1), (1, 1), (1, 1)))
    y = numpy.empty(dy.shape)
    dw, db, dx = numpy.zeros_like(w), numpy.zeros_like(b), numpy.empty_like(x)
    op.forward(x, w, b, y)
    op.backward(x, dy, w, dw, db, dx)
    return y, dw, db, dx


def test_lanes_in_turn_give_the_bits_of_lanes_at_once(monkeypatch):
    from pycaffe_dist.ops import conv
    monkeypatch.setattr(conv, "COLUMN_BYTES", 2000)    # several chunks per lane
    rng = numpy.random.default_rng(21)
    x, w, b = rng.standard_normal((7, 4, 6, 5)), rng.standard_normal((3, 4, 3, 3)), rng.standard_normal(3)
    dy = rng.standard_normal((7, 3, 6, 5))
    at_once = convolution_step(x, w, b, dy, True, monkeypatch)
    in_turn = convolution_step(x, w, b, dy, False, monkeypatch)
    for a, c in zip(at_once, in_turn):
        numpy.testing.assert_array_equal(a, c)
    # and the values are the convolution's: y and dW written out here
    padded = numpy.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = numpy.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))   # (n, c, h, w, 3, 3)
    numpy.testing.assert_allclose(at_once[0], numpy.einsum("nchwij,ocij->nohw", windows, w) + b[:, None, None],
                                  rtol=1e-12, atol=1e-12)
    numpy.testing.assert_allclose(at_once[1], numpy.einsum("nchwij,nohw->ocij", windows, dy), rtol=1e-12, atol=1e-12)


def conv1_step(lanes, monkeypatch, expect=None, with_dx=True):
    """Forward and backward of cifar10_quick's conv1 (3 -> 32, 5x5, pad 2,
    batch 100) on `lanes` lanes; the op (told `expect` of dx first, if
    given) and the bytes its workspace holds after."""
    monkeypatch.setattr(threads, "count", lambda xp=None: lanes)
    rng = numpy.random.default_rng(3)
    x, w, b = (rng.standard_normal(s).astype(numpy.float32) for s in ((100, 3, 32, 32), (32, 3, 5, 5), (32,)))
    op = Convolution(ConvGeometry((5, 5), (1, 1), (2, 2), (1, 1)))
    if expect is not None:
        op.expect_dx(expect)
    y = numpy.empty((100, 32, 32, 32), numpy.float32)
    op.forward(x, w, b, y)
    op.backward(x, rng.standard_normal(y.shape).astype(numpy.float32), w, numpy.zeros_like(w), numpy.zeros_like(b),
                numpy.empty_like(x) if with_dx else None)
    return op, sum(a.nbytes for a in op.workspace._arrays.values())


def test_batch_last_columns_at_two_lanes_take_no_more_memory_than_at_one(monkeypatch):
    """Batch-last columns are far beyond a cache whatever their size: the
    lanes share the one-thread budget, so two threads hold no more scratch
    than one (each lane took the whole budget: 42 MB against 22)."""
    from pycaffe_dist.ops import conv
    from pycaffe_dist.ops.conv_batch_last import BatchLast
    held = {}
    for lanes in (1, 2):
        op, held[lanes] = conv1_step(lanes, monkeypatch)
        assert op._plan((100, 3, 32, 32), 32, 4).layout is BatchLast
    assert held[1] > conv.COLUMN_BYTES * conv.conv_cost.BATCH_LAST_SCALE // 2   # the columns are most of it
    assert held[2] <= held[1] * 1.05, held


def test_a_convolution_on_the_data_plans_without_an_input_gradient(monkeypatch):
    """Told before its first forward that no dx is wanted, the op builds
    only that plan's buffers; not told, it drops the buffers of the plan
    it guessed at its first backward, and holds no more (forward's own
    weight matrix it makes again at the next forward)."""
    told, held_told = conv1_step(1, monkeypatch, expect=False, with_dx=False)
    guessed, held_guessed = conv1_step(1, monkeypatch, with_dx=False)
    assert told.needs_dx is False and guessed.needs_dx is False
    assert held_guessed <= held_told
    _, held_with_dx = conv1_step(1, monkeypatch)
    assert held_told < held_with_dx / 2


def test_the_net_tells_its_convolutions_which_need_an_input_gradient():
    from google.protobuf import text_format

    from pycaffe_dist.net import Net
    from pycaffe_dist.proto import caffe_pb2
    text = """
    layer { name: "data" type: "Input" top: "data" top: "label"
      input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } shape { dim: 2 } } }
    layer { name: "c1" type: "Convolution" bottom: "data" top: "c1" convolution_param { num_output: 4 kernel_size: 3 } }
    layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2" convolution_param { num_output: 4 kernel_size: 3 } }
    layer { name: "ip" type: "InnerProduct" bottom: "c2" top: "ip" inner_product_param { num_output: 3 } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }"""
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffe_pb2.TRAIN)
    ops = {name: net.layers[net.layer_index(name)].op for name in ("c1", "c2")}
    assert ops["c1"].needs_dx is False and ops["c2"].needs_dx is True


def test_a_forked_child_runs_lanes_on_threads_of_its_own(monkeypatch):
    """The parent's lane threads do not exist in a forked child (a data
    worker, a test harness): the child's first split op starts its own
    instead of waiting forever on the parent's queues."""
    import os
    import signal
    monkeypatch.setattr(threads, "count", lambda xp=None: 2)
    names = []
    threads.run([lambda: None, lambda: names.append(threading.current_thread().name)])
    assert names and names[0].startswith("pycaffe-dist-op")
    pid = os.fork()
    if pid == 0:    # the child: a hang ends it by the alarm, a wrong result by its exit status
        signal.alarm(20)
        try:
            ok = threads.run([lambda: 1, lambda: threading.current_thread().name]) == [1, names[0]]
            os._exit(0 if ok else 3)
        except BaseException:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
