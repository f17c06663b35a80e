"""Shared makers for the data tests: images on disk, LMDBs, layer parameters, layer runs."""
import os

import numpy
from PIL import Image

from pycaffe_dist.blob import Blob
from pycaffe_dist.data import db
from pycaffe_dist.data.datum import array_to_datum
from pycaffe_dist.proto import caffe_pb2

TRAIN, TEST = 0, 1


def write_images(folder, count, size=(12, 10), gray=False, fmt="png", seed=0, sizes=None):
    """Random images on disk and a list file; returns (list path, [(relpath, label, HxWxC RGB array)])."""
    rng = numpy.random.default_rng(seed)
    os.makedirs(os.path.join(folder, "imgs"), exist_ok=True)
    entries = []
    for i in range(count):
        h, w = sizes[i] if sizes else size
        shape = (h, w) if gray else (h, w, 3)
        pixels = rng.integers(0, 256, shape, dtype=numpy.uint8)
        rel = f"imgs/img_{i}.{fmt}"
        Image.fromarray(pixels, "L" if gray else "RGB").save(os.path.join(folder, rel))
        entries.append((rel, i % 7, pixels))
    list_path = os.path.join(folder, "list.txt")
    with open(list_path, "w") as f:
        for rel, label, _ in entries:
            f.write(f"{rel} {label}\n")
    return list_path, entries


def rgb_to_chw_bgr(pixels):
    """The Caffe layout of an RGB (or grey) H x W (x 3) array."""
    if pixels.ndim == 2:
        return pixels[None]
    return pixels[:, :, ::-1].transpose(2, 0, 1)


def write_lmdb(path, arrays, labels=None):
    """An LMDB of raw Datums with Caffe's %08d keys."""
    with db.Writer(path) as writer:
        for i, arr in enumerate(arrays):
            label = int(labels[i]) if labels is not None else i
            writer.put(f"{i:08d}", array_to_datum(arr, label).SerializeToString())
    return path


def data_param(source, batch_size, top=("data", "label"), **transform):
    """A LayerParameter for a Data layer reading `source`."""
    lp = caffe_pb2.LayerParameter(name="data", type="Data", top=list(top))
    lp.data_param.source = source
    lp.data_param.batch_size = batch_size
    lp.data_param.backend = caffe_pb2.DataParameter.LMDB
    for name, value in transform.items():
        if name == "mean_value":
            lp.transform_param.mean_value.extend(value)
        else:
            setattr(lp.transform_param, name, value)
    return lp


def run_layer(layer_class, lp, phase, batches):
    """Set a layer up, run `batches` forwards; returns ([data], [labels]) and closes it."""
    layer = layer_class(lp, phase)
    tops = [Blob((1,)) for _ in lp.top]
    layer.setup([], tops)
    datas, labels = [], []
    try:
        for _ in range(batches):
            layer.forward([], tops)
            datas.append(tops[0].data.copy())
            if len(tops) > 1:
                labels.append(tops[1].data.copy())
    finally:
        if hasattr(layer, "close"):
            layer.close()
    return datas, labels
