"""compute_image_mean DB [OUT.binaryproto]: the per-pixel mean image of an LMDB of Datums.

Writes a legacy 1 x C x H x W BlobProto, the format transform_param's
mean_file reads, and prints the per-channel means (for mean_value).
"""
import time

import numpy

from ..data import datum as datum_mod
from ..data import db
from ..data.flags import FlagParser, ToolError, progress, run_main

PROG = "compute_image_mean"
_CHUNK = 1000  # records summed at once: one numpy call per chunk, not per record


def _dims(shape):
    return "x".join(str(d) for d in shape)


def compute_mean(path):
    """Mean C x H x W float64 image over every record of the database at `path`."""
    with db.Reader(path) as reader, progress(reader.size, PROG) as bar:
        total, count, shape, chunk = None, 0, None, []
        for key, value in reader.items():
            bar.update()
            arr = datum_mod.datum_to_array(datum_mod.parse(value, key), key=key)
            if shape is None:
                shape = arr.shape
                total = numpy.zeros(shape, numpy.float64)
            elif arr.shape != shape:
                raise ToolError(f"{path}: record {key.decode('utf-8', 'replace')!r} is {_dims(arr.shape)}, "
                                f"the first record is {_dims(shape)}")
            chunk.append(arr)
            if len(chunk) == _CHUNK:
                total += numpy.sum(chunk, axis=0, dtype=numpy.float64)
                count, chunk = count + len(chunk), []
        if chunk:
            total += numpy.sum(chunk, axis=0, dtype=numpy.float64)
            count += len(chunk)
    return total / count


def _body(argv):
    parser = FlagParser(PROG, "Compute the mean image of an LMDB database of Datums.")
    parser.add_argument("db", help="the LMDB database")
    parser.add_argument("output", nargs="?", help="mean.binaryproto file to write")
    parser.flag("backend", default="lmdb", help="database type; only lmdb")
    args = parser.parse(argv)
    db.check_backend(args.backend, args.db)
    start = time.time()
    mean = compute_mean(args.db)
    if args.output:
        datum_mod.save_mean(args.output, mean)
    print(f"{PROG}: number of channels: {mean.shape[0]}")
    for c, value in enumerate(mean.reshape(mean.shape[0], -1).mean(axis=1)):
        print(f"{PROG}: mean_value channel [{c}]: {value:.6g}")
    where = f" to {args.output}" if args.output else ""
    print(f"{PROG}: wrote the {_dims(mean.shape)} mean{where} in {time.time() - start:.1f} s")
    return 0


def main(argv):
    """Entry point of `pycaffe-dist compute_image_mean`; returns the exit status."""
    return run_main(PROG, _body, argv)
