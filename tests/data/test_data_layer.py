"""The Data, ImageData and HDF5Data layers, fed by real LMDBs and image files."""
import os
import threading

import numpy
import pytest
from PIL import Image

from pycaffe_dist import backend
from pycaffe_dist.blob import Blob
from pycaffe_dist.layers import dataset
from pycaffe_dist.layers.base import LayerError
from pycaffe_dist.proto import caffe_pb2
from pycaffe_dist.tools import convert_imageset
from tests.data.helpers import TEST, TRAIN, data_param, rgb_to_chw_bgr, run_layer, write_images, write_lmdb


@pytest.fixture(autouse=True)
def seeded():
    backend.set_random_seed(1)
    yield
    backend.set_solver_rank(0)
    backend.set_solver_count(1)


def convert(tmp_path, flags, count=5, gray_source=False, fmt="png"):
    list_path, entries = write_images(str(tmp_path), count, gray=gray_source, fmt=fmt)
    out = str(tmp_path / "db")
    assert convert_imageset.main(flags + [str(tmp_path), list_path, out]) == 0
    return out, entries


@pytest.mark.parametrize("flags", [[], ["-encoded"], ["-encode_type", "png"]])
@pytest.mark.parametrize("gray", [False, True])
def test_imageset_round_trip_gives_the_pixels_back(tmp_path, flags, gray):
    out, entries = convert(tmp_path, flags + (["-gray"] if gray else []))
    datas, labels = run_layer(dataset.DataLayer, data_param(out, 5), TEST, 2)
    for batch, batch_labels in zip(datas, labels):   # the second batch wrapped around
        for got, label, (_, want_label, pixels) in zip(batch, batch_labels, entries):
            ref = numpy.asarray(Image.fromarray(pixels).convert("L")) if gray else pixels
            numpy.testing.assert_array_equal(got, rgb_to_chw_bgr(ref))
            assert label == want_label


@pytest.mark.parametrize("encoded", [False, True])
def test_resized_round_trip(tmp_path, encoded):
    out, entries = convert(tmp_path, ["-resize_height", "7", "-resize_width", "9"]
                           + (["-encode_type", "png"] if encoded else []), count=3)
    (batch,), _ = run_layer(dataset.DataLayer, data_param(out, 3), TEST, 1)
    for got, (_, _, pixels) in zip(batch, entries):
        ref = numpy.asarray(Image.fromarray(pixels).resize((9, 7), Image.BILINEAR))
        numpy.testing.assert_array_equal(got, rgb_to_chw_bgr(ref))


def test_jpeg_and_force_gray(tmp_path):
    out, entries = convert(tmp_path, ["-encoded"], count=2, fmt="jpg")
    (batch,), _ = run_layer(dataset.DataLayer, data_param(out, 2, force_gray=True), TEST, 1)
    assert batch.shape == (2, 1, 12, 10)
    for got, (rel, _, _) in zip(batch, entries):
        ref = numpy.asarray(Image.open(tmp_path / rel).convert("L"))
        numpy.testing.assert_array_equal(got[0], ref)


def test_scale_float_data_and_label_shapes(tmp_path):
    arrays = numpy.random.default_rng(0).random((4, 2, 3, 3)).astype(numpy.float32)
    src = write_lmdb(str(tmp_path / "f_lmdb"), arrays)
    lp = data_param(src, 4, scale=0.5)
    layer = dataset.DataLayer(lp, TEST)
    tops = [Blob((1,)), Blob((1,))]
    layer.setup([], tops)
    assert tops[0].shape == (4, 2, 3, 3) and tops[1].shape == (4,)
    layer.forward([], tops)
    numpy.testing.assert_allclose(tops[0].data, arrays * 0.5)
    numpy.testing.assert_array_equal(tops[1].data, [0, 1, 2, 3])
    layer.close()


def labels_read(src, batch, phase, rank, size, batches=3):
    backend.set_solver_rank(rank)
    backend.set_solver_count(size)
    _, labels = run_layer(dataset.DataLayer, data_param(src, batch), phase, batches)
    return numpy.concatenate(labels).astype(int).tolist()


def test_train_shards_by_offset_and_test_does_not(tmp_path):
    src = write_lmdb(str(tmp_path / "db"), numpy.zeros((7, 1, 2, 2), numpy.uint8))
    assert labels_read(src, 2, TRAIN, 0, 3) == [0, 3, 6, 2, 5, 1]   # offsets 0,3,6,9,12,15 mod 7
    assert labels_read(src, 2, TRAIN, 1, 3) == [1, 4, 0, 3, 6, 2]
    assert labels_read(src, 2, TEST, 1, 3) == [0, 1, 2, 3, 4, 5]
    # N sharded workers together read what one worker reads with the N-times batch.
    one = labels_read(src, 6, TRAIN, 0, 1, batches=2)
    parts = [labels_read(src, 2, TRAIN, r, 3, batches=2) for r in range(3)]
    for b in range(2):
        joined = sorted(sum((p[2 * b:2 * b + 2] for p in parts), []))
        assert joined == sorted(one[6 * b:6 * b + 6])


def test_random_crop_mirror_deterministic_for_a_seed_whatever_the_workers(tmp_path, monkeypatch):
    arrays = numpy.random.default_rng(0).integers(0, 256, (9, 3, 8, 8), dtype=numpy.uint8)
    src = write_lmdb(str(tmp_path / "db"), arrays)
    lp = data_param(src, 4, crop_size=5, mirror=True)
    runs = []
    for workers, mode in (("0", "thread"), ("1", "thread"), ("3", "thread"), ("2", "process")):
        monkeypatch.setenv("PYCAFFE_DIST_DECODE_WORKERS", workers)
        monkeypatch.setenv("PYCAFFE_DIST_DECODE_MODE", mode)
        backend.set_random_seed(5)
        runs.append(run_layer(dataset.DataLayer, lp, TRAIN, 4)[0])
    for run in runs[1:]:
        for a, b in zip(runs[0], run):
            numpy.testing.assert_array_equal(a, b)
    monkeypatch.delenv("PYCAFFE_DIST_DECODE_MODE")
    backend.set_random_seed(6)
    other = run_layer(dataset.DataLayer, lp, TRAIN, 4)[0]
    assert any(not numpy.array_equal(a, b) for a, b in zip(runs[0], other))


def test_state_resumes_the_exact_stream(tmp_path):
    arrays = numpy.random.default_rng(0).integers(0, 256, (11, 1, 6, 6), dtype=numpy.uint8)
    src = write_lmdb(str(tmp_path / "db"), arrays)
    lp = data_param(src, 3, crop_size=4, mirror=True)
    layer = dataset.DataLayer(lp, TRAIN)
    tops = [Blob((1,)), Blob((1,))]
    layer.setup([], tops)
    seen = []
    for i in range(6):
        if i == 2:
            state = layer.get_state()
        if i == 4:
            layer.close()    # a closed layer restarts where it stopped
        layer.forward([], tops)
        seen.append(tops[0].data.copy())
    layer.close()
    backend.set_random_seed(99)    # a different fresh seed: the state must win
    resumed = dataset.DataLayer(lp, TRAIN)
    resumed.setup([], tops)
    resumed.set_state(state)
    for want in seen[2:]:
        resumed.forward([], tops)
        numpy.testing.assert_array_equal(tops[0].data, want)
    assert resumed.wait_seconds_total >= resumed.wait_seconds_last >= 0
    resumed.close()


def test_close_leaves_no_threads(tmp_path):
    src = write_lmdb(str(tmp_path / "db"), numpy.zeros((5, 1, 2, 2), numpy.uint8))
    before = set(threading.enumerate())
    run_layer(dataset.DataLayer, data_param(src, 2), TRAIN, 2)
    assert set(threading.enumerate()) <= before


def test_errors_name_the_layer_and_the_record(tmp_path):
    with pytest.raises(LayerError, match=r"layer 'data' \(Data\): .*missing_lmdb: no such database"):
        run_layer(dataset.DataLayer, data_param(str(tmp_path / "missing_lmdb"), 2), TRAIN, 1)
    path = str(tmp_path / "bad")
    from pycaffe_dist.data import db
    from pycaffe_dist.data.datum import array_to_datum
    with db.Writer(path) as w:
        w.put(b"00000000", array_to_datum(numpy.zeros((1, 2, 2), numpy.uint8)).SerializeToString())
        w.put(b"00000001", b"\xff\xff garbage")
    with pytest.raises(LayerError, match="record '00000001': not a Datum"):
        run_layer(dataset.DataLayer, data_param(path, 2), TRAIN, 1)
    with pytest.raises(LayerError, match="crop_size 3 is larger than the 2x2 image"):
        run_layer(dataset.DataLayer, data_param(path, 1, crop_size=3), TRAIN, 1)


def image_data_param(tmp_path, list_path, batch, **fields):
    lp = caffe_pb2.LayerParameter(name="img", type="ImageData", top=["data", "label"])
    lp.image_data_param.source = list_path
    lp.image_data_param.root_folder = str(tmp_path) + "/"
    lp.image_data_param.batch_size = batch
    for name, value in fields.items():
        setattr(lp.image_data_param, name, value)
    return lp


def test_image_data_reads_resizes_and_shuffles(tmp_path):
    list_path, entries = write_images(str(tmp_path), 6)
    datas, labels = run_layer(dataset.ImageDataLayer, image_data_param(tmp_path, list_path, 3, new_height=5,
                                                                       new_width=4, is_color=False), TEST, 2)
    for got, (_, _, pixels) in zip(numpy.concatenate(datas), entries):
        ref = numpy.asarray(Image.fromarray(pixels).convert("L").resize((4, 5), Image.BILINEAR))
        numpy.testing.assert_array_equal(got[0], ref)
    _, labels = run_layer(dataset.ImageDataLayer, image_data_param(tmp_path, list_path, 6, shuffle=True), TEST, 2)
    first, second = labels
    assert sorted(first) == sorted(e[1] for e in entries)
    assert sorted(second) == sorted(first)


def test_image_data_missing_file_names_the_list_line(tmp_path):
    list_path, _ = write_images(str(tmp_path), 3)
    os.remove(tmp_path / "imgs" / "img_1.png")
    with pytest.raises(LayerError, match=f"{list_path}:2: .*img_1.png: no such file"):
        run_layer(dataset.ImageDataLayer, image_data_param(tmp_path, list_path, 3), TEST, 1)


@pytest.mark.skipif(not dataset.h5py_available, reason="h5py is not installed")
def test_hdf5_data(tmp_path):
    import h5py
    rng = numpy.random.default_rng(0)
    files, rows = [], []
    for i, n in enumerate((3, 4)):
        data = rng.random((n, 2, 3)).astype(numpy.float32)
        label = numpy.arange(n, dtype=numpy.float32) + 10 * i
        with h5py.File(tmp_path / f"f{i}.h5", "w") as f:
            f["data"], f["label"] = data, label
        files.append(str(tmp_path / f"f{i}.h5"))
        rows += list(zip(data, label))
    (tmp_path / "list.txt").write_text("\n".join(files) + "\n")
    lp = caffe_pb2.LayerParameter(name="h5", type="HDF5Data", top=["data", "label"])
    lp.hdf5_data_param.source = str(tmp_path / "list.txt")
    lp.hdf5_data_param.batch_size = 5
    datas, labels = run_layer(dataset.HDF5DataLayer, lp, TEST, 2)
    want = rows + rows
    for k, (d, label) in enumerate(zip(numpy.concatenate(datas), numpy.concatenate(labels))):
        numpy.testing.assert_array_equal(d, want[k][0])
        assert label == want[k][1]
    lp.hdf5_data_param.shuffle = True
    _, labels = run_layer(dataset.HDF5DataLayer, lp, TRAIN, 2)
    epoch = numpy.concatenate(labels)[:7]
    assert sorted(epoch) == sorted(r[1] for r in rows)


def test_backend_field(tmp_path):
    src = write_lmdb(str(tmp_path / "db"), numpy.zeros((2, 1, 2, 2), numpy.uint8))
    lp = data_param(src, 2)
    lp.data_param.ClearField("backend")     # Caffe's default says LEVELDB; the folder says LMDB
    assert run_layer(dataset.DataLayer, lp, TEST, 1)[0][0].shape == (2, 1, 2, 2)
    leveldb = tmp_path / "ldb"
    leveldb.mkdir()
    (leveldb / "CURRENT").write_text("MANIFEST-000001\n")
    lp = data_param(str(leveldb), 2)
    lp.data_param.backend = caffe_pb2.DataParameter.LEVELDB
    with pytest.raises(LayerError, match="backend 'leveldb' is not supported"):
        run_layer(dataset.DataLayer, lp, TEST, 1)
