"""Command-line flags spelled as Caffe's tools spell them (gflags).

Caffe users type `-gray -resize_height 32`, `-resize_height=32`,
`-gray=false` or `--nogray`; argparse alone understands only some of these.
`FlagParser` accepts all of them, plus the double-dash forms, and reports
a mistake in one line instead of a usage dump.
"""
import argparse
import contextlib
import sys

from tqdm import tqdm

_TRUE = {"true", "1", "yes", "t", "y"}
_FALSE = {"false", "0", "no", "f", "n"}


class UsageError(Exception):
    """A command line that cannot be parsed; the message says why in one line."""


class FlagParser(argparse.ArgumentParser):
    """argparse with gflags spellings: `-flag`, `--flag`, `-flag=v`, `-bool=false`, `-nobool`."""

    def __init__(self, prog, description):
        super().__init__(prog=prog, description=description, allow_abbrev=False)
        self._bools = set()

    def flag(self, name, default=None, type=str, help=None):
        """A valued flag `-name V` / `-name=V` / `--name V`."""
        self.add_argument("-" + name, "--" + name, dest=name, default=default, type=type,
                          metavar=name.upper(), help=help)

    def bool_flag(self, name, help=None):
        """A boolean flag: `-name`, `-name=true|false`, `-noname`."""
        self._bools.add(name)
        self.add_argument("-" + name, "--" + name, dest=name, action="store_true", help=help)

    def _normalize(self, argv):
        out = []
        for arg in argv:
            bare = arg.lstrip("-")
            if arg.startswith("-") and bare:
                name, eq, value = bare.partition("=")
                if name in self._bools:
                    if not eq or value.lower() in _TRUE:
                        out.append("-" + name)
                    elif value.lower() not in _FALSE:
                        raise UsageError(f"-{name} takes true or false, got {value!r}")
                    continue
                if not eq and name.startswith("no") and name[2:] in self._bools:
                    continue
            out.append(arg)
        return out

    def parse(self, argv):
        """Parse `argv`; raises UsageError (one line) instead of exiting."""
        return self.parse_args(self._normalize(list(argv)))

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} -h)")


def run_main(prog, body, argv):
    """Run a tool's body(argv) and turn user errors into one stderr line and exit status 1.

    `body` raises `errors` it knows are the user's (bad files, bad flags);
    they are printed without a traceback. Ctrl-C exits with 130.
    """
    from .datum import DatumError
    from .db import DBError
    from .idx import IdxError
    from .image import ImageError
    from ..proto.errors import ProtoError
    # OSError: an output that cannot be written (permissions, a full disk).
    user_errors = (UsageError, DBError, DatumError, IdxError, ImageError, ToolError, ProtoError, OSError)
    try:
        return body(argv) or 0
    except SystemExit as e:   # -h
        return e.code if isinstance(e.code, int) else 0
    except user_errors as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


class ToolError(Exception):
    """Any other user mistake a tool reports in one line."""


@contextlib.contextmanager
def progress(total, desc, unit="rec"):
    """A tqdm bar on stderr for a long conversion; `bar.update(n)` as work is done.

    Shown only on a terminal (logs and pipes get the summary line alone), and
    wiped when the work fails, so the error is the one line left to read.
    """
    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None, mininterval=0.5,
               dynamic_ncols=True)
    try:
        yield bar
    except BaseException:
        bar.leave = False
        bar.close()
        raise
    bar.close()
