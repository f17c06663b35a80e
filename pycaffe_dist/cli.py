"""The `pycaffe-dist` command: one subcommand per module in pycaffe_dist.tools."""
import importlib
import logging
import sys

from .tools import COMMANDS

USAGE = """usage: pycaffe-dist <command> [options]

commands:
  %s

`pycaffe-dist <command> --help` describes one command.""" % "\n  ".join(COMMANDS)


def setup_logging(level=logging.INFO):
    """Caffe-like log lines on stderr: 'I1121 23:58:49.123456 pid file] message'."""
    handler = StderrHandler()
    handler.setFormatter(CaffeFormatter())
    root = logging.getLogger("pycaffe_dist")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


class StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each record (it may be replaced)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class CaffeFormatter(logging.Formatter):
    def format(self, record):
        import os
        import time
        t = time.localtime(record.created)
        micros = int((record.created % 1) * 1e6)
        return "%s%02d%02d %s.%06d %5d %s:%d] %s" % (
            record.levelname[0], t.tm_mon, t.tm_mday, time.strftime("%H:%M:%S", t), micros,
            os.getpid(), record.filename, record.lineno, record.getMessage())


def main(argv=None):
    """Run a subcommand; return its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from . import __version__
        print("pycaffe-dist", __version__)
        return 0
    name = argv[0].replace("-", "_")
    if name not in COMMANDS:
        print("pycaffe-dist: unknown command %r\n\n%s" % (argv[0], USAGE), file=sys.stderr)
        return 2
    module = importlib.import_module("pycaffe_dist.tools." + name)
    setup_logging()
    return module.main(argv[1:])
