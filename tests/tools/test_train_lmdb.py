"""`pycaffe-dist train` on an LMDB: the data wait is logged and no pipeline thread outlives the run."""
import re
import threading

import numpy

from pycaffe_dist.cli import main
from tests.data.helpers import write_lmdb

NET = '''
layer { name: "d" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.00390625 } data_param { source: "train_lmdb" batch_size: 8 backend: LMDB } }
layer { name: "d" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { scale: 0.00390625 } data_param { source: "train_lmdb" batch_size: 8 backend: LMDB } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" include { phase: TEST } }
'''

SOLVER = '''net: "net.prototxt" test_iter: 4 test_interval: 30 base_lr: 0.1 momentum: 0.9
lr_policy: "fixed" display: 10 max_iter: 30 snapshot_after_train: false random_seed: 1'''


def test_training_from_lmdb_logs_data_wait_and_stops_its_threads(tmp_path, monkeypatch, capsys):
    rng = numpy.random.default_rng(0)
    labels = rng.integers(0, 2, 64)
    images = [numpy.full((1, 4, 4), 200 * int(c), numpy.uint8) + rng.integers(0, 40, (1, 4, 4)).astype(numpy.uint8)
              for c in labels]
    write_lmdb(str(tmp_path / "train_lmdb"), images, labels)
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    monkeypatch.chdir(tmp_path)
    before = set(threading.enumerate())
    assert main(["train", "--solver", "solver.prototxt"]) == 0
    err = capsys.readouterr().err
    waits = re.findall(r"Waited for data ([0-9.]+)s \(([0-9.]+)% of the time since the last display\)", err)
    assert len(waits) == 3 and all(0 <= float(p) <= 100 for _, p in waits)
    assert float(re.findall(r"Test net output #\d+: acc = ([0-9.]+)", err)[-1]) == 1.0
    # tqdm keeps one monitor thread per process for its bars; it is not ours.
    leftover = [t for t in set(threading.enumerate()) - before if t.is_alive() and t.name != "tqdm_monitor"]
    assert leftover == []
