"""What every subcommand shares: Caffe-style flags and one-line errors."""
import argparse
import functools
import sys

from ..proto.errors import ProtoError


class ArgumentParser(argparse.ArgumentParser):
    """argparse that accepts Caffe's single-dash long flags (-solver) as well as --solver."""

    def add_flag(self, name, **kwargs):
        return self.add_argument("-" + name, "--" + name, dest=name, **kwargs)

    def error(self, message):
        self.print_usage(sys.stderr)
        print("%s: error: %s" % (self.prog, message), file=sys.stderr)
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
                print("pycaffe-dist %s: error: %s" % (command, e), file=sys.stderr)
                return 1
            except FileNotFoundError as e:
                print("pycaffe-dist %s: error: %s: no such file" % (command, e.filename), file=sys.stderr)
                return 1
            except OSError as e:      # a full disk, a read-only folder, a missing permission
                where = "%s: " % e.filename if e.filename else ""
                print("pycaffe-dist %s: error: %s%s" % (command, where, e.strerror or e), file=sys.stderr)
                return 1
            except KeyboardInterrupt:
                print("pycaffe-dist %s: interrupted" % command, file=sys.stderr)
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
