"""Learned weights in Caffe's HDF5 layout (Net::ToHDF5 and CopyTrainedLayersFromHDF5).

One dataset per learnable blob, `/data/<layer name>/<i>` (and `/diff/...`
when diffs are written). A parameter shared by name is stored once, under
the layer that owns it; loading skips the missing entries of its sharers.
"""
import os
import tempfile

from . import backend
from .layers.dataset import h5py, h5py_available
from .proto.errors import ProtoError


def _require(path):
    if not h5py_available:
        raise ImportError("%s: HDF5 weights need h5py (pip install h5py, or pycaffe_dist[hdf5])" % path)


def _owners(net):
    return {(p.layer, p.index) for p in net.learnable}


def save(net, path, write_diff=False):
    """Write `net`'s learned blobs to an HDF5 file at `path` (atomically)."""
    _require(path)
    owners = _owners(net)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            groups = [("data", lambda b: b.data)] + ([("diff", lambda b: b.diff)] if write_diff else [])
            for group_name, field in groups:
                group = f.create_group(group_name)
                for name, layer in zip(net.layer_names, net.layers):
                    if not layer.blobs:
                        continue
                    layer_group = group.create_group(name)
                    for j, blob in enumerate(layer.blobs):
                        if (name, j) in owners:
                            layer_group.create_dataset(str(j), data=backend.to_host(field(blob)))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(net, path):
    """Copy learned blobs from an HDF5 file into `net`, matching layers by name."""
    _require(path)
    owners = _owners(net)
    with h5py.File(path, "r") as f:
        if "data" not in f:
            raise ProtoError("%s: no /data group; not a Caffe HDF5 weights file" % path)
        data = f["data"]
        for name, layer in zip(net.layer_names, net.layers):
            if name not in data:
                continue
            group = data[name]
            if len(group) > len(layer.blobs):
                raise ProtoError("%s: layer %r has %d learned blobs in the file but %d in the net"
                                 % (path, name, len(group), len(layer.blobs)))
            for j, blob in enumerate(layer.blobs):
                if str(j) not in group:
                    if (name, j) in owners:
                        raise ProtoError("%s: layer %r blob %d is missing" % (path, name, j))
                    continue  # a shared parameter, stored under its owner
                values = group[str(j)][()]
                if tuple(values.shape) != blob.shape:
                    raise ProtoError("%s: layer %r blob %d has shape %s but the net expects %s"
                                     % (path, name, j, tuple(values.shape), blob.shape))
                blob.data[...] = backend.to_device(values.astype(blob.dtype), blob.xp)
