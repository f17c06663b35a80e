import threading
import time

import numpy
import pytest

from pycaffe_dist.data.prefetch import Pipeline, PipelineError


class CountingSource:
    """Records are their own offsets; remembers how far it has read."""

    def __init__(self, offset=0, fail_at=None):
        self.offset = offset
        self.fail_at = fail_at
        self.closed = False

    def read(self, n):
        if self.fail_at is not None and self.offset >= self.fail_at:
            raise OSError("disk on fire")
        records = list(range(self.offset, self.offset + n))
        self.offset += n
        return records

    def state(self):
        return self.offset

    def close(self):
        self.closed = True


def noisy_decode(records):
    # Out-of-order finishing across workers must not reorder batches.
    time.sleep(0.002 * (records[0] % 3))
    rng = numpy.random.default_rng(records)   # depends on the records only
    return numpy.array(records), rng.random(3)


def collect(workers, mode="thread", n=12):
    with Pipeline(CountingSource(), noisy_decode, batch_size=4, prefetch=3, workers=workers, mode=mode) as p:
        return [p.next() for _ in range(n)]


def test_order_and_content_do_not_depend_on_worker_count():
    import multiprocessing
    one = collect(1)
    assert [list(b[0]) for b in one[:2]] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    for got in (collect(0), collect(3), collect(2, mode="process", n=6)):
        for a, b in zip(one, got):
            numpy.testing.assert_array_equal(a[0], b[0])
            numpy.testing.assert_array_equal(a[1], b[1])
    assert multiprocessing.active_children() == []   # the process pool is gone after close


def test_queue_is_bounded_by_prefetch():
    source = CountingSource()
    with Pipeline(source, noisy_decode, batch_size=2, prefetch=3, workers=2) as p:
        p.next()
        time.sleep(0.2)
        # One batch consumed, at most `prefetch` queued, one more held by a blocked reader.
        assert source.offset <= 2 * (1 + 3 + 1)
        assert p.state == 2


def test_wait_time_is_measured():
    def slow(records):
        time.sleep(0.05)
        return records
    with Pipeline(CountingSource(), slow, batch_size=1, prefetch=1) as p:
        p.next()
        assert p.wait_seconds_last >= 0.03
        time.sleep(0.15)      # let the next batch get ready
        p.next()
        assert p.wait_seconds_last < 0.03
        assert p.wait_seconds_total >= p.wait_seconds_last and p.batches == 2


def test_errors_reach_the_consumer():
    def bad(records):
        raise ValueError("record %d is corrupt" % records[0])
    with Pipeline(CountingSource(), bad, batch_size=2) as p, pytest.raises(ValueError, match="record 0 is corrupt"):
        p.next()
    with Pipeline(CountingSource(fail_at=4), noisy_decode, batch_size=2) as p:
        p.next()
        p.next()
        with pytest.raises(OSError, match="disk on fire"):
            p.next()


def test_close_stops_every_thread_and_the_source():
    before = set(threading.enumerate())
    source = CountingSource()
    p = Pipeline(source, noisy_decode, batch_size=2, prefetch=2, workers=3)
    p.next()
    assert len(p.threads()) == 4
    p.close()
    p.close()   # twice is fine
    assert p.threads() == [] and source.closed
    assert set(threading.enumerate()) <= before
    with pytest.raises(PipelineError, match="closed"):
        p.next()


def test_dropping_the_pipeline_stops_its_threads():
    before = set(threading.enumerate())
    p = Pipeline(CountingSource(), noisy_decode, batch_size=2, workers=2)
    p.next()
    del p
    deadline = time.time() + 5
    while set(threading.enumerate()) - before and time.time() < deadline:
        time.sleep(0.05)
    assert not set(threading.enumerate()) - before
