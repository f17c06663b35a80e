"""`pycaffe-dist extract_features`: blobs of a trained net, batch by batch, into LMDBs (Caffe's tool).

    pycaffe-dist extract_features WEIGHTS NET BLOB[,BLOB...] DB[,DB...] NUM_BATCHES [lmdb] [CPU|GPU] [DEVICE]

The net runs in the TEST phase; each item of each batch of each named blob
becomes one Datum (`float_data`, channels/height/width of the blob's legacy
shape) under the key `%010d` of its item number, in the database named at
the same position.
"""
import contextlib
import logging
import time

from .. import backend
from ..data import db
from ..net import TEST, Net
from ..proto import caffe_pb2
from .common import UserError, parser, user_errors

log = logging.getLogger("pycaffe_dist")


def extract(net, blob_names, db_paths, num_batches):
    """Run `net` forward num_batches times, writing each blob's items to its LMDB; returns items per blob."""
    missing = [b for b in blob_names if b not in net.blobs]
    if missing:
        raise UserError("no blob named %s in net %r (blobs: %s)"
                        % (", ".join(repr(b) for b in missing), net.name, ", ".join(net.blobs)))
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(db.Writer(path)) for path in db_paths]
        count = 0
        for batch in range(num_batches):
            net.forward()
            for name, writer in zip(blob_names, writers):
                blob = net.blobs[name]
                values = backend.to_host(blob.data).reshape(blob.shape[0] if blob.shape else 1, -1)
                for i, item in enumerate(values):
                    datum = caffe_pb2.Datum(channels=blob.channels, height=blob.height, width=blob.width)
                    datum.float_data.extend(item.tolist())
                    writer.put("%010d" % (count + i), datum.SerializeToString())
            count += len(values)
            log.info("Extracted features of %d query images for %d of %d batches", count, batch + 1, num_batches)
    return count


def build_parser():
    p = parser("extract_features", "Write the values of net blobs for N batches into LMDB databases.")
    p.add_argument("weights", help="trained .caffemodel")
    p.add_argument("net", help="net prototxt (its TEST phase is used; a data layer feeds it)")
    p.add_argument("blobs", help="comma-separated blob names, e.g. fc7,prob")
    p.add_argument("dbs", help="comma-separated database paths, one per blob")
    p.add_argument("num_batches", type=int, help="number of forward passes")
    p.add_argument("db_type", nargs="?", default="lmdb", help="lmdb (the only backend)")
    p.add_argument("mode", nargs="?", default="CPU", type=str.upper, choices=["CPU", "GPU"], help="CPU or GPU")
    p.add_argument("device", nargs="?", type=int, default=0, help="GPU id (default 0)")
    return p


@user_errors("extract_features")
def main(argv):
    """Entry point of `pycaffe-dist extract_features`; returns the exit status."""
    args = build_parser().parse_args(argv)
    blobs, dbs = args.blobs.split(","), args.dbs.split(",")
    if len(blobs) != len(dbs):
        raise UserError("%d blob names but %d databases: give one database per blob" % (len(blobs), len(dbs)))
    if args.num_batches <= 0:
        raise UserError("num_batches must be positive, got %d" % args.num_batches)
    try:
        db.check_backend(args.db_type, dbs[0])
    except db.DBError as e:
        raise UserError(str(e)) from None
    if args.mode == "GPU":
        try:
            backend.set_mode_gpu()
        except RuntimeError as e:
            raise UserError(str(e)) from None
        backend.set_device(args.device)
    net = Net(args.net, TEST, weights=args.weights)
    start = time.time()
    try:
        count = extract(net, blobs, dbs, args.num_batches)
    except db.DBError as e:
        raise UserError(str(e)) from None
    log.info("Successfully extracted the features of %d items in %.1f s", count, time.time() - start)
    return 0
