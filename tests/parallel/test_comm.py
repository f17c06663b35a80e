"""Loopback communicators (threads and processes), the P2P tree and ordered sums."""
import threading

import numpy
import pytest

from pycaffe_dist.parallel import CommError, LoopbackGroup, SelfComm, run_workers
from pycaffe_dist.parallel.comm import ordered_allreduce
from pycaffe_dist.parallel.p2p_tree import tree_allreduce


def values(rank, n, dtype):
    """Rank-dependent data whose sums are exact in both float types."""
    return (numpy.arange(n, dtype=dtype) % 7) * (rank + 1) + rank


def expected_sum(size, n, dtype):
    return sum(values(r, n, dtype) for r in range(size))


def exercise(worker):
    """Every call of the interface, as one rank; returns what each produced."""
    comm = worker.comm()
    rank, size = comm.rank, comm.size
    out = {}
    for dtype in (numpy.float32, numpy.float64):
        buf = values(rank, 1000, dtype)          # bigger than the test group's 256-byte slots
        comm.allreduce(buf)
        out["allreduce", dtype] = buf
        buf = values(rank, 1000, dtype)
        comm.reduce(buf, root=1)
        out["reduce", dtype] = buf
        buf = values(rank, 333, dtype)
        comm.bcast(buf, root=size - 1)
        out["bcast", dtype] = buf
        buf = values(rank, 500, dtype)
        tree_allreduce(comm, buf)
        out["tree", dtype] = buf
    # A ring of point-to-point messages larger than a mailbox.
    message = values(rank, 300, numpy.float64)
    incoming = numpy.empty_like(message)
    if rank % 2 == 0:
        comm.send(message, (rank + 1) % size)
        comm.recv(incoming, (rank - 1) % size)
    else:
        comm.recv(incoming, (rank - 1) % size)
        comm.send(message, (rank + 1) % size)
    out["ring"] = incoming
    comm.barrier()
    return out


def check(results, size):
    for rank, out in enumerate(results):
        for dtype in (numpy.float32, numpy.float64):
            total = expected_sum(size, 1000, dtype)
            numpy.testing.assert_array_equal(out["allreduce", dtype], total)
            want = total if rank == 1 else values(rank, 1000, dtype)
            numpy.testing.assert_array_equal(out["reduce", dtype], want)
            numpy.testing.assert_array_equal(out["bcast", dtype], values(size - 1, 333, dtype))
            numpy.testing.assert_array_equal(out["tree", dtype], expected_sum(size, 500, dtype))
        numpy.testing.assert_array_equal(out["ring"], values((rank - 1) % size, 300, numpy.float64))


@pytest.mark.parametrize("size", [2, 3, 4])
def test_thread_group_collectives_and_point_to_point(size):
    group = LoopbackGroup(size, capacity=256, mailbox_capacity=128)
    check(run_workers(exercise, size, group=group, processes=False), size)


def test_process_group_collectives_and_point_to_point():
    group = LoopbackGroup(3, processes=True, capacity=256, mailbox_capacity=128)
    check(run_workers(exercise, 3, group=group, processes=True), 3)


def test_allreduce_sums_in_rank_order_to_the_bit():
    # 1e16 + 1 rounds away the 1; the order of the sum decides the result.
    parts = [numpy.array([1e16]), numpy.array([1.0]), numpy.array([-1e16]), numpy.array([1.0])]
    group = LoopbackGroup(4)
    got = run_workers(lambda w: _allreduce_copy(w, parts), 4, group=group, processes=False)
    fold = ((parts[0] + parts[1]) + parts[2]) + parts[3]
    for g in got:
        assert g.tobytes() == fold.tobytes()


def _allreduce_copy(worker, parts):
    buf = parts[worker.rank].copy()
    worker.comm().allreduce(buf)
    return buf


@pytest.mark.parametrize("size,per_rank", [(1, 4), (2, 2), (4, 1)])
def test_ordered_allreduce_is_the_left_fold_for_any_split(size, per_rank):
    items = [numpy.array([1e16, 3.0]), numpy.array([1.0, 1e-3]), numpy.array([-1e16, 7.0]),
             numpy.array([1.0, -1e-3])]
    fold = ((items[0] + items[1]) + items[2]) + items[3]

    def body(worker):
        mine = [items[worker.rank * per_rank + k].copy() for k in range(per_rank)]
        comm = worker.comm() if size > 1 else SelfComm()
        return ordered_allreduce(comm, mine)

    for got in run_workers(body, size, group=LoopbackGroup(size), processes=False):
        assert got.tobytes() == fold.tobytes()


def test_self_comm_is_the_identity():
    comm = SelfComm()
    buf = numpy.arange(4.0)
    comm.allreduce(buf)
    comm.bcast(buf)
    comm.reduce(buf)
    comm.barrier()
    numpy.testing.assert_array_equal(buf, numpy.arange(4.0))
    numpy.testing.assert_array_equal(tree_allreduce(comm, buf), numpy.arange(4.0))
    with pytest.raises(CommError):
        comm.send(buf, 1)


def test_abort_wakes_a_blocked_worker():
    group = LoopbackGroup(2)
    comm = group.comm(0)
    caught = []

    def blocked():
        try:
            comm.recv(numpy.zeros(3), 1)
        except CommError as e:
            caught.append(str(e))
        try:
            comm.barrier()
        except CommError as e:
            caught.append(str(e))

    t = threading.Thread(target=blocked)
    t.start()
    group.abort()
    t.join(5)
    assert not t.is_alive()
    assert len(caught) == 2 and "aborted" in caught[0]


def test_bad_arguments_are_named():
    group = LoopbackGroup(2)
    with pytest.raises(ValueError, match="rank 2 is outside a group of 2"):
        group.comm(2)
    with pytest.raises(CommError, match="cannot send to rank 0"):
        group.comm(0).send(numpy.zeros(2), 0)
    with pytest.raises(TypeError, match="contiguous numpy"):
        group.comm(0).allreduce(numpy.zeros((4, 4))[:, 1])
