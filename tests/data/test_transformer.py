import numpy
import pytest

from pycaffe_dist.data import datum
from pycaffe_dist.data.transformer import TEST, TRAIN, DataTransformer, TransformError
from pycaffe_dist.proto import caffe_pb2


def tparam(**fields):
    p = caffe_pb2.TransformationParameter()
    for name, value in fields.items():
        if name == "mean_value":
            p.mean_value.extend(value)
        else:
            setattr(p, name, value)
    return p


def images(n=4, shape=(3, 8, 9), seed=0):
    rng = numpy.random.default_rng(seed)
    return [rng.integers(0, 256, shape, dtype=numpy.uint8) for _ in range(n)]


def test_scale_and_mean_value():
    ims = images()
    out = DataTransformer(tparam(scale=0.5, mean_value=[1, 2, 3])).transform_batch(ims, range(4))
    ref = (numpy.stack(ims).astype(numpy.float32) - numpy.array([1, 2, 3], numpy.float32).reshape(3, 1, 1)) * 0.5
    numpy.testing.assert_allclose(out, ref)
    one = DataTransformer(tparam(mean_value=[10])).transform_batch(ims, range(4))
    numpy.testing.assert_allclose(one, numpy.stack(ims) - 10.0)


def test_mean_file_is_taken_at_the_crop_window(tmp_path):
    ims = images()
    mean = numpy.random.default_rng(3).random((3, 8, 9)).astype(numpy.float32) * 100
    datum.save_mean(str(tmp_path / "m.binaryproto"), mean)
    t = DataTransformer(tparam(mean_file=str(tmp_path / "m.binaryproto"), crop_size=5, scale=2.0), TEST)
    out = t.transform_batch(ims, range(4))
    y, x = (8 - 5) // 2, (9 - 5) // 2   # centred in TEST
    ref = (numpy.stack(ims)[:, :, y:y + 5, x:x + 5] - mean[:, y:y + 5, x:x + 5]) * 2.0
    numpy.testing.assert_allclose(out, ref, rtol=1e-6)


def test_random_crop_in_train_is_a_window_and_keyed_by_offset():
    ims = images(n=16)
    t = DataTransformer(tparam(crop_size=4), TRAIN, seed=7)
    out = t.transform_batch(ims, range(100, 116))
    positions = set()
    for im, o in zip(ims, out):
        hits = [(y, x) for y in range(5) for x in range(6) if numpy.array_equal(im[:, y:y + 4, x:x + 4], o)]
        assert hits, "output is not a window of the input"
        positions.add(hits[0])
    assert len(positions) > 3   # really random
    # Same seed and offsets give the same crops, in any batch split.
    again = numpy.concatenate([t.transform_batch(ims[:5], range(100, 105)),
                               t.transform_batch(ims[5:], range(105, 116))])
    numpy.testing.assert_array_equal(out, again)
    other = DataTransformer(tparam(crop_size=4), TRAIN, seed=8).transform_batch(ims, range(100, 116))
    assert not numpy.array_equal(out, other)


def test_mirror_flips_some_and_subtracts_mean_before_flipping(tmp_path):
    ims = images(n=32, shape=(1, 3, 4))
    mean = numpy.arange(12, dtype=numpy.float32).reshape(1, 3, 4)
    datum.save_mean(str(tmp_path / "m.binaryproto"), mean)
    for crop in (0, 3):
        t = DataTransformer(tparam(mirror=True, mean_file=str(tmp_path / "m.binaryproto"), crop_size=crop), TEST)
        out = t.transform_batch(ims, range(32))
        flipped = 0
        kh, kw = (crop, crop) if crop else (3, 4)
        y, x = (3 - kh) // 2, (4 - kw) // 2
        for im, o in zip(ims, out):
            plain = im[:, y:y + kh, x:x + kw] - mean[:, y:y + kh, x:x + kw]
            if numpy.array_equal(o, plain[..., ::-1]) and not numpy.array_equal(o, plain):
                flipped += 1
            else:
                numpy.testing.assert_array_equal(o, plain)
        assert 4 < flipped < 28


def test_errors():
    with pytest.raises(TransformError, match="crop_size 10 is larger than the 8x9 image"):
        DataTransformer(tparam(crop_size=10)).transform_batch(images(), range(4))
    with pytest.raises(TransformError, match="2 mean_value entries for 3 channels"):
        DataTransformer(tparam(mean_value=[1, 2])).transform_batch(images(), range(4))
    with pytest.raises(TransformError, match="not both"):
        DataTransformer(tparam(force_color=True, force_gray=True))
    mixed = images(2) + images(1, shape=(3, 5, 5))
    with pytest.raises(TransformError, match="item 2 of the batch is 3x5x5, item 0 is 3x8x9"):
        DataTransformer(tparam()).transform_batch(mixed, range(3))
