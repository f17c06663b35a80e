"""convert_cifar_data INPUT_FOLDER OUTPUT_FOLDER [DB_TYPE]: CIFAR-10 binary batches -> LMDB.

Reads data_batch_1.bin .. data_batch_5.bin and test_batch.bin (records of
one label byte and 3 x 32 x 32 pixel bytes) and writes
OUTPUT_FOLDER/cifar10_train_lmdb and cifar10_test_lmdb with keys `%05d`.
The pixels are copied as stored (RGB planes), as Caffe's converter does.
"""
import os
import time

import numpy

from ..data import db
from ..data.datum import array_to_datum
from ..data.flags import FlagParser, ToolError, progress, run_main

PROG = "convert_cifar_data"
RECORD = 1 + 3 * 32 * 32
TRAIN_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)]
TEST_FILES = ["test_batch.bin"]


def read_batch(path):
    """One CIFAR-10 binary file -> (N x 3 x 32 x 32 uint8 images, N labels)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ToolError(f"{path}: no such file") from None
    except OSError as e:
        raise ToolError(f"{path}: cannot read: {e.strerror}") from None
    if not raw or len(raw) % RECORD:
        raise ToolError(f"{path}: {len(raw)} bytes is not a whole number of {RECORD}-byte CIFAR-10 records "
                        f"(truncated after record {len(raw) // RECORD})")
    records = numpy.frombuffer(raw, numpy.uint8).reshape(-1, RECORD)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0]


def write_db(path, batches):
    total = sum(len(labels) for _, labels in batches)
    with db.Writer(path) as writer, progress(total, os.path.basename(path)) as bar:
        index = 0
        for images, labels in batches:
            for image, label in zip(images, labels):
                writer.put(f"{index:05d}", array_to_datum(image, int(label)).SerializeToString())
                index += 1
            bar.update(len(labels))
    return total


def convert(input_folder, output_folder, db_type="lmdb"):
    """Write the train and test databases; returns (train count, test count)."""
    # Read and check every input before writing, so bad input leaves no database at all.
    train = [read_batch(os.path.join(input_folder, name)) for name in TRAIN_FILES]
    test = [read_batch(os.path.join(input_folder, name)) for name in TEST_FILES]
    train_path = os.path.join(output_folder, f"cifar10_train_{db_type}")
    test_path = os.path.join(output_folder, f"cifar10_test_{db_type}")
    for path in (train_path, test_path):
        if os.path.exists(path):
            raise ToolError(f"{path}: already exists; remove it or choose another folder")
    return write_db(train_path, train), write_db(test_path, test)


def _body(argv):
    parser = FlagParser(PROG, "Convert the CIFAR-10 binary batches to LMDB databases.")
    parser.add_argument("input_folder", help="folder holding data_batch_*.bin and test_batch.bin")
    parser.add_argument("output_folder", help="folder to write cifar10_{train,test}_lmdb into")
    parser.add_argument("db_type", nargs="?", default="lmdb", help="database type; only lmdb")
    args = parser.parse(argv)
    db.check_backend(args.db_type, args.output_folder)
    os.makedirs(args.output_folder, exist_ok=True)
    start = time.time()
    n_train, n_test = convert(args.input_folder, args.output_folder, args.db_type)
    print(f"{PROG}: wrote {n_train} train and {n_test} test records to {args.output_folder} "
          f"in {time.time() - start:.1f} s")
    return 0


def main(argv):
    """Entry point of `pycaffe-dist convert_cifar_data`; returns the exit status."""
    return run_main(PROG, _body, argv)
