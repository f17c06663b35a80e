"""caffe.io: proto conversions, images, and the Transformer, against hand computations."""
import numpy
import pytest
from PIL import Image

from pycaffe_dist import io
from pycaffe_dist.proto import caffe_pb2


def test_blobproto_round_trips_with_shape_diff_and_legacy_dims():
    a = numpy.arange(24, dtype=numpy.float32).reshape(2, 3, 4)
    blob = io.array_to_blobproto(a, diff=-a)
    assert list(blob.shape.dim) == [2, 3, 4] and not blob.HasField("num")
    numpy.testing.assert_array_equal(io.blobproto_to_array(blob), a)
    numpy.testing.assert_array_equal(io.blobproto_to_array(blob, return_diff=True), -a)
    legacy = caffe_pb2.BlobProto(num=1, channels=2, height=1, width=3, data=[1, 2, 3, 4, 5, 6])
    assert io.blobproto_to_array(legacy).shape == (1, 2, 1, 3)
    arrays = [a, numpy.ones((5,), numpy.float32)]
    back = io.blobprotovector_str_to_arraylist(io.arraylist_to_blobprotovector_str(arrays))
    assert len(back) == 2 and all((x == y).all() for x, y in zip(arrays, back))


def test_datum_conversions():
    pixels = numpy.arange(12, dtype=numpy.uint8).reshape(3, 2, 2)
    datum = io.array_to_datum(pixels, label=7)
    assert datum.data == pixels.tobytes() and datum.label == 7 and not len(datum.float_data)
    numpy.testing.assert_array_equal(io.datum_to_array(datum), pixels)
    floats = numpy.linspace(0, 1, 12).reshape(3, 2, 2)
    datum = io.array_to_datum(floats)
    assert not datum.data and datum.label == 0
    numpy.testing.assert_allclose(io.datum_to_array(datum), floats, rtol=1e-6)
    with pytest.raises(ValueError, match="C x H x W"):
        io.array_to_datum(numpy.zeros((2, 2)))


def test_load_image_color_and_gray(tmp_path):
    rgb = numpy.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [10, 20, 30]]], numpy.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    im = io.load_image(str(tmp_path / "x.png"))
    assert im.shape == (2, 2, 3) and im.dtype == numpy.float32
    numpy.testing.assert_allclose(im, rgb / 255.0, rtol=1e-6)
    gray = io.load_image(str(tmp_path / "x.png"), color=False)
    assert gray.shape == (2, 2, 1)
    # ITU-R 601-2 luma, as the PIL "L" conversion computes it.
    assert gray[0, 0, 0] == pytest.approx(round(255 * 299 / 1000) / 255, abs=1 / 255)


def bilinear_reference(im, h, w):
    """Pixel-centre bilinear resampling written as a plain double loop."""
    H, W = im.shape[:2]
    out = numpy.zeros((h, w) + im.shape[2:])
    for i in range(h):
        y = min(max((i + 0.5) * H / h - 0.5, 0), H - 1)
        y0 = int(numpy.floor(y))
        y1 = min(y0 + 1, H - 1)
        for j in range(w):
            x = min(max((j + 0.5) * W / w - 0.5, 0), W - 1)
            x0 = int(numpy.floor(x))
            x1 = min(x0 + 1, W - 1)
            fy, fx = y - y0, x - x0
            out[i, j] = ((1 - fy) * (1 - fx) * im[y0, x0] + (1 - fy) * fx * im[y0, x1]
                         + fy * (1 - fx) * im[y1, x0] + fy * fx * im[y1, x1])
    return out


def test_resize_image():
    im = numpy.array([[0, 1], [2, 3]], numpy.float32)[:, :, None]
    up = io.resize_image(im, (4, 4))
    numpy.testing.assert_allclose(up[0, :, 0], [0, 0.25, 0.75, 1])
    numpy.testing.assert_allclose(up[:, 0, 0], [0, 0.5, 1.5, 2])
    rng = numpy.random.default_rng(0)
    img = rng.random((5, 7, 3)).astype(numpy.float32)
    for size in [(9, 4), (3, 3), (10, 14)]:
        numpy.testing.assert_allclose(io.resize_image(img, size), bilinear_reference(img, *size), rtol=1e-5, atol=1e-6)
    # Halving averages 2 x 2 blocks.
    numpy.testing.assert_allclose(io.resize_image(img[:4, :6], (2, 3)),
                                  img[:4, :6].reshape(2, 2, 3, 2, 3).mean(axis=(1, 3)), rtol=1e-5)
    near = io.resize_image(im, (4, 4), interp_order=0)
    numpy.testing.assert_array_equal(near[:, :, 0], numpy.kron([[0, 1], [2, 3]], numpy.ones((2, 2))))
    assert (io.resize_image(numpy.full((3, 3, 1), 0.7), (5, 2)) == numpy.float32(0.7)).all()


def test_oversample_takes_corners_centre_and_mirrors():
    images = numpy.random.default_rng(1).random((2, 6, 8, 3)).astype(numpy.float32)
    crops = io.oversample(images, (4, 4))
    assert crops.shape == (20, 4, 4, 3)
    im = images[1]
    expected = [im[:4, :4], im[:4, 4:], im[2:, :4], im[2:, 4:], im[1:5, 2:6]]
    for k, crop in enumerate(expected):
        numpy.testing.assert_array_equal(crops[10 + k], crop)
        numpy.testing.assert_array_equal(crops[15 + k], crop[:, ::-1])


def test_transformer_preprocess_and_deprocess():
    t = io.Transformer({"data": (1, 3, 4, 5)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    mean = numpy.array([104.0, 117.0, 123.0])
    t.set_mean("data", mean)
    t.set_input_scale("data", 0.5)
    img = numpy.random.default_rng(2).random((4, 5, 3)).astype(numpy.float32)
    out = t.preprocess("data", img)
    expected = (img[:, :, ::-1].transpose(2, 0, 1) * 255 - mean[:, None, None]) * 0.5
    assert out.shape == (3, 4, 5) and out.dtype == numpy.float32
    numpy.testing.assert_allclose(out, expected, rtol=1e-5)
    numpy.testing.assert_allclose(t.deprocess("data", out), img, rtol=1e-5, atol=1e-5)
    # An image of another size is resized first.
    assert t.preprocess("data", numpy.zeros((8, 10, 3))).shape == (3, 4, 5)
    t.set_mean("data", numpy.zeros((3, 4, 5)))
    with pytest.raises(ValueError, match="mean"):
        t.set_mean("data", numpy.zeros((3, 2, 2)))
    with pytest.raises(ValueError, match="channel"):
        t.set_channel_swap("data", (1, 0))
    with pytest.raises(KeyError, match="not one of the net inputs"):
        t.preprocess("image", img)
