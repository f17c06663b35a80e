"""Skipping bad records (data_param.bad_record: SKIP): the count, the log, and when to give up.

A data layer in skip mode hands each decoded read (sources.Decoded) to its
BadRecords. The first WARN_FIRST skipped records get a warning each, with
key and reason; after that a count is logged at most every COUNT_SECONDS
and once more when the layer closes, so millions of bad records do not
make millions of lines. A run of bad records as long as every record the
worker can read is an error: skipping would otherwise loop for ever.
"""
import collections
import logging
import math
import time

log = logging.getLogger("pycaffe_dist")

WARN_FIRST = 10
COUNT_SECONDS = 30.0
SHAPE_PROBE = 16     # good records looked at to choose the tops' shape


class NoGoodRecord(Exception):
    """Skipping found no good record to serve; the message says where it looked."""


def pass_size(total, size, shuffled):
    """How many distinct records a worker of `size` can ever read, of `total`.

    Worker `rank` reads offsets rank, rank + size, ...: in order they cycle
    through total / gcd(total, size) records; reshuffled each epoch they
    reach every record.
    """
    return total if shuffled and size > 1 else total // math.gcd(total, size)


def common_shape(probes, source):
    """The most common shape among the first SHAPE_PROBE good records.

    `probes` yields (shape, None) for a good record and (None, reason) for
    a bad one, in record order. The most common rather than the first, so
    one odd record at the front does not make every other record 'bad'.
    """
    shapes, first_bad = [], None
    for shape, bad in probes:
        if bad is not None:
            first_bad = first_bad or bad
            continue
        shapes.append(tuple(shape))
        if len(shapes) == SHAPE_PROBE:
            break
    if not shapes:
        raise NoGoodRecord(f"{source}: every record is bad (the first: {first_bad})")
    return collections.Counter(shapes).most_common(1)[0][0]


class BadRecords:
    """The records one layer skipped: `last` (in the latest batch) and `total`.

    Args:
        who: how log lines name the layer.
        source: the database or list, for the error.
        pass_size: see pass_size().
        sharded: whether the worker reads a shard (for the error's wording).
    """

    def __init__(self, who, source, pass_size, sharded):
        self.who, self.source, self.pass_size, self.sharded = who, source, pass_size, sharded
        self.last = self.total = 0
        self._streak = set()      # keys of the bad records read since the last good one
        self._counted = (0, time.monotonic())   # (total at the last count logged, when)

    def new_batch(self):
        self.last = 0

    def note(self, decoded):
        """Count and log the records a read skipped; NoGoodRecord when a whole pass held no good one."""
        if not decoded.skipped and not self._streak:
            return
        for i, (_offset, _key, reason) in enumerate(decoded.skipped, self.total + 1):
            if i <= WARN_FIRST:
                log.warning("%s: skipped a bad record: %s", self.who, reason)
            if i == WARN_FIRST:
                log.warning("%s: further bad records are skipped without a line each: a count follows every %.0f s "
                            "and at each display", self.who, COUNT_SECONDS)
        self.last += len(decoded.skipped)
        self.total += len(decoded.skipped)
        if decoded.offsets:
            last_good = decoded.offsets[-1]
            self._streak = {key for offset, key, _ in decoded.skipped if offset > last_good}
        else:
            self._streak.update(key for _, key, _ in decoded.skipped)
        if len(self._streak) >= self.pass_size:
            whose = "this worker's" if self.sharded else "its"
            raise NoGoodRecord(f"{self.source}: no good record in a whole pass over {whose} {self.pass_size} "
                               f"records ({self.total} skipped; the last: {decoded.skipped[-1][2]})")
        counted, when = self._counted
        if self.total > max(counted, WARN_FIRST) and time.monotonic() - when >= COUNT_SECONDS:
            self.log_count()

    def log_count(self, when="so far"):
        counted, _ = self._counted
        since = f" ({self.total - counted} since the last count)" if counted else ""
        log.warning("%s: %d bad records skipped %s%s", self.who, self.total, when, since)
        self._counted = (self.total, time.monotonic())

    def close(self):
        """The closing count, when records were skipped since the last line that said so."""
        if self.total > max(self._counted[0], WARN_FIRST):
            self.log_count("in all")
