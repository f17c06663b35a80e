"""The data transformer: (x - mean) * scale, crop and mirror, as Caffe's.

Random choices (crop offsets in TRAIN, mirror flips) are a pure function of
a seed and the record's *offset*, the running count of records the reader
has passed. That is what makes the pipeline deterministic whatever the
number of decode workers and whichever worker runs a batch, lets a resumed
run continue exactly, and gives N sharded workers the same crops as one
worker reading all N shards.
"""
import numpy

from .datum import load_mean

TRAIN, TEST = 0, 1

# Stream ids for the independent random draws of one record.
_CROP_H, _CROP_W, _MIRROR = 1, 2, 3
_M64 = numpy.uint64(0xFFFFFFFFFFFFFFFF)


def uniform(seed, offsets, stream):
    """Uniform [0, 1) floats, one per offset, from a counter-based hash (splitmix64)."""
    with numpy.errstate(over="ignore"):
        z = numpy.asarray(offsets, numpy.uint64) * numpy.uint64(0x9E3779B97F4A7C15)
        z = z + numpy.uint64((int(seed) * 0xD1B54A32D192ED03 + stream * 0xABC98388FB8FAC03) & 0xFFFFFFFFFFFFFFFF)
        z = z ^ (z >> numpy.uint64(30))
        z = z * numpy.uint64(0xBF58476D1CE4E5B9)
        z = z ^ (z >> numpy.uint64(27))
        z = z * numpy.uint64(0x94D049BB133111EB)
        z = z ^ (z >> numpy.uint64(31))
    return (z >> numpy.uint64(11)).astype(numpy.float64) * (1.0 / (1 << 53))


def _dims(shape):
    return "x".join(str(d) for d in shape)


class TransformError(ValueError):
    """A record that does not fit the transformation (crop too big, mean of another size)."""


class DataTransformer:
    """Apply a TransformationParameter to batches of C x H x W arrays.

    Args:
        param: caffe_pb2.TransformationParameter (or anything with its fields).
        phase: 0 TRAIN (random crop) or 1 TEST (centred crop).
        seed: base of every random draw; same seed, same batches.
    """

    def __init__(self, param, phase=TRAIN, seed=0):
        self.scale = float(param.scale)
        self.crop = int(param.crop_size)
        self.mirror = bool(param.mirror)
        self.phase = phase
        self.seed = int(seed)
        if param.force_color and param.force_gray:
            raise TransformError("force_color and force_gray cannot both be set")
        # What encoded records decode to: 3 channels, 1, or as the file is.
        self.color = True if param.force_color else (False if param.force_gray else None)
        self.mean = None
        self.mean_file = param.mean_file
        self.mean_values = None
        if param.mean_file and len(param.mean_value):
            raise TransformError("set mean_file or mean_value, not both")
        if param.mean_file:
            try:
                self.mean = load_mean(param.mean_file)
            except ValueError as e:     # MeanError: it names the file
                raise TransformError(f"mean_file {e}") from None
        elif len(param.mean_value):
            self.mean_values = numpy.asarray(param.mean_value, numpy.float32)

    # -- shapes ---------------------------------------------------------------
    def output_shape(self, shape):
        """The shape of a transformed C x H x W record; refuses a crop or mean that does not fit it."""
        c, h, w = shape
        self._mean_for(tuple(shape))
        if self.crop:
            if self.crop > h or self.crop > w:
                raise TransformError(f"crop_size {self.crop} is larger than the {h}x{w} image")
            return (c, self.crop, self.crop)
        return (c, h, w)

    def _mean_for(self, shape):
        """The mean to subtract from an image of `shape`, broadcastable to it."""
        c, _h, _w = shape
        if self.mean is not None:
            if self.mean.shape != shape:
                raise TransformError(f"mean_file {self.mean_file} is {_dims(self.mean.shape)} but the data "
                                     f"is {_dims(shape)}")
            return self.mean
        if self.mean_values is not None:
            values = self.mean_values
            if len(values) == 1:
                values = numpy.repeat(values, c)
            elif len(values) != c:
                raise TransformError(f"{len(values)} mean_value entries for {c} channels")
            return values.reshape(c, 1, 1)
        return None

    # -- transforming ---------------------------------------------------------
    def transform_batch(self, images, offsets, out=None):
        """Transform C x H x W arrays of one shape into an N x C x h x w float32 array.

        `images` is a list of arrays or one N x C x H x W array; `offsets` are
        the records' running offsets (see the module docstring).
        """
        stacked = isinstance(images, numpy.ndarray) and images.ndim == 4
        shape = tuple(images.shape[1:] if stacked else images[0].shape)
        for i, im in enumerate(() if stacked else images):
            if tuple(im.shape) != shape:
                raise TransformError(f"item {i} of the batch is {_dims(im.shape)}, item 0 is {_dims(shape)}: "
                                     "records in a batch must have one size (resize them or set crop_size)")
        n = len(images)
        _c, h, w = shape
        oshape = self.output_shape(shape)
        if out is None:
            out = numpy.empty((n,) + oshape, numpy.float32)
        mean = self._mean_for(shape)
        offsets = numpy.asarray(offsets, numpy.uint64)
        flips = (uniform(self.seed, offsets, _MIRROR) < 0.5) if self.mirror else numpy.zeros(n, bool)

        if not self.crop:
            # Whole-batch arithmetic: one pass per operation, no per-image loop.
            out[...] = images if stacked else numpy.stack(images)
            if mean is not None:
                out -= mean
            if self.scale != 1:
                out *= self.scale
            if flips.any():
                out[flips] = out[flips][..., ::-1]
            return out

        k = self.crop
        if self.phase == TRAIN:
            hs = numpy.floor(uniform(self.seed, offsets, _CROP_H) * (h - k + 1)).astype(int)
            ws = numpy.floor(uniform(self.seed, offsets, _CROP_W) * (w - k + 1)).astype(int)
        else:
            hs = numpy.full(n, (h - k) // 2)
            ws = numpy.full(n, (w - k) // 2)
        for i, im in enumerate(images):
            y, x = hs[i], ws[i]
            window = im[:, y:y + k, x:x + k]
            if flips[i]:
                window = window[..., ::-1]
            dst = out[i]
            if mean is not None:
                m = mean[:, y:y + k, x:x + k] if mean.shape[1] > 1 else mean
                # One pass: convert, reorder and subtract together.
                numpy.subtract(window, m[..., ::-1] if flips[i] and mean.shape[2] > 1 else m, out=dst)
            else:
                dst[...] = window
            if self.scale != 1:
                dst *= self.scale
        return out
