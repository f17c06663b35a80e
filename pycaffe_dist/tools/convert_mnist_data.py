"""convert_mnist_data IMAGES LABELS DB: IDX files (MNIST, Fashion-MNIST) -> LMDB of Datums.

Keys are the record numbers as `%08d`; each Datum is 1 x rows x cols uint8
with its label, as Caffe's converter writes them. Gzipped IDX files are
read as they are distributed.
"""
import time

from ..data import db, idx
from ..data.datum import array_to_datum
from ..data.flags import FlagParser, ToolError, progress, run_main

PROG = "convert_mnist_data"


def convert(images_path, labels_path, db_path):
    """Write the IDX image/label pair to a new LMDB at db_path; returns the record count."""
    images = idx.read_idx(images_path, idx.IMAGES_MAGIC)
    labels = idx.read_idx(labels_path, idx.LABELS_MAGIC)
    if len(images) != len(labels):
        raise ToolError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    with db.Writer(db_path) as writer, progress(len(images), PROG) as bar:
        for i in range(len(images)):
            writer.put(f"{i:08d}", array_to_datum(images[i][None], int(labels[i])).SerializeToString())
            bar.update()
    return len(images)


def _body(argv):
    parser = FlagParser(PROG, "Convert MNIST-format IDX images and labels to an LMDB of Datums.")
    parser.add_argument("images", help="IDX images file (magic 2051), optionally gzipped")
    parser.add_argument("labels", help="IDX labels file (magic 2049), optionally gzipped")
    parser.add_argument("db", help="the LMDB database to create")
    parser.flag("backend", default="lmdb", help="database type; only lmdb")
    args = parser.parse(argv)
    db.check_backend(args.backend, args.db)
    start = time.time()
    count = convert(args.images, args.labels, args.db)
    print(f"{PROG}: wrote {count} records to {args.db} in {time.time() - start:.1f} s")
    return 0


def main(argv):
    """Entry point of `pycaffe-dist convert_mnist_data`; returns the exit status."""
    return run_main(PROG, _body, argv)
