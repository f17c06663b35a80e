"""Hogwild: workers sharing one weight buffer without locks, as threads and as processes."""
import functools
import os

import pytest

from pycaffe_dist import parallel

from . import helpers


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hogwild_data")
    return (helpers.write_dataset(str(folder / "train_lmdb"), 400, seed=1),
            helpers.write_dataset(str(folder / "test_lmdb"), 100, seed=2))


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_hogwild_converges_on_a_separable_problem(tmp_path, data, mode):
    train, test = data
    path = helpers.write_solver(str(tmp_path), "hog", 8, 150, train,
                                "test_iter: 2 test_interval: 150 test_initialization: false",
                                test_data=test)
    result = parallel.train(path, workers=2, strategy="hogwild", mode=mode, return_weights=True)
    assert [r["iter"] for r in result.reports] == [150, 150]
    assert result.test_scores[0]["accuracy"] >= 0.95
    assert result.test_scores[0]["loss"] < 0.3


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_hogwild_workers_share_one_weight_buffer(tmp_path, data, mode):
    train, _ = data
    folder = str(tmp_path)
    path = helpers.write_solver(folder, "hog", 8, 2, train, base_lr=0, weight_decay=0)
    result = parallel.train(path, workers=3, strategy="hogwild", mode=mode,
                            setup=functools.partial(helpers.probe_sharing, folder))
    for rank in (1, 2):
        with open(os.path.join(folder, "seen%d" % rank)) as f:
            assert f.read() == "yes"
    assert len(set(result.digests)) == 1       # nothing moved (lr 0): one buffer everywhere


@pytest.mark.skipif(not helpers.fashion_available(), reason=helpers.FASHION_MISSING)
def test_hogwild_reaches_single_worker_accuracy_on_fashion_mnist(tmp_path):
    iters, batch = 1600, 64
    single = parallel.train(helpers.write_fashion_solver(str(tmp_path), batch, iters), workers=1,
                            strategy="hogwild", setup=helpers.feed_fashion)
    baseline = single.test_scores[0]["accuracy"]
    assert baseline > 0.8
    for mode in ("thread", "process"):
        # Two workers, each with half the iterations: the same number of samples seen.
        path = helpers.write_fashion_solver(str(tmp_path), batch, iters // 2)
        hogwild = parallel.train(path, workers=2, strategy="hogwild", mode=mode, setup=helpers.feed_fashion)
        assert abs(hogwild.test_scores[0]["accuracy"] - baseline) < 0.01, (mode, baseline, hogwild.test_scores)
