"""What every subcommand shares: Caffe-style flags and one-line errors."""
import argparse
import functools
import sys

from ..proto.errors import ProtoError


def error_line(text):
    """Write `text` and its newline to stderr in one write: the ranks of an
    MPI job share mpiexec's output, and print's two writes (the text, then
    the newline) let two ranks' lines run together."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


class ArgumentParser(argparse.ArgumentParser):
    """argparse that accepts Caffe's single-dash long flags (-solver) as well as --solver."""

    def add_flag(self, name, **kwargs):
        return self.add_argument("-" + name, "--" + name, dest=name, **kwargs)

    def error(self, message):
        self.print_usage(sys.stderr)
        error_line("%s: error: %s" % (self.prog, message))
        raise SystemExit(2)


def parser(command, description):
    return ArgumentParser(prog="pycaffe-dist " + command, description=description,
                          allow_abbrev=False)


class UserError(Exception):
    """A mistake the user can fix; printed as one line, exit status 1."""


def user_errors(command):
    """Decorator: turn a user's mistakes into one line on stderr and a non-zero status."""
    def wrap(main):
        @functools.wraps(main)
        def run(argv):
            try:
                return main(argv)
            except SystemExit as e:
                return e.code if isinstance(e.code, int) else 2
            except (UserError, ProtoError, ArithmeticError) as e:
                error_line("pycaffe-dist %s: error: %s" % (command, e))
                return 1
            except FileNotFoundError as e:
                error_line("pycaffe-dist %s: error: %s: no such file" % (command, e.filename))
                return 1
            except OSError as e:      # a full disk, a read-only folder, a missing permission
                where = "%s: " % e.filename if e.filename else ""
                error_line("pycaffe-dist %s: error: %s%s" % (command, where, e.strerror or e))
                return 1
            except KeyboardInterrupt:
                error_line("pycaffe-dist %s: interrupted" % command)
                return 130
        return run
    return wrap


def parse_gpus(text):
    """Caffe's -gpu: '0,1', 'all', or empty."""
    if not text:
        return []
    if text == "all":
        from .. import backend
        if not backend.cupy_available:
            raise UserError("-gpu all: no GPU is available on this machine")
        return list(range(backend.cupy.cuda.runtime.getDeviceCount()))
    try:
        return [int(g) for g in text.split(",")]
    except ValueError:
        raise UserError("-gpu takes a comma-separated list of device ids or 'all', got %r" % text) from None
