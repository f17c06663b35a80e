"""Bad records in a real LMDB or image list: STOP names them, SKIP drops and counts them.

The reference stream is computed here from what was written: the good
records in key order, offset by offset (offset % size == rank when
sharded), wrapping at the end.
"""
import io
import logging
import os
import re
import subprocess
import sys

import numpy
import pytest
from PIL import Image

from pycaffe_dist import backend
from pycaffe_dist.blob import Blob
from pycaffe_dist.cli import main
from pycaffe_dist.data import bad_records, db
from pycaffe_dist.data.datum import array_to_datum, encoded_datum
from pycaffe_dist.layers import dataset
from pycaffe_dist.layers.base import LayerError
from pycaffe_dist.proto import caffe_pb2
from tests.data.helpers import TRAIN, data_param, rgb_to_chw_bgr, write_images

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHAPE = (1, 3, 4)


@pytest.fixture(autouse=True)
def seeded(monkeypatch):
    monkeypatch.delenv(dataset.BAD_RECORD_ENV, raising=False)
    backend.set_random_seed(1)
    yield
    backend.set_solver_rank(0)
    backend.set_solver_count(1)


@pytest.fixture
def warnings():
    """The pycaffe_dist logger's warnings, whatever an earlier CLI test did to its handlers."""
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("pycaffe_dist")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def bad_value(kind, rng):
    """Serialized bytes of one kind of bad record."""
    if kind == "garbage":                  # not a Datum at all
        return b"\xff\xfe\xfd not a datum"
    if kind == "short":                    # data bytes do not fill the declared shape
        return caffe_pb2.Datum(channels=1, height=3, width=4, data=b"12345", label=1).SerializeToString()
    if kind == "size":                     # a valid Datum of another size than the others
        return array_to_datum(rng.integers(0, 256, (1, 5, 5), dtype=numpy.uint8), 1).SerializeToString()
    if kind == "image":                    # an encoded PNG cut short: Pillow cannot decode it
        out = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (3, 4), dtype=numpy.uint8), "L").save(out, "PNG")
        return encoded_datum(out.getvalue()[:40], 1).SerializeToString()
    raise AssertionError(kind)


def write_mixed(path, count, bad, seed=0):
    """An LMDB of `count` records, those at indices in `bad` ({index: kind}) bad; returns the good ones.

    Good records: index -> (C x H x W uint8 array, label).
    """
    rng = numpy.random.default_rng(seed)
    good = {}
    with db.Writer(path) as writer:
        for i in range(count):
            if i in bad:
                writer.put(f"{i:08d}", bad_value(bad[i], rng))
                continue
            arr = rng.integers(0, 256, SHAPE, dtype=numpy.uint8)
            good[i] = (arr, i % 5)
            writer.put(f"{i:08d}", array_to_datum(arr, i % 5).SerializeToString())
    return good


def reference(count, good, batches, batch, rank=0, size=1):
    """What `batches` forwards should give: (records served, reads used, bad records in those reads)."""
    served, reads, bad, offset = [], 0, 0, 0
    while len(served) < batches * batch:
        read = []
        while len(read) < batch:            # one read: `batch` records of this rank's offsets
            if offset % size == rank:
                read.append(offset % count)
            offset += 1
        reads += 1
        served += [i for i in read if i in good]
        bad += sum(i not in good for i in read)
    return served[:batches * batch], reads, bad


def run(lp, batches, phase=TRAIN, state=None):
    """Set a layer up (optionally restoring `state`), run `batches` forwards; returns (data, labels, layer)."""
    layer = dataset.DataLayer(lp, phase) if lp.type == "Data" else dataset.ImageDataLayer(lp, phase)
    tops = [Blob((1,)) for _ in lp.top]
    layer.setup([], tops)
    if state:
        layer.set_state(state)
    datas, labels = [], []
    try:
        for _ in range(batches):
            layer.forward([], tops)
            datas.append(tops[0].data.copy())
            labels.append(tops[1].data.copy())
    finally:
        layer.close()
    return numpy.concatenate(datas), numpy.concatenate(labels), layer


def skip_param(path, batch):
    lp = data_param(path, batch)
    lp.data_param.bad_record = caffe_pb2.DataParameter.SKIP
    return lp


BAD = {0: "size", 3: "garbage", 4: "short", 9: "image", 10: "garbage", 11: "garbage", 17: "size"}


@pytest.mark.parametrize("workers,mode", [("0", "thread"), ("2", "thread"), ("2", "process")])
def test_skip_serves_the_good_records_in_order_and_counts_the_bad(tmp_path, monkeypatch, warnings, workers, mode):
    monkeypatch.setenv("PYCAFFE_DIST_DECODE_WORKERS", workers)
    monkeypatch.setenv("PYCAFFE_DIST_DECODE_MODE", mode)
    path = str(tmp_path / "db")
    good = write_mixed(path, 20, BAD)
    data, labels, layer = run(skip_param(path, 4), 10)
    served, _reads, bad = reference(20, good, 10, 4)
    # Record 0 is the odd size: the tops take the shape most of the first records have.
    assert data.shape == (40,) + SHAPE
    numpy.testing.assert_array_equal(data, numpy.stack([good[i][0] for i in served]).astype(numpy.float32))
    numpy.testing.assert_array_equal(labels, [good[i][1] for i in served])
    assert layer.skipped_records_total == bad > 10
    # One warning per record for the first ten, naming key and reason; then a count, not a line each.
    assert len(warnings) == 10 + 1 + 1
    assert warnings[0] == "layer 'data' (Data): skipped a bad record: record '00000000': 1x5x5, " \
                          "but the layer's records are 1x3x4"
    assert "record '00000003': not a Datum" in warnings[1]
    assert "record '00000004': 5 data bytes for shape 1x3x4" in warnings[2]
    assert "record '00000009': cannot decode image" in warnings[3]
    assert "further bad records are skipped without a line each" in warnings[10]
    assert warnings[11] == f"layer 'data' (Data): {bad} bad records skipped in all"


def test_skip_resumes_exactly_from_a_saved_state(tmp_path):
    path = str(tmp_path / "db")
    good = write_mixed(path, 20, BAD)
    served, _, _ = reference(20, good, 7, 4)
    _, first, layer = run(skip_param(path, 4), 3)
    # Three reads of four left good records over, not yet served: the state points at them.
    _, rest, _ = run(skip_param(path, 4), 4, state=layer.get_state())
    numpy.testing.assert_array_equal(numpy.concatenate([first, rest]), [good[i][1] for i in served])


def test_skip_with_rank_sharding(tmp_path):
    path = str(tmp_path / "db")
    good = write_mixed(path, 20, BAD)
    for rank in (0, 1):
        backend.set_solver_rank(rank)
        backend.set_solver_count(2)
        data, labels, layer = run(skip_param(path, 3), 6)
        served, _, bad = reference(20, good, 6, 3, rank, 2)
        numpy.testing.assert_array_equal(data, numpy.stack([good[i][0] for i in served]).astype(numpy.float32))
        assert layer.skipped_records_total == bad


def test_a_pass_without_a_good_record_stops_instead_of_looping(tmp_path):
    path = str(tmp_path / "db")
    write_mixed(path, 6, {i: "garbage" for i in (1, 3, 5)})
    backend.set_solver_rank(1)             # rank 1 of 2 reads records 1, 3, 5, 1, ...: all bad
    backend.set_solver_count(2)
    with pytest.raises(LayerError, match=r"layer 'data' \(Data\): .*db: no good record in a whole pass over "
                                         r"this worker's 3 records \(4 skipped; the last: record '00000001'"):
        run(skip_param(path, 2), 1)
    write_mixed(str(tmp_path / "all_bad"), 4, {i: "short" for i in range(4)})
    with pytest.raises(LayerError, match=r"all_bad: every record is bad \(the first: record '00000000': "
                                         r"5 data bytes"):
        run(skip_param(str(tmp_path / "all_bad"), 2), 1)


@pytest.mark.parametrize("kind,message", [
    ("garbage", "record '00000002': not a Datum"),
    ("short", "record '00000002': 5 data bytes for shape 1x3x4"),
    ("size", "record '00000002': 1x5x5, but record '00000000', the first of its batch, is 1x3x4"),
    ("image", "record '00000002': cannot decode image"),
])
def test_stop_is_the_default_and_names_the_record(tmp_path, kind, message):
    path = str(tmp_path / "db")
    write_mixed(path, 4, {2: kind})
    with pytest.raises(LayerError, match=r"layer 'data' \(Data\): " + message):
        run(data_param(path, 4), 1)


def test_image_data_skips_missing_and_undecodable_files(tmp_path, warnings):
    list_path, entries = write_images(str(tmp_path), 6, size=(3, 4))
    os.remove(tmp_path / "imgs" / "img_1.png")
    (tmp_path / "imgs" / "img_4.png").write_bytes((tmp_path / "imgs" / "img_3.png").read_bytes()[:50])
    lp = caffe_pb2.LayerParameter(name="img", type="ImageData", top=["data", "label"])
    lp.image_data_param.source = list_path
    lp.image_data_param.root_folder = str(tmp_path) + "/"
    lp.image_data_param.batch_size = 4
    with pytest.raises(LayerError, match=f"{list_path}:2: .*img_1.png: no such file"):
        run(lp, 1)                          # STOP by default
    lp.data_param.bad_record = caffe_pb2.DataParameter.SKIP
    data, labels, layer = run(lp, 3)
    order, _, bad = reference(6, {0, 2, 3, 5}, 3, 4)
    numpy.testing.assert_array_equal(data, numpy.stack([rgb_to_chw_bgr(entries[i][2]) for i in order]))
    numpy.testing.assert_array_equal(labels, [entries[i][1] for i in order])
    assert layer.skipped_records_total == bad == 7
    assert f"{list_path}:2: {tmp_path}/imgs/img_1.png: no such file" in warnings[0]
    assert f"{list_path}:5: {tmp_path}/imgs/img_4.png: cannot decode image" in warnings[1]


NET = '''
layer { name: "data" type: "Data" top: "data" top: "label"
  data_param { source: "db" batch_size: 4 backend: LMDB %s } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
'''
SOLVER = 'net: "net.prototxt" base_lr: 0.01 lr_policy: "fixed" display: 5 max_iter: 10 ' \
         'snapshot_after_train: false random_seed: 1\n'


def test_the_train_flag_overrides_the_prototxt(tmp_path, monkeypatch, capsys):
    write_mixed(str(tmp_path / "db"), 20, BAD)
    (tmp_path / "net.prototxt").write_text(NET % "bad_record: SKIP")
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    monkeypatch.chdir(tmp_path)
    # --bad_record stop over the prototxt's SKIP: one line naming layer and record, exit 1.
    assert main(["train", "--solver", "solver.prototxt", "--bad_record", "stop"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "pycaffe-dist train: error: layer 'data' (Data): record '00000001': 1x3x4, but " \
                      "record '00000000', the first of its batch, is 1x5x5: records in a batch must have one size"
    assert "Traceback" not in "".join(err) and dataset.BAD_RECORD_ENV not in os.environ
    # A real process, no bad_record in the prototxt, --bad_record skip: trains to the end.
    (tmp_path / "net.prototxt").write_text(NET % "")
    proc = subprocess.run([sys.executable, "-m", "pycaffe_dist", "train", "--solver", "solver.prototxt",
                           "--bad_record", "skip"], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=ROOT),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # Ten iterations and the forward that logs the final loss, as Caffe's solver.
    _, _, bad = reference(20, write_mixed(str(tmp_path / "ref"), 20, BAD), 11, 4)
    assert "Optimization Done." in proc.stderr
    assert proc.stderr.count("skipped a bad record: record '") == 10
    assert f"layer 'data' (Data): {bad} bad records skipped in all" in proc.stderr
    # Each display line says how many were skipped since the one before.
    pairs = re.findall(r"Skipped (\d+) bad records since the last display \((\d+) in all", proc.stderr)
    since, totals = [int(n) for n, _ in pairs], [int(t) for _, t in pairs]
    assert since and all(n > 0 for n in since) and numpy.cumsum(since).tolist() == totals and totals[-1] <= bad


def test_after_the_first_warnings_a_count_not_a_line_per_record(tmp_path, monkeypatch, warnings):
    monkeypatch.setattr(bad_records, "COUNT_SECONDS", 0.0)   # a count at every read with bad records
    path = str(tmp_path / "db")
    good = write_mixed(path, 20, BAD)
    _, _, layer = run(skip_param(path, 4), 12)
    counts = [w for w in warnings if "bad records skipped" in w]
    assert len(warnings) == 10 + 1 + len(counts)
    totals = [int(w.split(": ")[1].split()[0]) for w in counts]
    assert totals == sorted(set(totals)) and totals[0] > 10    # each count is new, none repeats a line
    _, _, bad = reference(20, good, 12, 4)
    assert totals[-1] == layer.skipped_records_total == bad
    assert counts[-1].startswith(f"layer 'data' (Data): {bad} bad records skipped so far ({bad - totals[-2]} since")


def test_a_bad_record_in_a_worker_process_is_one_line(tmp_path):
    write_mixed(str(tmp_path / "db"), 20, BAD)
    (tmp_path / "net.prototxt").write_text(NET % "")
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    proc = subprocess.run([sys.executable, "-m", "pycaffe_dist", "train", "--solver", "solver.prototxt",
                           "--workers", "2"], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=ROOT),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"pycaffe-dist train: error: worker [01] raised LayerError: layer 'data' \(Data\): "
                        r"record '\d+': .*", last), last
    assert proc.stderr.count("raised LayerError") == 1
