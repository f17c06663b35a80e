"""Compressed gradients for synchronous training: 1-bit, float16 and top-k, with error feedback.

Each rank adds last step's residual to its gradient (g' = g + r), sends a
compressed form q of g', and keeps r = g' - decode(q) for the next step, so
what compression drops is delayed, not lost (Seide et al., Interspeech
2014). The decoded contributions of all ranks are summed in rank order, so
every rank applies the same bits.

    onebit  one sign bit per value plus, per column, the means of the
            positive and of the other values (a column is a row of each
            parameter blob: one output unit's weights); 32x fewer bytes.
    fp16    the gradient rounded to float16, summed with the allreduce
            algorithm of the run, half precision on the wire; 2x.
    topk    the k = topk_ratio * n values of largest magnitude, as
            (index, value) pairs; 1 / (2 * topk_ratio)x.

onebit and topk payloads cannot be summed on the way, so ranks allgather
them (each rank receives p - 1 payloads); fp16 is summed on the way.
"""
import numpy

from . import algorithms, staging
from .strategies import SyncSGD


class OneBit:
    """Sign bits with per-column means of the positive and the non-positive values.

    Columns that are contiguous runs of the buffer, in order (as columns_of
    makes them), are summed with reduceat and expanded with repeat, about
    twice as fast as bincount and gathering by column index, which
    serve any other layout.
    """

    def __init__(self, columns):
        self.columns = columns                                  # column index of every value
        self.n, self.n_columns = columns.size, int(columns.max()) + 1 if columns.size else 0
        sizes = numpy.bincount(columns, minlength=self.n_columns)
        self.counts = sizes.astype(numpy.float64)
        self.payload_bytes = (self.n + 7) // 8 + 8 * self.n_columns
        runs = self.n > 0 and bool(numpy.all(sizes > 0)) and bool(numpy.all(numpy.diff(columns) >= 0))
        self._sizes = sizes if runs else None
        self._starts = numpy.concatenate([[0], numpy.cumsum(sizes)[:-1]]) if runs else None

    def encode(self, g):
        """(payload bytes, what the payload decodes to) of gradient g."""
        positive = g > 0
        n_pos = self._sum(positive, numpy.int64)
        sum_pos = self._sum(numpy.where(positive, g, 0), numpy.float64)
        sum_all = self._sum(g, numpy.float64)
        n_neg = self.counts - n_pos
        means = numpy.zeros((2, self.n_columns), numpy.float32)
        numpy.divide(sum_pos, n_pos, out=means[0], where=n_pos > 0, casting="unsafe")
        numpy.divide(sum_all - sum_pos, n_neg, out=means[1], where=n_neg > 0, casting="unsafe")
        payload = numpy.concatenate([numpy.packbits(positive), means.reshape(-1).view(numpy.uint8)])
        return payload, self._values(positive, means)

    def decode(self, payload):
        bits = payload[:(self.n + 7) // 8]
        means = payload[bits.size:].view(numpy.float32).reshape(2, self.n_columns)
        return self._values(numpy.unpackbits(bits, count=self.n).view(bool), means)

    def add_to(self, out, payload):
        """out += decode(payload)."""
        out += self.decode(payload)

    def _sum(self, values, dtype):
        """Per-column sums of `values`."""
        if self._starts is not None:
            return numpy.add.reduceat(values, self._starts, dtype=dtype)
        return numpy.bincount(self.columns, weights=values, minlength=self.n_columns).astype(dtype)

    def _values(self, positive, means):
        if self._sizes is not None:
            return numpy.where(positive, numpy.repeat(means[0], self._sizes), numpy.repeat(means[1], self._sizes))
        return numpy.where(positive, means[0][self.columns], means[1][self.columns])


class TopK:
    """The k values of largest magnitude as int32 indices and float32 values."""

    def __init__(self, n, ratio):
        self.n, self.k = n, max(1, min(n, int(round(ratio * n))))
        self.payload_bytes = 8 * self.k

    def encode(self, g):
        index = numpy.argpartition(numpy.abs(g), self.n - self.k)[self.n - self.k:].astype(numpy.int32)
        index.sort()
        values = g[index].astype(numpy.float32)
        decoded = numpy.zeros_like(g)
        decoded[index] = values
        return numpy.concatenate([index.view(numpy.uint8), values.view(numpy.uint8)]), decoded

    def decode(self, payload):
        out = numpy.zeros(self.n, numpy.float32)
        self.add_to(out, payload)
        return out

    def add_to(self, out, payload):
        """out += decode(payload), touching only the k values sent (their indices are distinct)."""
        out[payload[:4 * self.k].view(numpy.int32)] += payload[4 * self.k:].view(numpy.float32)


def columns_of(net):
    """The column index of every value of the flat buffer: rows of each blob, one column per 1-D blob."""
    columns = numpy.zeros(net.flat_data.size, numpy.int64)
    next_column = 0
    for p in sorted(net.learnable, key=lambda p: p.offset):
        shape = p.blob.shape
        rows = shape[0] if len(shape) >= 2 else 1
        per_row = p.blob.count // rows if rows else 0
        columns[p.offset:p.offset + p.blob.count] = next_column + numpy.arange(p.blob.count) // max(per_row, 1)
        next_column += rows
    return columns


class CompressedSGD(SyncSGD):
    """Synchronous data parallel SGD whose gradients travel compressed.

    Args:
        comm: the rank's communicator.
        compression: "onebit", "fp16" or "topk".
        error_feedback: keep the compression error and add it to the next gradient.
        topk_ratio: topk: the fraction of values sent.
        algorithm: fp16: the allreduce algorithm (algorithms.ALLREDUCE).
    """

    def __init__(self, comm, compression, error_feedback=True, topk_ratio=0.01, algorithm="ring",
                 chunk=algorithms.CHUNK_BYTES):
        super().__init__(comm, layer_wise=False, algorithm=algorithm)
        if compression not in ("onebit", "fp16", "topk"):
            raise ValueError("unknown compression %r (known: onebit, fp16, topk)" % compression)
        self.compression = compression
        self.error_feedback = error_feedback
        self.topk_ratio = topk_ratio
        self.chunk = chunk
        self.codec = None
        self.residual = None
        self.stage_numpy = False    # compress a numpy gradient through the host copy too (what CuPy ones take)
        self._host = None

    def attach(self, solver):
        super().attach(solver)
        n = solver.net.flat_diff.size
        if self.compression == "onebit":
            self.codec = OneBit(columns_of(solver.net))
        elif self.compression == "topk":
            self.codec = TopK(n, self.topk_ratio)
        self.residual = numpy.zeros(n, solver.net.flat_diff.dtype)
        return self

    def on_gradients_ready(self, solver):
        g = solver.net.flat_diff
        if self.comm.size == 1:
            return
        if self.stage_numpy or not isinstance(g, numpy.ndarray):
            # A GPU gradient: the codecs and the residual are numpy, so compress
            # a host copy (one buffer, reused) and copy the result back.
            if self._host is None:
                self._host = numpy.empty(g.size, numpy.dtype(g.dtype))
            staging.download(g, self._host)
            self._exchange(self._host)
            staging.upload(self._host, g)
        else:
            self._exchange(g)

    def _exchange(self, g):
        """Compress `g` (numpy, with the residual added), exchange, and leave the mean of what all ranks sent."""
        if self.error_feedback:
            g += self.residual
        if self.compression == "fp16":
            sent = g.astype(numpy.float16).astype(g.dtype)
            self._keep_residual(g, sent)
            g[...] = sent
            algorithms.allreduce(self.comm, g, self.algorithm, self.chunk, wire=numpy.float16)
        else:
            payload, sent = self.codec.encode(g)
            self._keep_residual(g, sent)
            everyone = numpy.empty((self.comm.size, payload.size), numpy.uint8)
            algorithms.ring_allgather(self.comm, payload, everyone, self.chunk)
            g[...] = 0
            for r in range(self.comm.size):         # rank order: the same sum everywhere
                self.codec.add_to(g, everyone[r])
        g *= 1.0 / self.comm.size

    def _keep_residual(self, g, sent):
        if self.error_feedback:
            numpy.subtract(g, sent, out=self.residual)
