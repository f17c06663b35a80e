import io

import numpy
import pytest
from PIL import Image

from pycaffe_dist.data import datum, image
from pycaffe_dist.proto import caffe_pb2


def test_uint8_round_trip_uses_data_bytes():
    arr = numpy.arange(24, dtype=numpy.uint8).reshape(2, 3, 4)
    d = datum.array_to_datum(arr, label=5)
    assert (d.channels, d.height, d.width, d.label) == (2, 3, 4, 5)
    assert d.data == arr.tobytes() and not d.float_data
    back = datum.datum_to_array(datum.parse(d.SerializeToString()))
    numpy.testing.assert_array_equal(back, arr)


def test_float_round_trip_uses_float_data():
    arr = numpy.linspace(-1, 1, 12, dtype=numpy.float32).reshape(1, 3, 4)
    d = datum.array_to_datum(arr)
    assert not d.data and len(d.float_data) == 12
    numpy.testing.assert_array_equal(datum.datum_to_array(d), arr)


def test_encoded_png_decodes_to_bgr():
    rgb = numpy.zeros((2, 3, 3), numpy.uint8)
    rgb[..., 0] = 200   # red
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="PNG")
    arr = datum.datum_to_array(datum.encoded_datum(buf.getvalue(), 1))
    assert arr.shape == (3, 2, 3)
    assert (arr[2] == 200).all() and (arr[:2] == 0).all()  # red is the last channel in BGR
    gray = datum.datum_to_array(datum.encoded_datum(buf.getvalue()), color=False)
    assert gray.shape == (1, 2, 3)


def test_image_encode_decode_round_trip_png():
    arr = numpy.random.default_rng(1).integers(0, 256, (3, 5, 7), dtype=numpy.uint8)
    numpy.testing.assert_array_equal(image.decode(image.encode(arr, "png")), arr)


def test_bad_records_name_the_key():
    with pytest.raises(datum.DatumError, match="record '00000007': not a Datum"):
        datum.parse(b"\xff\xff\xff", b"00000007")
    short = caffe_pb2.Datum(channels=1, height=2, width=2, data=b"abc")
    with pytest.raises(datum.DatumError, match="'k': 3 data bytes for shape 1x2x2"):
        datum.datum_to_array(short, key=b"k")
    with pytest.raises(datum.DatumError, match="record 'e': cannot decode"):
        datum.datum_to_array(datum.encoded_datum(b"not an image"), key=b"e")


def test_mean_file_round_trip(tmp_path):
    mean = numpy.random.default_rng(2).random((3, 4, 5)).astype(numpy.float32)
    path = str(tmp_path / "mean.binaryproto")
    datum.save_mean(path, mean)
    blob = caffe_pb2.BlobProto()
    blob.ParseFromString(open(path, "rb").read())
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 3, 4, 5)  # Caffe's legacy dims
    numpy.testing.assert_array_equal(datum.load_mean(path), mean)
