"""convert_imageset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME: image files -> LMDB of Datums.

LISTFILE lines are `relative/path label`. An entry that leaves ROOTFOLDER
(an absolute path, `..` climbing out, a symlink pointing outside) is refused
naming the list line; with an empty ROOTFOLDER ("") paths are the user's
own, relative to the working directory or absolute. Keys are `%08d_<relative path>`
in list order (after -shuffle), so the database reads back in that order.
Raw records hold C x H x W uint8 pixels in BGR order; with -encoded they
hold JPEG/PNG bytes: the file's own bytes when it is already in the wanted
format, size and colour, otherwise the re-encoded image.
"""
import os
import time

import numpy

from ..data import db, image
from ..data.datum import array_to_datum, encoded_datum
from ..data.flags import FlagParser, ToolError, progress, run_main
from ..data.sources import check_inside, image_path, list_entries

PROG = "convert_imageset"


def _dims(shape):
    return "x".join(str(d) for d in shape)


def make_datum(path, label, color, height, width, encode_type):
    """One image file -> (Datum, decoded C x H x W shape)."""
    img = image.open_image(path)
    if encode_type is None:
        chw = image.to_chw(img, color, height, width)
        return array_to_datum(chw, label), chw.shape
    wanted_format = image.format_name(encode_type)
    as_is = (not height and not width and img.format == wanted_format
             and image.native_is_color(img) == color)
    if as_is:
        with open(path, "rb") as f:
            payload = f.read()
        channels = 3 if color else 1
        return encoded_datum(payload, label), (channels, img.height, img.width)
    chw = image.to_chw(img, color, height, width)
    return encoded_datum(image.encode(chw, encode_type), label), chw.shape


def convert(root, list_file, db_path, gray=False, shuffle=False, resize_height=0, resize_width=0,
            check_size=False, encoded=False, encode_type="", seed=0):
    """Convert the images named in list_file to a new LMDB database; returns the record count."""
    items = list_entries(list_file)
    real_root = os.path.realpath(root) if root else ""
    for name, _, where in items:   # refuse an entry leaving the root before writing anything
        image_path(root, name, where)
    if shuffle:
        order = numpy.random.default_rng(seed).permutation(len(items))
        items = [items[i] for i in order]
    if encode_type and not encoded:
        encoded = True  # as Caffe: naming an encode_type implies -encoded
    color = not gray
    first_shape = None
    with db.Writer(db_path) as writer, progress(len(items), PROG, "img") as bar:
        for line_id, (name, label, where) in enumerate(items):
            path = image_path(root, name, where)
            check_inside(real_root, root, path, where)
            enc = None
            if encoded:
                enc = encode_type or os.path.splitext(name)[1].lstrip(".").lower()
                if not enc:
                    raise ToolError(f"{where}: {name} has no extension to take the encoding from; set -encode_type")
            try:
                datum, shape = make_datum(path, label, color, resize_height, resize_width, enc)
            except image.ImageError as e:
                raise ToolError(f"{where}: {e}") from None
            if check_size:
                if first_shape is None:
                    first_shape = shape
                elif shape != first_shape:
                    raise ToolError(f"{where}: {name} is {_dims(shape)}, the first image is "
                                    f"{_dims(first_shape)} (-check_size)")
            writer.put(f"{line_id:08d}_{name}", datum.SerializeToString())
            bar.update()
    return len(items)


def _body(argv):
    parser = FlagParser(PROG, "Convert a set of images named in a list file to an LMDB of Datums.")
    parser.add_argument("root", help="folder the list's paths are relative to")
    parser.add_argument("list_file", help="lines of 'relative/path label'")
    parser.add_argument("db", help="the LMDB database to create")
    parser.bool_flag("gray", help="store images as one grey channel")
    parser.bool_flag("shuffle", help="shuffle the list before converting")
    parser.flag("backend", default="lmdb", help="database type; only lmdb")
    parser.flag("resize_width", default=0, type=int, help="resize images to this width")
    parser.flag("resize_height", default=0, type=int, help="resize images to this height")
    parser.bool_flag("check_size", help="fail if the images differ in size")
    parser.bool_flag("encoded", help="store the encoded image bytes (JPEG/PNG) instead of pixels")
    parser.flag("encode_type", default="", help="format to encode to (jpg, png, ...); implies -encoded")
    parser.flag("seed", default=0, type=int, help="seed of -shuffle")
    args = parser.parse(argv)
    db.check_backend(args.backend, args.db)
    if args.encode_type:
        image.format_name(args.encode_type)  # fail before converting anything
    if args.resize_width < 0 or args.resize_height < 0:
        raise ToolError("-resize_width and -resize_height must not be negative")
    start = time.time()
    count = convert(args.root, args.list_file, args.db, gray=args.gray, shuffle=args.shuffle,
                    resize_height=args.resize_height, resize_width=args.resize_width,
                    check_size=args.check_size, encoded=args.encoded, encode_type=args.encode_type,
                    seed=args.seed)
    print(f"{PROG}: wrote {count} images to {args.db} in {time.time() - start:.1f} s")
    return 0


def main(argv):
    """Entry point of `pycaffe-dist convert_imageset`; returns the exit status."""
    return run_main(PROG, _body, argv)
