"""Stride-1 convolution by Winograd's minimal filtering, F(m x m, r x r).

A tile of m x m outputs needs an a x a block of the padded input, a = m +
r - 1. With Toom-Cook's matrices for a points (B^T: a x a, G: a x r,
A^T: m x a), a tile's outputs are

    A^T [ sum over channels (G g G^T) * (B^T d B) ] A

and the sum over channels is, for each of the a*a positions of the
transformed tile, one GEMM of (outputs x channels) weights by (channels x
tiles) data. Per output that is a*a/(m*m) multiply-adds instead of r*r:

    F(2x2, 3x3): 16/4 = 4 against 9   (points 0, 1, -1 and infinity)
    F(4x4, 3x3): 36/16 = 2.25 against 9
    F(2x2, 5x5): 36/4 = 9 against 25  (points 0, +-1, +-2 and infinity)

less what the last partial tile of each row and column wastes. Each
transform is a small GEMM (a or m*m rows) over a strided view of every tile
of a chunk at once, with a strided copies to gather or place the tiles'
columns, so the transforms cost some passes over memory the size of the
input and output; `depth` and MIN_DEPTH keep the path to layers whose
GEMMs outweigh that. On the CPU only: CuPy arrays keep the im2col path.

The gradients are the same linear maps transposed and stay in the
transformed domain: dM = A dY A^T per tile; the input gradient is B (U^T dM)
B^T added into the padded input gradient at each tile (tiles overlap by
r - 1 lines: line m*t + q gets component q, q + m, ... of tiles t, t - 1,
...); the weight gradient is G^T (sum over tiles of dM V^T) G.

Results equal direct convolution up to float rounding; F(2x2, 3x3) adds
and subtracts at most 4 terms per transform (a few ulps in float32), the
6-point ones multiply by up to 5 and 1/24 (tests hold float32 results to
each variant's bound against float64).

The batch is cut into chunks of images whose transformed data fits in
cache (CHUNK_BYTES), split over ops.threads' threads like the im2col
path's. Layouts: the transformed input V is (a*a, tiles, C), channels
last, so that its transforms run along C; the GEMMs' results M and dM are
(a*a, O, tiles), so the output transforms add whole planes. Each pass has
one transposing copy at either end (x into the padded channels-last
buffer, the tiles back into y).
"""
import functools
import math
import threading
from fractions import Fraction

import numpy

from . import threads
from .workspace import Workspace

# Transformed data per chunk (the larger of input's and output's): 8 MB ran
# CaffeNet's conv2-conv4 fastest of 2, 4, 8, 16 and 64 MB (one thread).
CHUNK_BYTES = 8 << 20

# False: every convolution takes the im2col path (for comparisons).
ENABLED = True

# The least depth() per kernel size at which Winograd beat im2col + GEMM in
# bench/bench_conv.py --winograd (one thread): CaffeNet's conv2 (5x5, 35)
# conv3 (3x3, 154) and conv4 (96) gain, conv5 (77) breaks even, the CIFAR
# nets' 5x5 layers (16, 21) lose.
MIN_DEPTH = {3: 80, 5: 30}

# Every buffer of a Winograd call is scratch for that call only, so all the
# Winograd layers a thread runs share one grow-only set (per lane): the
# memory is the largest layer's, not the sum over layers.
_LOCAL = threading.local()


def _shared_workspace():
    """The calling thread's Workspace for Winograd scratch."""
    if getattr(_LOCAL, "workspace", None) is None:
        _LOCAL.workspace = Workspace()
    return _LOCAL.workspace


# Interpolation points per tile size a (infinity is the a-th).
_POINTS = {4: (0, 1, -1), 6: (0, 1, -1, 2, -2)}


@functools.lru_cache(maxsize=None)
def matrices(m, r):
    """(B^T, G, A^T) of F(m, r) as float64 arrays.

    A^T[j, i] = p_i^j and G[i, k] = p_i^k / prod_{l != i} (p_i - p_l) for the
    finite points, the point at infinity taking the last output / kernel
    tap; B^T is then the unique matrix with sum_i A^T[j,i] G[i,k] B^T[i,s] =
    [s == j + k], solved for here and checked exact (its entries are
    integers for these points)."""
    a = m + r - 1
    points = [Fraction(p) for p in _POINTS[a]]
    at = [[p ** j for p in points] + [Fraction(int(j == m - 1))] for j in range(m)]
    g = []
    for i, p in enumerate(points):
        scale = Fraction(1)
        for q in points[:i] + points[i + 1:]:
            scale *= p - q
        g.append([p ** k / scale for k in range(r)])
    g.append([Fraction(int(k == r - 1)) for k in range(r)])
    at, g = numpy.array(at, float), numpy.array(g, float)
    system = numpy.array([at[j] * g[:, k] for j in range(m) for k in range(r)])
    target = numpy.array([[float(s == j + k) for s in range(a)] for j in range(m) for k in range(r)])
    bt = numpy.linalg.lstsq(system, target, rcond=None)[0]
    bt_int = numpy.rint(bt)
    if not numpy.allclose(bt, bt_int, atol=1e-9) or not numpy.allclose(system @ bt_int, target):
        raise AssertionError(f"no integer input transform for F({m}, {r})")
    return bt_int, g, at


@functools.lru_cache(maxsize=None)
def _transforms(m, r, dtype):
    """The matrices the passes multiply by, in `dtype`, made once: B^T, and
    kron(G, G) and kron(A^T, A^T), which apply G and A^T along both axes of
    a flattened tile in one product."""
    bt, g, at = matrices(m, r)
    dtype = numpy.dtype(dtype)
    return bt.astype(dtype), numpy.kron(g, g).astype(dtype), numpy.kron(at, at).astype(dtype)


def tile_size(geometry, group, channels, outputs, spatial):
    """m for F(m x m, r x r) when this convolution takes the Winograd path,
    else None: 2-D, a square 3x3 or 5x5 kernel, stride 1, no dilation, pad
    below the kernel, and enough work per transformed value (MIN_DEPTH)."""
    if not ENABLED or len(geometry.kernel) != 2:
        return None
    r = geometry.kernel[0]
    if (geometry.kernel != (r, r) or r not in MIN_DEPTH or geometry.stride != (1, 1)
            or geometry.dilation != (1, 1) or max(geometry.pad) >= r):
        return None
    if depth(channels // group, outputs // group) < MIN_DEPTH[r]:
        return None
    if r == 5:
        return 2
    # F(4x4) wastes more of a ragged edge: take it when its multiply-adds
    # per output, partial tiles counted, are clearly fewer.
    out = geometry.out_shape(spatial)
    per_output = {m: (m + 2) ** 2 * math.prod(-(-s // m) for s in out) / math.prod(out) for m in (2, 4)}
    return 4 if per_output[4] < 0.6 * per_output[2] else 2


def depth(channels, outputs):
    """GEMM multiply-adds per value the transforms move, per tile position
    and group: C*O / (C + O). The transforms' cost grows with C + O (V and M
    are read and written), the GEMMs' with C*O."""
    return channels * outputs / (channels + outputs)


def _windows(x, axis, a, m, count):
    """A view of x with `axis` replaced by (count, a): window t holds lines
    m*t .. m*t + a - 1 (windows overlap; nothing is copied)."""
    shape = x.shape[:axis] + (count, a) + x.shape[axis + 1:]
    strides = x.strides[:axis] + (m * x.strides[axis], x.strides[axis]) + x.strides[axis + 1:]
    return numpy.lib.stride_tricks.as_strided(x, shape, strides, writeable=False)


class _Shape:
    """Tile counts and padded sizes of one chunk."""

    def __init__(self, geometry, m, n, channels, outputs, spatial):
        r = geometry.kernel[0]
        self.m, self.a = m, m + r - 1
        self.c, self.o = channels, outputs
        self.h, self.w = spatial
        self.pad = geometry.pad
        self.ho, self.wo = geometry.out_shape(spatial)
        self.th, self.tw = -(-self.ho // m), -(-self.wo // m)
        self.tiles = n * self.th * self.tw
        self.hp, self.wp = m * self.th + r - 1, m * self.tw + r - 1


class Winograd:
    """y = conv(x, weight) + bias and its gradients by F(m x m, r x r), with
    the scratch all Winograd layers on a thread share. Same calling convention as
    ops.conv.Convolution: x (N, C, H, W), weight (O, C/group, r, r), y (N, O,
    Ho, Wo); parameter gradients are added to the given diffs, dx is
    overwritten."""

    def __init__(self, geometry, group, m):
        self.geometry = geometry
        self.group = int(group)
        self.m = int(m)
        self.r = geometry.kernel[0]
        self.a = self.m + self.r - 1
        self.workspace = None          # the calling thread's shared one, set per call
        self._choices = threads.Choices()

    # -- buffers and chunks --------------------------------------------------

    def _transforms(self, dtype):
        return _transforms(self.m, self.r, numpy.dtype(dtype))

    def _prefix(self, lane, name, shape, dtype):
        return self.workspace.prefix(f"{lane}:{name}", shape, dtype, numpy)

    def _shape(self, n, c, o, spatial):
        return _Shape(self.geometry, self.m, n, c, o, spatial)

    def _runs(self, n, channels, outputs, spatial, itemsize):
        """Image ranges of at most CHUNK_BYTES of transformed data, as many
        and as long for each thread, split into one contiguous run per
        thread."""
        probe = self._shape(1, channels, outputs, spatial)
        per_image = self.a * self.a * max(channels, outputs) * probe.th * probe.tw * itemsize
        lanes = min(threads.count(numpy), n)
        per_lane = -(-n // lanes)
        chunks_per_lane = -(-per_lane // max(1, CHUNK_BYTES // per_image))
        runs = []
        for start in range(0, n, per_lane):
            length = min(n, start + per_lane) - start
            cuts = [start + length * k // chunks_per_lane for k in range(chunks_per_lane + 1)]
            runs.append([(a, b) for a, b in zip(cuts, cuts[1:]) if b > a])
        return runs

    def _transformed_weights(self, weight):
        """U = G g G^T: (a*a, group, O/g, C/g), one GEMM by kron(G, G)."""
        o, cg = weight.shape[:2]
        u = self.workspace.prefix("u", (self.a * self.a, o * cg), weight.dtype, numpy)
        numpy.matmul(self._transforms(weight.dtype)[1], weight.reshape(o * cg, -1).T, out=u)
        return u.reshape(-1, self.group, o // self.group, cg)

    def _add_weight_grad(self, du, dweight):
        """dW += G^T dU G, dU (a*a, O * C/g)."""
        grad = self.workspace.prefix("dw", (self.r * self.r, du.shape[1]), du.dtype, numpy)
        numpy.matmul(self._transforms(du.dtype)[1].T, du, out=grad)
        dweight.reshape(du.shape[1], -1)[...] += grad.T

    def _by_group(self, x, channels):
        """(a*a, channels, tiles) as (a*a, group, channels/group, tiles)."""
        return x.reshape(x.shape[0], self.group, channels // self.group, x.shape[-1])

    def _by_group_last(self, x, channels):
        """(a*a, tiles, channels) as (a*a, group, tiles, channels/group)."""
        return x.reshape(x.shape[0], x.shape[1], self.group, channels // self.group).transpose(0, 2, 1, 3)

    # -- transforms ----------------------------------------------------------

    def _input_transform(self, lane, x, s):
        """V (a*a, tiles, C) = B^T d B for every a x a tile of x's images:
        B^T down each tile's rows (a batched GEMM over a strided view of
        the padded input), the tiles' columns gathered, B^T across them
        (one GEMM)."""
        n, a, m = x.shape[0], self.a, self.m
        bt = self._transforms(x.dtype)[0]
        ph, pw = s.pad
        xpad = self._prefix(lane, "xpad", (n, s.hp, s.wp, s.c), x.dtype)
        xpad[:, :ph] = 0                   # the padding (the buffer is shared: written each time)
        xpad[:, ph + s.h:] = 0
        xpad[:, ph:ph + s.h, :pw] = 0
        xpad[:, ph:ph + s.h, pw + s.w:] = 0
        numpy.copyto(xpad[:, ph:ph + s.h, pw:pw + s.w], x.transpose(0, 2, 3, 1))
        rows = self._prefix(lane, "rows", (n, s.th, a, s.wp * s.c), x.dtype)
        numpy.matmul(bt, _windows(xpad.reshape(n, s.hp, -1), 1, a, m, s.th), out=rows)
        rows = rows.reshape(n, s.th, a, s.wp, s.c)
        gathered = self._prefix(lane, "gathered", (a, a, n, s.th, s.tw, s.c), x.dtype)
        for col in range(a):
            numpy.copyto(gathered[:, col], rows[:, :, :, col:col + m * (s.tw - 1) + 1:m].transpose(2, 0, 1, 3, 4))
        v = self._prefix(lane, "v", (a * a, s.tiles, s.c), x.dtype)
        numpy.matmul(bt, gathered.reshape(a, a, -1), out=v.reshape(a, a, -1))
        return v

    def _output_transform(self, lane, mm, y, s, bias):
        """y = A^T M A per tile (plus bias): M (a*a, O, tiles); one GEMM by
        kron(A^T, A^T), then the m*m outputs of each tile into place."""
        n, m = y.shape[0], self.m
        z = self._prefix(lane, "z", (m * m, s.o * s.tiles), mm.dtype)
        numpy.matmul(self._transforms(mm.dtype)[2], mm.reshape(self.a * self.a, -1), out=z)
        zt = z.reshape(m, m, s.o, n, s.th, s.tw)
        for j in range(m):
            rows = (s.ho - j + m - 1) // m
            for i in range(m):
                cols = (s.wo - i + m - 1) // m
                numpy.copyto(y[:, :, j::m, i::m], zt[j, i, :, :, :rows, :cols].transpose(1, 0, 2, 3))
        if bias is not None:
            y += bias.reshape(1, -1, 1, 1)

    def _output_grad_transform(self, lane, dy, s):
        """dM (a*a, O, tiles) = A dY A^T per tile: each tile's m*m output
        gradients gathered, then one GEMM by kron(A^T, A^T)^T."""
        n, m = dy.shape[0], self.m
        d = self._prefix(lane, "dy_tiles", (m, m, s.o, n, s.th, s.tw), dy.dtype)
        for j in range(m):
            rows = (s.ho - j + m - 1) // m
            for i in range(m):
                cols = (s.wo - i + m - 1) // m
                numpy.copyto(d[j, i, :, :, :rows, :cols], dy[:, :, j::m, i::m].transpose(1, 0, 2, 3))
                d[j, i, :, :, rows:] = 0
                d[j, i, :, :, :, cols:] = 0
        dm = self._prefix(lane, "dm", (self.a * self.a, s.o, s.tiles), dy.dtype)
        numpy.matmul(self._transforms(dy.dtype)[2].T, d.reshape(m * m, -1), out=dm.reshape(self.a * self.a, -1))
        return dm

    def _input_grad_transform(self, lane, dv, dx, s):
        """dx = the interior of the sum over tiles of B dV B^T, each placed
        at its tile: dV (a*a, tiles, C). B across (one GEMM), the columns
        added into place, B down (a batched GEMM), the rows added into place."""
        n, a, m = dx.shape[0], self.a, self.m
        b = self._transforms(dv.dtype)[0].T
        across = self._prefix(lane, "across", (a, a, n, s.th, s.tw, s.c), dv.dtype)
        numpy.matmul(b, dv.reshape(a, a, -1), out=across.reshape(a, a, -1))
        placed = self._prefix(lane, "placed", (n, s.th, a, s.wp, s.c), dv.dtype)
        placed.fill(0)
        for col in range(a):
            placed[:, :, :, col:col + m * (s.tw - 1) + 1:m] += across[:, col].transpose(1, 2, 0, 3, 4)
        down = self._prefix(lane, "down", (n, s.th, a, s.wp * s.c), dv.dtype)
        numpy.matmul(b, placed.reshape(n, s.th, a, -1), out=down)
        down = down.reshape(n, s.th, a, s.wp, s.c)
        dxpad = self._prefix(lane, "dxpad", (n, s.hp, s.wp, s.c), dv.dtype)
        dxpad.fill(0)
        for row in range(a):
            dxpad[:, row:row + m * (s.th - 1) + 1:m] += down[:, :, row]
        ph, pw = s.pad
        numpy.copyto(dx, dxpad[:, ph:ph + s.h, pw:pw + s.w].transpose(0, 3, 1, 2))

    # -- passes --------------------------------------------------------------

    def forward(self, x, weight, bias, y, relu=False):
        self.workspace = _shared_workspace()
        n, c = x.shape[:2]
        o = weight.shape[0]
        u = self._transformed_weights(weight)
        runs = self._runs(n, c, o, x.shape[2:], x.itemsize)

        def lane(index, run):
            for n0, n1 in run:
                s = self._shape(n1 - n0, c, o, x.shape[2:])
                v = self._input_transform(index, x[n0:n1], s)
                mm = self._prefix(index, "m", (self.a * self.a, o, s.tiles), x.dtype)
                numpy.matmul(u, self._by_group_last(v, c).swapaxes(2, 3), out=self._by_group(mm, o))
                self._output_transform(index, mm, y[n0:n1], s, bias)
                if relu:
                    numpy.maximum(y[n0:n1], 0, out=y[n0:n1])
        threads.run([functools.partial(lane, k, run) for k, run in enumerate(runs)], self._choices["forward"])

    def backward_data(self, dy, weight, dx):
        """dx = the transposed convolution of dy (Deconvolution's forward)."""
        self.backward(dx, dy, weight, dx=dx)

    def backward(self, x, dy, weight, dweight=None, dbias=None, dx=None):
        """Add the weight/bias gradients into dweight/dbias and write dx
        (each only when given)."""
        if dbias is not None:
            dbias += dy.sum(axis=(0, 2, 3))
        if dweight is None and dx is None:
            return
        self.workspace = _shared_workspace()
        n, c = x.shape[:2]
        o = weight.shape[0]
        g, aa = self.group, self.a * self.a
        u = self._transformed_weights(weight) if dx is not None else None
        runs = self._runs(n, c, o, x.shape[2:], dy.itemsize)
        accumulators = [None] * len(runs)

        def lane(index, run):
            if dweight is not None:
                acc = accumulators[index] = self._prefix(index, "du", (aa, g, o // g, c // g), weight.dtype)
                acc.fill(0)
                product = self._prefix(index, "du_chunk", acc.shape, acc.dtype)
            for n0, n1 in run:
                s = self._shape(n1 - n0, c, o, x.shape[2:])
                dm = self._by_group(self._output_grad_transform(index, dy[n0:n1], s), o)
                if dweight is not None:
                    v = self._input_transform(index, x[n0:n1], s)
                    acc += numpy.matmul(dm, self._by_group_last(v, c), out=product)
                if dx is not None:
                    dv = self._prefix(index, "dv", (aa, s.tiles, c), dy.dtype)
                    numpy.matmul(dm.swapaxes(2, 3), u, out=self._by_group_last(dv, c))
                    self._input_grad_transform(index, dv, dx[n0:n1], s)
        threads.run([functools.partial(lane, k, run) for k, run in enumerate(runs)],
                    self._choices["backward", dweight is not None, dx is not None])
        if dweight is not None:
            # Lane by lane in a fixed order: the same thread count, the same sum.
            total = accumulators[0]
            for acc in accumulators[1:]:
                total += acc
            self._add_weight_grad(total.reshape(aa, -1), dweight)
