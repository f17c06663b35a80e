"""`pycaffe-dist parse_log LOG OUTDIR`: a training log's outputs as CSV tables (Caffe's parse_log.py).

Writes OUTDIR/<log name>.train and OUTDIR/<log name>.test, one row per
display (train) or test pass, with columns NumIters, Seconds (since the log
began), LearningRate, then each net output (loss, accuracy, ...). Reads the
lines Caffe and `pycaffe-dist train` write:

    I1122 00:26:51.055443 18249 base.py:212] Iteration 300 (4.88 iter/s, 20.489s/100 iters), loss = 0.553
    I1122 00:26:51.055492 18249 base.py:280] Iteration 300, lr = 0.0097
    I1122 00:27:11.544626 18249 base.py:256] Iteration 500, Testing net (#0)
    I1122 00:27:12.000000 18249 base.py:225]     Test net output #0: accuracy = 0.87
    I1122 00:26:51.055443 18249 base.py:225]     Train net output #0: loss = 0.36 (* 1 = 0.36 loss)
"""
import csv
import datetime
import os
import re
from collections import OrderedDict

from .common import UserError, parser, user_errors

_STAMP = re.compile(r"^[IWEF](\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d+)")
_ITERATION = re.compile(r"Iteration (\d+)")
_LR = re.compile(r"Iteration (\d+), lr = (\S+)")
_OUTPUT = re.compile(r"(Train|Test) net output #(\d+): (\S+) = (\S+)")
FIXED_COLUMNS = ("NumIters", "Seconds", "LearningRate")


def _number(text):
    try:
        return float(text)
    except ValueError:
        return float("nan")  # "-nan" and the like


class _Clock:
    """Seconds since the first stamped line; logs carry no year, so a month going back adds one."""

    def __init__(self):
        self.start = None
        self.last = None
        self.year = 2000  # a leap year, so "0229" parses

    def seconds(self, line):
        m = _STAMP.match(line)
        if not m:
            return None
        month, day, hour, minute, second = (int(g) for g in m.groups()[:5])
        micros = int(m.group(6)[:6].ljust(6, "0"))
        if self.last is not None and month < self.last.month:
            self.year += 1
        try:
            now = datetime.datetime(self.year, month, day, hour, minute, second, micros)
        except ValueError:
            return None
        if self.start is None:
            self.start = now
        self.last = now
        return (now - self.start).total_seconds()


def parse_log(path):
    """(train rows, test rows) of a log file; each row an OrderedDict of the CSV columns."""
    tables = {"Train": [], "Test": []}
    current = {"Train": None, "Test": None}
    lr_at = {}                # iteration -> the lr printed for it
    clock = _Clock()
    iteration, seconds = None, 0.0
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except FileNotFoundError:
        raise UserError("%s: no such file" % path) from None
    for line in lines:
        stamp = clock.seconds(line)
        if stamp is not None:
            seconds = stamp
        lr = _LR.search(line)
        if lr:
            lr_at[int(lr.group(1))] = _number(lr.group(2))
        it = _ITERATION.search(line)
        if it:
            iteration = int(it.group(1))
        out = _OUTPUT.search(line)
        if out is None or iteration is None:
            continue
        kind, index, name, value = out.group(1), int(out.group(2)), out.group(3), _number(out.group(4))
        row = current[kind]
        if row is None or index == 0 or name in row:
            row = OrderedDict([("NumIters", iteration), ("Seconds", seconds), ("LearningRate", None)])
            tables[kind].append(row)
            current[kind] = row
        row[name] = value
    for rows in tables.values():
        _fill_learning_rates(rows, lr_at)
    return tables["Train"], tables["Test"]


def _fill_learning_rates(rows, lr_at):
    """The lr printed for the row's iteration, else the latest one before it, else the first one."""
    known = sorted(lr_at.items())
    for row in rows:
        before = [lr for it, lr in known if it <= row["NumIters"]]
        row["LearningRate"] = before[-1] if before else (known[0][1] if known else float("nan"))


def write_csv(path, rows, delimiter=","):
    """Write rows (as parse_log returns them) with a header line; columns are the union, in order seen."""
    columns = list(FIXED_COLUMNS)
    for row in rows:
        columns += [c for c in row if c not in columns]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, delimiter=delimiter, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("%.10g" % v if isinstance(v, float) else v) for k, v in row.items()})


def build_parser():
    p = parser("parse_log", "Turn a training log into CSV tables of its train and test outputs.")
    p.add_argument("logfile", help="log of `pycaffe-dist train` or `caffe train`")
    p.add_argument("output_dir", help="folder for <log name>.train and <log name>.test")
    p.add_flag("delimiter", default=",", help="column separator (default ',')")
    p.add_flag("verbose", action="store_true", help="print the paths written")
    return p


@user_errors("parse_log")
def main(argv):
    """Entry point of `pycaffe-dist parse_log`; returns the exit status."""
    args = build_parser().parse_args(argv)
    train, test = parse_log(args.logfile)
    if not train and not test:
        raise UserError("%s: no 'Train net output' or 'Test net output' lines found" % args.logfile)
    os.makedirs(args.output_dir, exist_ok=True)
    base = os.path.join(args.output_dir, os.path.basename(args.logfile))
    for suffix, rows in ((".train", train), (".test", test)):
        write_csv(base + suffix, rows, args.delimiter)
        if args.verbose:
            print("Wrote %s (%d rows)" % (base + suffix, len(rows)))
    return 0
