"""How fast the data pipeline feeds a net, against what a bare LMDB cursor can read.

Prints, for raw 28x28 records (Fashion-MNIST when `make demo` has converted
it, else synthetic) and for encoded 256x256 JPEG records cropped to 227:

* the ceiling: a bare cursor reading the same records (and reading+parsing),
* the pipeline's images/s with thread and process decode workers, as a
  ratio to the ceiling,
* the share of a training step spent waiting for data, for a consumer that
  takes a LeNet-sized step (measured with the real LeNet when the engine
  can build it, else a fixed busy step).

Run: .venv/bin/python bench/bench_data.py [--quick]
"""
import argparse
import io
import os
import shutil
import sys
import tempfile
import time

import numpy
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycaffe_dist.data import db  # noqa: E402
from pycaffe_dist.data.datum import array_to_datum, encoded_datum, parse  # noqa: E402
from pycaffe_dist.data.prefetch import Pipeline  # noqa: E402
from pycaffe_dist.data.sources import LMDBSource, decode_datums  # noqa: E402
from pycaffe_dist.data.transformer import TRAIN, DataTransformer  # noqa: E402
from pycaffe_dist.proto import caffe_pb2  # noqa: E402

FASHION = "data/fashion_mnist_train_lmdb"


def make_raw_db(path, count):
    rng = numpy.random.default_rng(0)
    with db.Writer(path) as w:
        for i in range(count):
            arr = rng.integers(0, 256, (1, 28, 28), dtype=numpy.uint8)
            w.put(f"{i:08d}", array_to_datum(arr, i % 10).SerializeToString())
    return path


def make_jpeg_db(path, count):
    """256x256 colour JPEGs with photo-like smooth content (noise would not compress like photos)."""
    rng = numpy.random.default_rng(0)
    yy, xx = numpy.mgrid[0:256, 0:256].astype(numpy.float32)
    with db.Writer(path) as w:
        for i in range(count):
            fx, fy, phase = rng.uniform(0.01, 0.08, 2).tolist() + [rng.uniform(0, 6.3)]
            base = numpy.stack([numpy.sin(xx * fx + phase + c) * numpy.cos(yy * fy - c) for c in range(3)], -1)
            pixels = ((base * 0.5 + 0.5) * 200 + rng.normal(0, 12, base.shape)).clip(0, 255).astype(numpy.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels, "RGB").save(buf, format="JPEG", quality=90)
            w.put(f"{i:08d}", encoded_datum(buf.getvalue(), i % 10).SerializeToString())
    return path


def cursor_rate(path, seconds, parse_too=False):
    """Records/s of a bare read-only cursor (optionally also parsing each Datum), wrapping."""
    n, start = 0, time.perf_counter()
    with db.Reader(path) as r:
        while time.perf_counter() - start < seconds:
            for _ in range(1000):
                key, value = r.item()
                if parse_too:
                    parse(value, key)
                r.advance()
            n += 1000
    return n / (time.perf_counter() - start)


def pipeline_rate(path, tparam, batch, workers, mode, seconds, prefetch=4):
    transformer = DataTransformer(tparam, TRAIN, seed=1)
    from functools import partial
    decode = partial(decode_datums, transformer)
    with Pipeline(LMDBSource(path), decode, batch, prefetch=prefetch, workers=workers, mode=mode) as p:
        p.next()  # start-up (process pools spawn here) is not throughput
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            p.next()
            n += batch
        return n / (time.perf_counter() - start)


def busy_step(seconds):
    end = time.perf_counter() + seconds
    a = numpy.ones((64, 64), numpy.float32)
    while time.perf_counter() < end:
        a = a @ a * 0.01


def wait_share_fixed(path, tparam, step_seconds, steps):
    """Share of each step waiting for data for a consumer computing `step_seconds` per batch."""
    transformer = DataTransformer(tparam, TRAIN, seed=1)
    from functools import partial
    with Pipeline(LMDBSource(path), partial(decode_datums, transformer), 64, prefetch=4, workers=0) as p:
        p.next()
        wait, start = 0.0, time.perf_counter()
        for _ in range(steps):
            p.next()
            wait += p.wait_seconds_last
            busy_step(step_seconds)
        return wait / (time.perf_counter() - start)


def wait_share_lenet(iters):
    """Train the shipped LeNet for `iters` iterations; share of the time its Data layer waited."""
    try:
        from pycaffe_dist.layers import dataset  # noqa: F401  (registers Data if the package does not yet)
        from pycaffe_dist.proto.io import read_solver
        from pycaffe_dist.solvers import get_solver
        param = read_solver("solvers/lenet_solver.prototxt")
        param.max_iter = iters
        param.test_interval = 10 ** 9
        param.ClearField("test_iter")
        param.test_initialization = False
        param.snapshot = 0
        param.display = 0
        solver = get_solver(param)
    except Exception as e:  # noqa: BLE001 - the engine may not be able to build LeNet yet
        return None, f"LeNet not trainable here yet ({type(e).__name__}: {e})"
    data = [layer for layer in solver.net.layers if layer.type == "Data"][0]
    try:
        solver.step(5)  # warm up
        waited0, start = data.wait_seconds_total, time.perf_counter()
        solver.step(iters)
        elapsed = time.perf_counter() - start
    except Exception as e:  # noqa: BLE001 - an engine mid-change should not stop the data figures
        return None, f"LeNet failed to train ({type(e).__name__}: {e})"
    share = (data.wait_seconds_total - waited0) / elapsed
    if hasattr(data, "close"):
        data.close()
    return share, f"{elapsed / iters * 1000:.1f} ms/step"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter runs (noisier)")
    args = ap.parse_args(argv)
    secs = 1.0 if args.quick else 3.0
    tmp = tempfile.mkdtemp(prefix="bench_data_")
    try:
        raw = FASHION if os.path.isdir(FASHION) else make_raw_db(os.path.join(tmp, "raw"), 60000)
        jpeg = make_jpeg_db(os.path.join(tmp, "jpeg"), 200 if args.quick else 500)
        print(f"cores: {os.cpu_count()}  raw db: {raw}")

        print("\n== raw 28x28 records, batch 64, scale 1/256 ==")
        raw_param = caffe_pb2.TransformationParameter(scale=0.00390625)
        ceiling = cursor_rate(raw, secs)
        parsed = cursor_rate(raw, secs, parse_too=True)
        print(f"bare cursor read          {ceiling:12,.0f} rec/s   (ceiling)")
        print(f"cursor read + Datum parse {parsed:12,.0f} rec/s   {parsed / ceiling:6.2f}x ceiling")
        for mode, workers in (("thread", 0), ("thread", 1), ("thread", 2), ("process", 2)):
            rate = pipeline_rate(raw, raw_param, 64, workers, mode, secs)
            label = "on reader" if workers == 0 else f"{mode:7s} x{workers}"
            print(f"pipeline {label:17s} {rate:12,.0f} img/s   {rate / ceiling:6.2f}x ceiling")

        print("\n== encoded 256x256 JPEG, crop 227 + mirror (TRAIN), batch 32 ==")
        jpeg_param = caffe_pb2.TransformationParameter(crop_size=227, mirror=True, mean_value=[104, 117, 123])
        ceiling = cursor_rate(jpeg, secs)
        print(f"bare cursor read          {ceiling:12,.0f} rec/s   (ceiling)")
        for mode, workers in (("thread", 1), ("thread", 2), ("thread", 4), ("process", 2)):
            rate = pipeline_rate(jpeg, jpeg_param, 32, workers, mode, secs)
            label = f"{mode:7s} x{workers}"
            print(f"pipeline {label:17s} {rate:12,.0f} img/s   {rate / ceiling:6.4f}x ceiling")

        print("\n== share of each training step spent waiting for data (target < 2%) ==")
        share, note = wait_share_lenet(100 if args.quick else 300)
        if share is not None:
            print(f"LeNet on {raw}: {share * 100:.2f}% waiting  ({note})")
        else:
            print(note)
        for step_ms in (10, 5):
            share = wait_share_fixed(raw, raw_param, step_ms / 1000, 200 if args.quick else 500)
            print(f"fixed {step_ms} ms step (LeNet-sized), raw batch 64: {share * 100:.2f}% waiting")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
