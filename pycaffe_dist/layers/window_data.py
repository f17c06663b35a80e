"""WindowData: R-CNN style batches of image windows (Caffe's window_data_param).

The window file lists, for each image,

    # <image index>
    <image path>            (prefixed with root_folder as given, no separator)
    <channels> <height> <width>
    <number of windows>
    <class> <overlap> <x1> <y1> <x2> <y2>     (one line per window, inclusive pixels)

A window with overlap >= fg_threshold is foreground (its class must be > 0);
one with overlap < bg_threshold is background (class forced to 0); the rest
are dropped. Each batch holds batch_size - floor(batch_size * fg_fraction)
background windows, then the foreground ones, each drawn at random, cut out
of its image with `context_pad` pixels of context (and made square first in
crop_mode "square"), warped to crop_size x crop_size, mirrored at random,
mean-subtracted and scaled. Where the context reaches past the image border
the output stays zero, as in Caffe.

crop_size, mirror and the mean come from transform_param (Caffe 1.0), scale
from window_data_param; the old window_data_param fields are used when
transform_param leaves them unset. Warping is Pillow's bilinear resize, so
pixels can differ slightly from Caffe's OpenCV warp. Batches are made on the
calling thread; the random draws depend only on a seed and the batch number,
so a resumed run gets the same batches.
"""
import math

import numpy

from .. import backend
from ..data import image
from ..data.datum import load_mean
from .data import SourceLayer
from .base import register


def c_round(x):
    """C's round(): halves away from zero (Python's round() goes to even)."""
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def read_window_file(path, root_folder=""):
    """{image index: (path, (channels, height, width), [(class, overlap, x1, y1, x2, y2), ...])}."""
    try:
        with open(path, encoding="utf-8") as f:
            tokens = f.read().split()
    except OSError as e:
        raise ValueError("%s: cannot read the window file: %s" % (path, e.strerror)) from None
    if not tokens:
        raise ValueError("%s: the window file is empty" % path)
    images, k = {}, 0

    def take(n, what):
        nonlocal k
        if k + n > len(tokens):
            raise ValueError("%s: ends in the middle of %s" % (path, what))
        k += n
        return tokens[k - n:k]

    try:
        while k < len(tokens):
            hashtag, index = take(2, "an image header")
            if hashtag != "#":
                raise ValueError("%s: expected '# <image index>', found %r" % (path, hashtag))
            (image_path,) = take(1, "an image header")
            size = tuple(int(v) for v in take(3, "an image size"))
            (count,) = take(1, "a window count")
            windows = []
            for _ in range(int(count)):
                label, overlap, x1, y1, x2, y2 = take(6, "a window")
                windows.append((int(label), float(overlap), int(x1), int(y1), int(x2), int(y2)))
            images[int(index)] = (root_folder + image_path, size, windows)
    except ValueError as e:
        if str(e).startswith(path):
            raise
        raise ValueError("%s: not a window file (%s)" % (path, e)) from None
    return images


def context_region(window, crop, context_pad, square, height, width, mirror):
    """Where a window's region comes from and goes to (Caffe's context arithmetic).

    Returns (x1, y1, x2, y2) clipped to the image, the (height, width) to warp
    that to, and the (top, left) padding of the warped region in the crop.
    """
    f32 = numpy.float32
    x1, y1, x2, y2 = window
    if not (context_pad > 0 or square):
        return (x1, y1, x2, y2), (crop, crop), (0, 0)
    context_scale = f32(crop) / f32(crop - 2 * context_pad)
    half_h, half_w = f32(y2 - y1 + 1) / f32(2), f32(x2 - x1 + 1) / f32(2)
    center_x, center_y = f32(x1) + half_w, f32(y1) + half_h
    if square:
        half_h = half_w = max(half_h, half_w)
    x1, x2 = c_round(center_x - half_w * context_scale), c_round(center_x + half_w * context_scale)
    y1, y2 = c_round(center_y - half_h * context_scale), c_round(center_y + half_h * context_scale)
    unclipped_h, unclipped_w = y2 - y1 + 1, x2 - x1 + 1
    pad_x1, pad_y1 = max(0, -x1), max(0, -y1)
    pad_x2, pad_y2 = max(0, x2 - width + 1), max(0, y2 - height + 1)
    x1, x2, y1, y2 = x1 + pad_x1, x2 - pad_x2, y1 + pad_y1, y2 - pad_y2
    scale_x, scale_y = f32(crop) / f32(unclipped_w), f32(crop) / f32(unclipped_h)
    out_w, out_h = c_round(f32(x2 - x1 + 1) * scale_x), c_round(f32(y2 - y1 + 1) * scale_y)
    pad_top = c_round(f32(pad_y1) * scale_y)
    # Mirroring flips the padding too: the right-hand pad ends up on the left.
    pad_left = c_round(f32(pad_x2 if mirror else pad_x1) * scale_x)
    # Rounding may push the warped region past the crop; shrink it to fit.
    out_h, out_w = min(out_h, crop - pad_top), min(out_w, crop - pad_left)
    return (x1, y1, x2, y2), (out_h, out_w), (pad_top, pad_left)


@register
class WindowData(SourceLayer):
    """Foreground and background windows of images, for R-CNN fine-tuning (see the module)."""

    type = "WindowData"
    exact_num_top = 2

    def layer_setup(self, bottom, top):
        p, t = self.param.window_data_param, self.param.transform_param
        self.batch_size = int(p.batch_size)
        self.crop = int(t.crop_size or p.crop_size)
        if self.batch_size <= 0 or self.crop <= 0:
            raise self.error("window_data_param.batch_size and transform_param.crop_size must be positive")
        self.scale = float(p.scale if p.HasField("scale") else t.scale)
        self.mirror = bool(t.mirror or p.mirror)
        if p.crop_mode not in ("warp", "square"):
            raise self.error("crop_mode must be \"warp\" or \"square\", not %r" % p.crop_mode)
        if 2 * p.context_pad >= self.crop:
            raise self.error("context_pad %d leaves nothing of a %d crop" % (p.context_pad, self.crop))
        try:
            self.images = read_window_file(p.source, p.root_folder)
        except ValueError as e:
            raise self.error(str(e)) from None
        self.fg, self.bg = [], []
        for index, (_, _, windows) in sorted(self.images.items()):
            for label, overlap, *box in windows:
                if overlap >= p.fg_threshold:
                    if label <= 0:
                        raise self.error("%s: image %d has a foreground window of class %d; "
                                         "classes of objects start at 1" % (p.source, index, label))
                    self.fg.append((index, label, tuple(box)))
                elif overlap < p.bg_threshold:
                    self.bg.append((index, 0, tuple(box)))
        self.num_fg = int(self.batch_size * p.fg_fraction)
        for need, have, what in ((self.num_fg, self.fg, "foreground"), (self.batch_size - self.num_fg, self.bg,
                                                                         "background")):
            if need and not have:
                raise self.error("%s has no %s windows (fg_threshold %g, bg_threshold %g)"
                                 % (p.source, what, p.fg_threshold, p.bg_threshold))
        self.channels = next(iter(self.images.values()))[1][0]
        self.mean = self._mean(t.mean_file or p.mean_file, t.mean_value)
        self.cache = {} if p.cache_images else None
        self.seed = int(backend.rng.generator.integers(0, 2 ** 63))
        self.batches = 0
        top[0].reshape((self.batch_size, self.channels, self.crop, self.crop))
        top[1].reshape((self.batch_size,))

    def _mean(self, mean_file, mean_values):
        """The C x crop x crop array to subtract (the centre of a mean file), or per-channel values."""
        if mean_file and len(mean_values):
            raise self.error("set mean_file or mean_value, not both")
        if mean_file:
            try:
                mean = load_mean(mean_file)
            except (OSError, ValueError) as e:
                raise self.error("mean_file %s" % e) from None
            off = (mean.shape[2] - self.crop) // 2
            if mean.shape[0] != self.channels or off < 0 or mean.shape[1] < self.crop + off:
                raise self.error("mean_file is %s; it must cover %d x %d x %d"
                                 % ("x".join(map(str, mean.shape)), self.channels, self.crop, self.crop))
            return mean[:, off:off + self.crop, off:off + self.crop]
        if len(mean_values):
            values = numpy.asarray(mean_values, numpy.float32)
            if len(values) == 1:
                values = numpy.repeat(values, self.channels)
            if len(values) != self.channels:
                raise self.error("%d mean_value entries for %d channels" % (len(values), self.channels))
            return values.reshape(-1, 1, 1)
        return None

    def reshape(self, bottom, top):
        pass

    def _image(self, index):
        path = self.images[index][0]
        source = path
        if self.cache is not None:   # Caffe keeps the file bytes, not the decoded pixels
            if path not in self.cache:
                with open(path, "rb") as f:
                    self.cache[path] = f.read()
            source = self.cache[path]
        try:
            return image.open_image(source, path)
        except image.ImageError as e:
            raise self.error(str(e)) from None

    def _window(self, index, box, mirror, out):
        p = self.param.window_data_param
        img = self._image(index)
        (x1, y1, x2, y2), (h, w), (top, left) = context_region(
            box, self.crop, p.context_pad, p.crop_mode == "square", img.height, img.width, mirror)
        if not (0 <= x1 <= x2 < img.width and 0 <= y1 <= y2 < img.height):
            raise self.error("window %s lies outside its %dx%d image %s"
                             % (box, img.width, img.height, self.images[index][0]))
        color = self.channels == 3   # Caffe reads colour images; a 1-channel file asks for grey
        pixels = image.to_chw(img.crop((x1, y1, x2 + 1, y2 + 1)), color, h, w).astype(numpy.float32)
        if mirror:
            pixels = pixels[:, :, ::-1]
        region = (slice(None), slice(top, top + h), slice(left, left + w))
        if self.mean is not None:
            pixels = pixels - (self.mean[region] if self.mean.shape[1] > 1 else self.mean)
        out[region] = pixels * self.scale

    def forward(self, bottom, top):
        rng = numpy.random.default_rng([self.seed & 0xFFFFFFFF, self.seed >> 32, self.batches])
        self.batches += 1
        data = numpy.zeros((self.batch_size, self.channels, self.crop, self.crop), numpy.float32)
        labels = numpy.empty(self.batch_size, numpy.float32)
        picks = [self.bg[k] for k in rng.integers(0, len(self.bg) or 1, self.batch_size - self.num_fg)]
        picks += [self.fg[k] for k in rng.integers(0, len(self.fg) or 1, self.num_fg)]
        flips = self.mirror & (rng.integers(0, 2, self.batch_size) == 1)
        for item, ((index, label, box), flip) in enumerate(zip(picks, flips)):
            self._window(index, box, bool(flip), data[item])
            labels[item] = label
        xp = backend.get_array_module(top[0].data)
        top[0].data[...] = backend.to_device(data, xp)
        top[1].data[...] = backend.to_device(labels, xp)

    def get_state(self):
        return {"batches": self.batches, "seed": self.seed}

    def set_state(self, state):
        if state:
            self.batches, self.seed = int(state["batches"]), int(state["seed"])
