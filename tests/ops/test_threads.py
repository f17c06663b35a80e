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
    del seen[:]
    calls = choice.PROBE
    for _ in range(calls):
        threads.run(tasks, choice)
    # One call in PROBE tries the other way; every other call runs the faster one.
    on_pool_calls = seen.count(False)
    assert on_pool_calls == (calls - 1 if faster else 1)


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
