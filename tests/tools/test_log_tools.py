"""parse_log, plot_log and the live training line, on synthetic logs and a real run."""
import csv
import io
import logging
import math
import re

import pytest
from PIL import Image

from pycaffe_dist.cli import CaffeFormatter, main
from pycaffe_dist.solvers import Solver
from pycaffe_dist.tools.parse_log import parse_log
from pycaffe_dist.tools.progress import TrainingProgress

LOG = """\
I1231 23:59:50.000000 100 base.py:231] Solving LeNet
I1231 23:59:50.500000 100 base.py:256] Iteration 0, Testing net (#0)
I1231 23:59:51.000000 100 base.py:225]     Test net output #0: accuracy = 0.1
I1231 23:59:51.000000 100 base.py:225]     Test net output #1: loss = 2.3 (* 1 = 2.3 loss)
I1231 23:59:52.250000 100 base.py:212] Iteration 0 (0 iter/s, 1.2s/100 iters), loss = 2.4
I1231 23:59:52.250000 100 base.py:225]     Train net output #0: loss = 2.4 (* 1 = 2.4 loss)
I1231 23:59:52.250000 100 base.py:280] Iteration 0, lr = 0.01
some line a tool printed
I0101 00:00:02.250000 100 base.py:212] Iteration 100 (10 iter/s, 10s/100 iters), loss = -nan
I0101 00:00:02.250000 100 base.py:225]     Train net output #0: loss = -nan (* 1 = -nan loss)
I0101 00:00:02.250000 100 base.py:280] Iteration 100, lr = 0.005
I0101 00:00:03.000000 100 base.py:256] Iteration 200, Testing net (#0)
I0101 00:00:04.000000 100 base.py:225]     Test net output #0: accuracy = 0.75
I0101 00:00:04.000000 100 base.py:225]     Test net output #1: loss = 0.5 (* 1 = 0.5 loss)
"""


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_parse_log_tables(tmp_path):
    (tmp_path / "run.log").write_text(LOG)
    assert main(["parse_log", str(tmp_path / "run.log"), str(tmp_path / "out")]) == 0
    train = read_csv(tmp_path / "out" / "run.log.train")
    test = read_csv(tmp_path / "out" / "run.log.test")
    assert list(train[0]) == ["NumIters", "Seconds", "LearningRate", "loss"]
    assert [(r["NumIters"], r["LearningRate"], r["loss"]) for r in train] == [("0", "0.01", "2.4"),
                                                                             ("100", "0.005", "nan")]
    # Seconds count from the first line, across the new year.
    assert float(train[0]["Seconds"]) == pytest.approx(2.25) and float(train[1]["Seconds"]) == pytest.approx(12.25)
    assert list(test[0]) == ["NumIters", "Seconds", "LearningRate", "accuracy", "loss"]
    assert [(r["NumIters"], r["LearningRate"], r["accuracy"], r["loss"]) for r in test] == [
        ("0", "0.01", "0.1", "2.3"), ("200", "0.005", "0.75", "0.5")]
    assert float(test[1]["Seconds"]) == pytest.approx(14.0)
    (tmp_path / "empty.log").write_text("nothing here\n")
    assert main(["parse_log", str(tmp_path / "empty.log"), str(tmp_path / "out")]) == 1


def test_plot_log_writes_a_png(tmp_path, capsys):
    (tmp_path / "run.log").write_text(LOG)
    assert main(["plot_log", str(tmp_path / "run.log"), str(tmp_path / "run.log"), str(tmp_path / "curves.png")]) == 0
    with Image.open(tmp_path / "curves.png") as im:
        assert im.format == "PNG" and im.size == (1200, 800)
        colors = im.convert("RGB").getcolors(1 << 20)
        assert len(colors) > 50  # lines, labels and legends were drawn, not a blank canvas
    (tmp_path / "empty.log").write_text("nothing here\n")
    assert main(["plot_log", str(tmp_path / "empty.log"), str(tmp_path / "x.png")]) == 1
    assert "no 'Train net output'" in capsys.readouterr().err


SOLVER = '''
net_param {
  layer { name: "d" type: "DummyData" top: "x" top: "y"
          dummy_data_param { shape { dim: 8 dim: 4 } shape { dim: 8 dim: 1 }
                             data_filler { type: "gaussian" } } }
  layer { name: "ip" type: "InnerProduct" bottom: "x" top: "p"
          inner_product_param { num_output: 1 weight_filler { type: "gaussian" std: 0.1 } } }
  layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "y" top: "loss" }
}
base_lr: 0.01 lr_policy: "step" gamma: 0.5 stepsize: 20 max_iter: 60 display: 10
test_iter: 2 test_interval: 30 random_seed: 2 snapshot_after_train: false
'''


def test_a_real_training_log_parses(tmp_path, capsys):
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    assert main(["train", "--solver", str(tmp_path / "solver.prototxt")]) == 0
    (tmp_path / "train.log").write_text(capsys.readouterr().err)
    train, test = parse_log(str(tmp_path / "train.log"))
    assert [r["NumIters"] for r in train] == [0, 10, 20, 30, 40, 50]
    assert [r["LearningRate"] for r in train] == pytest.approx([0.01, 0.01, 0.005, 0.005, 0.0025, 0.0025])
    assert [r["NumIters"] for r in test] == [0, 30, 60]
    assert all(math.isfinite(r["loss"]) for r in train + test)


def run_with_progress(enabled):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(CaffeFormatter())
    logger = logging.getLogger("pycaffe_dist.test_progress")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    from google.protobuf import text_format
    from pycaffe_dist.proto import caffe_pb2
    solver = Solver(text_format.Parse(SOLVER, caffe_pb2.SolverParameter()))

    class LogEach:
        def on_start(self, s):
            logger.info("Iteration %d, a log line", s.iter)

        def on_gradients_ready(self, s):
            pass

    solver.add_callback(LogEach())
    with TrainingProgress(solver, stream=stream, enabled=enabled, logger=logger.name) as progress:
        progress.bar.mininterval = 0
        solver.step(60)
    assert logger.handlers == [handler]
    return stream.getvalue()


def test_progress_line_keeps_log_lines_whole():
    shown = run_with_progress(True)
    assert "iter/s" in shown and re.search(r"\| [1-6]?\d/60 \[", shown)
    lines = [line.rsplit("\r", 1)[-1] for line in shown.split("\n")]
    logged = [line for line in lines if line.strip()]
    assert len(logged) == 60
    assert all(re.fullmatch(r"I\d{4} [\d:.]+ +\d+ \S+:\d+\] Iteration \d+, a log line", line) for line in logged)
    # Not a terminal and not forced: exactly the log lines, nothing else.
    plain = run_with_progress(None)
    assert "\r" not in plain and "iter/s" not in plain and len(plain.splitlines()) == 60
