"""Image files <-> uint8 arrays in Caffe's layout (C x H x W, colour as BGR).

Caffe reads images with OpenCV, which hands out BGR; Pillow hands out RGB.
Flipping here, at the only place images enter or leave, keeps every array
inside the framework in Caffe's order, so databases and mean files agree
with Caffe's byte for byte.
"""
import io

import numpy

try:  # pragma: no cover - depends on the installation
    from PIL import Image, UnidentifiedImageError
    available = True
except ImportError:
    Image = None
    UnidentifiedImageError = OSError
    available = False

# Pillow modes that are one channel as stored; everything else decodes as colour.
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}

# encode_type names -> Pillow format names.
_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "bmp": "BMP", "ppm": "PPM",
            "pgm": "PPM", "tif": "TIFF", "tiff": "TIFF", "webp": "WEBP"}


class ImageError(Exception):
    """An image that cannot be read or decoded; the message names it."""


def _require_pillow():
    if not available:
        raise ImageError("Pillow is not installed (pip install Pillow)")


def _to_mode(img, color):
    """Convert a Pillow image to 'RGB' (color True), 'L' (False) or its native one (None)."""
    if color is None:
        color = img.mode not in _GRAY_MODES
    target = "RGB" if color else "L"
    if img.mode == target:
        return img
    if img.mode.startswith("I;16") or img.mode == "I":
        # 16-bit grey: keep the high byte as OpenCV's 8-bit conversion does.
        arr = numpy.asarray(img, dtype=numpy.uint32) >> 8
        img = Image.fromarray(arr.clip(0, 255).astype(numpy.uint8), "L")
        return img if target == "L" else img.convert("RGB")
    return img.convert(target)


def pil_to_chw(img):
    """A Pillow image in mode L or RGB -> uint8 C x H x W (BGR for colour).

    The result is a strided view of Pillow's H x W x C pixels, not a copy:
    the transformer's one copy into the float batch does the reordering, so
    a decoded image is copied once instead of twice.
    """
    arr = numpy.asarray(img, dtype=numpy.uint8)
    if arr.ndim == 2:
        return arr[None]
    return arr[:, :, ::-1].transpose(2, 0, 1)


def chw_to_pil(arr):
    """uint8 C x H x W (BGR for three channels) -> a Pillow image."""
    arr = numpy.asarray(arr, dtype=numpy.uint8)
    if arr.shape[0] == 1:
        return Image.fromarray(arr[0], "L")
    if arr.shape[0] != 3:
        raise ImageError(f"cannot make an image of {arr.shape[0]} channels")
    return Image.fromarray(numpy.ascontiguousarray(arr[::-1].transpose(1, 2, 0)), "RGB")


def open_image(source, name=None):
    """A decoded Pillow image from a path or bytes; `name` is used in errors."""
    _require_pillow()
    name = name or (source if isinstance(source, str) else "<encoded image>")
    try:
        img = Image.open(source if isinstance(source, str) else io.BytesIO(source))
        img.load()
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except UnidentifiedImageError:   # its message quotes a BytesIO object's repr
        raise ImageError(f"{name}: cannot decode image: not in a format Pillow reads") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name}: cannot decode image: {e}") from None
    return img


def resize(img, height, width):
    """Resize to height x width (either 0 keeps that size), bilinear as Caffe's default."""
    if (height or width) and (img.height, img.width) != (height or img.height, width or img.width):
        img = img.resize((width or img.width, height or img.height), Image.BILINEAR)
    return img


def decode(data, color=None, height=0, width=0, name=None):
    """Encoded bytes (or a path) -> uint8 C x H x W.

    Args:
        data: file bytes or a path.
        color: True for 3 channels, False for 1, None for the image's own.
        height, width: resize to this size when non-zero.
    """
    return to_chw(open_image(data, name), color, height, width)


def to_chw(img, color=None, height=0, width=0):
    """A Pillow image -> uint8 C x H x W in the wanted colour and size."""
    return pil_to_chw(resize(_to_mode(img, color), height, width))


def native_is_color(img):
    return img.mode not in _GRAY_MODES


def format_name(encode_type):
    """Pillow's format name for an encode_type such as 'jpg' or 'png'."""
    try:
        return _FORMATS[encode_type.lower().lstrip(".")]
    except KeyError:
        raise ImageError(f"unknown encode_type {encode_type!r} (known: {', '.join(sorted(_FORMATS))})") from None


def encode(arr, encode_type):
    """uint8 C x H x W -> file bytes in `encode_type` ('jpg', 'png', ...)."""
    _require_pillow()
    out = io.BytesIO()
    fmt = format_name(encode_type)
    # Quality 95 is what OpenCV's imencode uses for JPEG by default.
    options = {"quality": 95} if fmt == "JPEG" else {}
    chw_to_pil(arr).save(out, format=fmt, **options)
    return out.getvalue()
