"""InnerProduct and LRN on several of the ops' threads: the same values as
one thread (to float rounding), checked against products written here."""
import numpy
import pytest

from pycaffe_dist.ops import inner_product, threads
from tests.layers.test_common import blob_of, make_layer, tops


def inner_product_iteration(transpose, x, dy, monkeypatch, count):
    monkeypatch.setattr(threads, "count", lambda xp=None: count)
    layer = make_layer('name: "ip" type: "InnerProduct" inner_product_param { num_output: 7 transpose: %s '
                       'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }'
                       % ("true" if transpose else "false"))
    from pycaffe_dist import backend
    backend.set_random_seed(3)
    bottom, top = [blob_of(x)], tops()
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    top[0].diff[...] = dy
    layer.backward(top, [True], bottom)
    layer.backward(top, [True], bottom)          # the weight gradient accumulates
    return layer, top[0].data.copy(), bottom[0].diff.copy(), layer.blobs[0].diff.copy()


@pytest.mark.parametrize("transpose", [False, True])
def test_inner_product_on_several_threads_matches_the_products(transpose, monkeypatch):
    monkeypatch.setattr(inner_product, "SPLIT_FLOPS", 0)           # split even tiny products
    monkeypatch.setattr(inner_product, "BLOCK_BYTES", 3 * 8 * 5)   # weight-gradient blocks of a few rows
    rng = numpy.random.default_rng(4)
    x = rng.standard_normal((6, 2, 5))                              # K = 10
    dy = rng.standard_normal((6, 7))
    results = {}
    for count in (1, 2, 3, 2):
        layer, y, dx, dw = inner_product_iteration(transpose, x, dy, monkeypatch, count)
        if count in results:                                        # same split, same bits
            for a, b in zip(results[count], (y, dx, dw)):
                numpy.testing.assert_array_equal(a, b)
        results[count] = (y, dx, dw)
    w = layer.blobs[0].data
    wn = w.T if transpose else w                                    # (N, K)
    flat = x.reshape(6, 10)
    expected = (flat @ wn.T + layer.blobs[1].data, (dy @ wn).reshape(x.shape), 2 * (dy.T @ flat))
    for count, got in results.items():
        dw = got[2].T if transpose else got[2]
        for a, b in zip(expected, got[:2] + (dw,)):
            numpy.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12, err_msg=f"{count} threads")
