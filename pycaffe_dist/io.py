"""pycaffe's caffe.io: arrays to and from protos, images in, the input Transformer.

Images are handled as pycaffe handles them: `load_image` gives H x W x K
float32 in [0, 1], RGB; `Transformer.preprocess` turns one into the net's
K x H x W input (resize, transpose, channel swap, raw scale, mean, input
scale) and `deprocess` undoes it.
"""
import numpy
from PIL import Image

from .proto import caffe_pb2


# -- protos --------------------------------------------------------------------------
def blobproto_to_array(blob, return_diff=False):
    """BlobProto -> array of its data (or diff), shaped by `shape` or the legacy 4 dims."""
    if return_diff:
        values = blob.double_diff if len(blob.double_diff) else blob.diff
        dtype = numpy.float64 if len(blob.double_diff) else numpy.float32
    else:
        values = blob.double_data if len(blob.double_data) else blob.data
        dtype = numpy.float64 if len(blob.double_data) else numpy.float32
    array = numpy.asarray(values, dtype)
    legacy = any(blob.HasField(f) for f in ("num", "channels", "height", "width"))
    if legacy:
        return array.reshape(blob.num, blob.channels, blob.height, blob.width)
    return array.reshape(tuple(blob.shape.dim))


def array_to_blobproto(arr, diff=None):
    """Array (and optionally its diff, same shape) -> BlobProto with `shape` and float data."""
    arr = numpy.asarray(arr)
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(int(d) for d in arr.shape)
    blob.data.extend(arr.astype(numpy.float32).ravel().tolist())
    if diff is not None:
        blob.diff.extend(numpy.asarray(diff, numpy.float32).ravel().tolist())
    return blob


def arraylist_to_blobprotovector_str(arraylist):
    """List of arrays -> serialized BlobProtoVector bytes."""
    vector = caffe_pb2.BlobProtoVector()
    vector.blobs.extend(array_to_blobproto(a) for a in arraylist)
    return vector.SerializeToString()


def blobprotovector_str_to_arraylist(text):
    """Serialized BlobProtoVector bytes -> list of arrays."""
    vector = caffe_pb2.BlobProtoVector()
    vector.ParseFromString(text)
    return [blobproto_to_array(b) for b in vector.blobs]


def array_to_datum(arr, label=None):
    """C x H x W array -> Datum: uint8 arrays into `data` (bytes), others into `float_data`."""
    arr = numpy.asarray(arr)
    if arr.ndim != 3:
        raise ValueError("array_to_datum takes a C x H x W array, got shape %s" % (arr.shape,))
    datum = caffe_pb2.Datum(channels=arr.shape[0], height=arr.shape[1], width=arr.shape[2])
    if arr.dtype == numpy.uint8:
        datum.data = numpy.ascontiguousarray(arr).tobytes()
    else:
        datum.float_data.extend(arr.astype(numpy.float32).ravel().tolist())
    if label is not None:
        datum.label = int(label)
    return datum


def datum_to_array(datum):
    """Datum -> C x H x W array (uint8 from `data`, float from `float_data`); the label is datum.label."""
    shape = (datum.channels, datum.height, datum.width)
    if len(datum.data):
        return numpy.frombuffer(datum.data, numpy.uint8).reshape(shape)
    return numpy.asarray(datum.float_data, numpy.float32).reshape(shape)


# -- images --------------------------------------------------------------------------
def load_image(filename, color=True):
    """An image file -> H x W x 3 (color) or H x W x 1 float32 array in [0, 1], RGB order."""
    with Image.open(filename) as im:
        im = im.convert("RGB" if color else "L")
        array = numpy.asarray(im, numpy.float32) / 255.0
    return array if color else array[:, :, None]


def _resize_axis(im, size, axis, order):
    """Resample one axis to `size`, sampling pixel centres (edges repeat beyond the border)."""
    n = im.shape[axis]
    if n == size:
        return im
    pos = (numpy.arange(size) + 0.5) * (n / size) - 0.5
    if order == 0:
        index = numpy.clip(numpy.floor(pos + 0.5).astype(int), 0, n - 1)
        return numpy.take(im, index, axis=axis)
    pos = numpy.clip(pos, 0, n - 1)
    lo = numpy.floor(pos).astype(int)
    hi = numpy.minimum(lo + 1, n - 1)
    w = (pos - lo).astype(numpy.float32)
    shape = [1] * im.ndim
    shape[axis] = size
    w = w.reshape(shape)
    low = numpy.take(im, lo, axis=axis)
    # low + (high - low) * w keeps a constant image exactly constant.
    return low + (numpy.take(im, hi, axis=axis) - low) * w


def resize_image(im, new_dims, interp_order=1):
    """Resize H x W x K `im` to new_dims (height, width); interp_order 0 nearest, else bilinear.

    Returns float32. Sampling is at pixel centres, so a constant image stays
    constant and the image is not shifted.
    """
    im = numpy.asarray(im, numpy.float32)
    if interp_order not in (0, 1):
        interp_order = 1  # higher orders: bilinear (no spline dependency)
    height, width = int(new_dims[0]), int(new_dims[1])
    out = _resize_axis(im, height, 0, interp_order)
    out = _resize_axis(out, width, 1, interp_order)
    return numpy.ascontiguousarray(out, numpy.float32)


def oversample(images, crop_dims):
    """Ten crops of each H x W x K image: 4 corners and centre, then the same mirrored.

    Returns (10 * N) x crop_h x crop_w x K float32, image by image.
    """
    ch, cw = int(crop_dims[0]), int(crop_dims[1])
    h, w = images[0].shape[:2]
    ty, tx = int((h - ch) / 2.0), int((w - cw) / 2.0)
    corners = [(0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw), (ty, tx)]
    crops = numpy.empty((10 * len(images), ch, cw, images[0].shape[-1]), numpy.float32)
    for i, im in enumerate(images):
        for k, (y, x) in enumerate(corners):
            crops[10 * i + k] = im[y:y + ch, x:x + cw]
        crops[10 * i + 5:10 * i + 10] = crops[10 * i:10 * i + 5, :, ::-1]
    return crops


# -- the input transformer -------------------------------------------------------------
class Transformer:
    """Turns H x W x K images into a net's K x H x W inputs and back (pycaffe's caffe.io.Transformer).

    `inputs` maps input names to their blob shapes (N x K x H x W). For each
    input, preprocess applies, in order: resize to H x W, transpose, channel
    swap, raw scale, mean subtraction, input scale.
    """

    def __init__(self, inputs):
        self.inputs = {name: tuple(shape) for name, shape in inputs.items()}
        self.transpose = {}
        self.channel_swap = {}
        self.raw_scale = {}
        self.mean = {}
        self.input_scale = {}

    def _check(self, in_):
        if in_ not in self.inputs:
            raise KeyError("%s is not one of the net inputs: %s" % (in_, sorted(self.inputs)))

    def preprocess(self, in_, data):
        """One H x W x K image -> the K x H x W float32 array input `in_` takes."""
        self._check(in_)
        x = numpy.asarray(data).astype(numpy.float32)
        size = self.inputs[in_][2:]
        if x.shape[:2] != tuple(size):
            x = resize_image(x, size)
        if in_ in self.transpose:
            x = x.transpose(self.transpose[in_])
        if in_ in self.channel_swap:
            x = x[list(self.channel_swap[in_])]
        if in_ in self.raw_scale:
            x = x * self.raw_scale[in_]
        if in_ in self.mean:
            x = x - self.mean[in_]
        if in_ in self.input_scale:
            x = x * self.input_scale[in_]
        return numpy.ascontiguousarray(x, numpy.float32)

    def deprocess(self, in_, data):
        """Undo preprocess (except the resize): a net input -> H x W x K image."""
        self._check(in_)
        x = numpy.array(data, numpy.float32).squeeze()
        if in_ in self.input_scale:
            x = x / self.input_scale[in_]
        if in_ in self.mean:
            x = x + self.mean[in_]
        if in_ in self.raw_scale:
            x = x / self.raw_scale[in_]
        if in_ in self.channel_swap:
            x = x[numpy.argsort(self.channel_swap[in_])]
        if in_ in self.transpose:
            x = x.transpose(numpy.argsort(self.transpose[in_]))
        return x

    def set_transpose(self, in_, order):
        """Axis order from the image's to the net's, e.g. (2, 0, 1) for H x W x K -> K x H x W."""
        self._check(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise ValueError("transpose order %s needs one entry per axis of %s's items %s"
                             % (tuple(order), in_, self.inputs[in_][1:]))
        self.transpose[in_] = tuple(order)

    def set_channel_swap(self, in_, order):
        """Reorder channels after the transpose, e.g. (2, 1, 0) for RGB -> BGR."""
        self._check(in_)
        if len(order) != self.inputs[in_][1]:
            raise ValueError("channel swap %s needs one entry per channel of %s (%d)"
                             % (tuple(order), in_, self.inputs[in_][1]))
        self.channel_swap[in_] = tuple(order)

    def set_raw_scale(self, in_, scale):
        """Multiply the image before the mean is subtracted, e.g. 255 for [0, 1] images and a [0, 255] mean."""
        self._check(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_, mean):
        """Subtract a per-channel mean (K values) or a per-pixel mean (K x H x W)."""
        self._check(in_)
        mean = numpy.asarray(mean, numpy.float32)
        if mean.ndim == 1:
            if mean.shape[0] != self.inputs[in_][1]:
                raise ValueError("mean has %d channels but %s has %d" % (mean.shape[0], in_, self.inputs[in_][1]))
            mean = mean[:, None, None]
        else:
            shape = (1,) + mean.shape if mean.ndim == 2 else mean.shape
            if len(shape) != 3 or shape != tuple(self.inputs[in_][1:]):
                raise ValueError("mean shape %s does not match %s's item shape %s"
                                 % (mean.shape, in_, self.inputs[in_][1:]))
            mean = mean.reshape(shape)
        self.mean[in_] = mean

    def set_input_scale(self, in_, scale):
        """Multiply after the mean is subtracted (e.g. 0.017 for a net trained on scaled inputs)."""
        self._check(in_)
        self.input_scale[in_] = scale
