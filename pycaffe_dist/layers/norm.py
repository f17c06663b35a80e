"""Normalization layers: BatchNorm, MVN. (LRN lives with the vision layers.)"""
from ..proto.caffe_pb2 import TEST
from .base import Layer, register
from .common import scratch

STATISTICS = 3  # running mean sum, running variance sum, their weight


@register
class BatchNorm(Layer):
    """Normalize each channel (axis 1) to zero mean and unit variance.

    As in Caffe: TRAIN uses the batch's statistics and folds them into three
    blobs (mean sum, variance sum, and the weight both sums carry, each decayed
    by moving_average_fraction); TEST (or use_global_stats) uses sum / weight.
    The blobs are statistics, not weights, so the solver never updates them.
    A learned scale and shift come from a following Scale layer.
    """

    type = "BatchNorm"
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.batch_norm_param
        self.use_global_stats = (bool(p.use_global_stats) if p.HasField("use_global_stats")
                                 else self.phase == TEST)
        self.fraction = float(p.moving_average_fraction)
        self.eps = float(p.eps)
        shape = bottom[0].shape
        channels = shape[1] if len(shape) > 1 else 1
        if not self.blobs:
            self.blobs = [self.make_blob((channels,)), self.make_blob((channels,)),
                          self.make_blob((1,))]
        self._freeze_statistics()
        self.param_propagate_down = [False] * len(self.blobs)

    def _freeze_statistics(self):
        # Caffe adds lr_mult 0 for each statistics blob the prototxt leaves
        # out, so the Net's parameter list (which reads these specs) skips them.
        for spec in self.param.param:
            if spec.lr_mult != 0:
                raise self.error("the statistics blobs cannot be learned; give each param "
                                 "lr_mult: 0 or leave param out")
        while len(self.param.param) < STATISTICS:
            self.param.param.add(lr_mult=0)

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) > 1 and shape[1] != self.blobs[0].shape[0]:
            raise self.error(f"bottom has {shape[1]} channels but the statistics have "
                             f"{self.blobs[0].shape[0]}")
        n = shape[0] if shape else 1
        c = self.blobs[0].shape[0]
        self.dims = (n, c, bottom[0].count // max(n * c, 1))
        top[0].reshape(shape)

    def forward(self, bottom, top):
        xp = self.xp
        x = bottom[0].data.reshape(self.dims)
        y = top[0].data.reshape(self.dims)
        if self.use_global_stats:
            mean, variance = self._global_statistics()
            xp.subtract(x, mean[:, None], out=y)
        else:
            mean = x.mean(axis=(0, 2))
            xp.subtract(x, mean[:, None], out=y)   # y may be x: mean is taken first
            square = scratch(self, "_square", self.dims, y.dtype)
            xp.multiply(y, y, out=square)
            variance = square.mean(axis=(0, 2))
            self._accumulate(mean, variance)
        self._inv_std = 1.0 / xp.sqrt(variance + self.eps)
        y *= self._inv_std[:, None]

    def _global_statistics(self):
        weight = self.blobs[2].data
        # a zero weight means no statistics yet: Caffe then uses zeros
        scale = (weight > 0) / self.xp.maximum(weight, 1e-30)
        return self.blobs[0].data * scale, self.blobs[1].data * scale

    def _accumulate(self, mean, variance):
        n, _, spatial = self.dims
        m = n * spatial
        unbiased = m / (m - 1.0) if m > 1 else 1.0
        for blob, value in zip(self.blobs, (mean, variance * unbiased, 1.0)):
            data = blob.data
            data *= self.fraction
            data += value

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        dy = top[0].diff.reshape(self.dims)
        dx = bottom[0].diff.reshape(self.dims)
        inv_std = self._inv_std[:, None]
        if self.use_global_stats:
            xp.multiply(dy, inv_std, out=dx)
            return
        # dx = (dy - mean(dy) - y * mean(dy * y)) / std, means per channel;
        # both means are taken before dx (which may be dy) is written.
        y = top[0].data.reshape(self.dims)
        product = scratch(self, "_square", self.dims, y.dtype)
        xp.multiply(dy, y, out=product)
        mean_dy_y = product.mean(axis=(0, 2))[:, None]
        mean_dy = dy.mean(axis=(0, 2))[:, None]
        xp.multiply(y, mean_dy_y, out=product)
        xp.subtract(dy, mean_dy, out=dx)
        dx -= product
        dx *= inv_std


@register
class MVN(Layer):
    """Mean-variance normalization: subtract the mean of each item's values in
    each channel (of all its channels with across_channels); with
    normalize_variance (the default) also divide by the standard deviation
    plus eps (Caffe adds eps to the deviation, not the variance)."""

    type = "MVN"
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.mvn_param
        self.normalize_variance = bool(p.normalize_variance)
        self.across_channels = bool(p.across_channels)
        self.eps = float(p.eps)

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        n = shape[0] if shape else 1
        rows = n if self.across_channels or len(shape) < 2 else n * shape[1]
        self.dims = (rows, bottom[0].count // max(rows, 1))
        top[0].reshape(shape)

    def forward(self, bottom, top):
        xp = self.xp
        rows = self.dims[0]
        x = bottom[0].data.reshape(self.dims)
        y = top[0].data.reshape(self.dims)
        mean = scratch(self, "_mean", (rows, 1), x.dtype)
        x.mean(axis=1, keepdims=True, out=mean)
        xp.subtract(x, mean, out=y)   # y may be x: the mean is taken first
        if not self.normalize_variance:
            return
        square = scratch(self, "_square", self.dims, y.dtype)
        xp.multiply(y, y, out=square)
        inv_std = scratch(self, "_inv_std", (rows, 1), y.dtype)
        square.mean(axis=1, keepdims=True, out=inv_std)
        xp.sqrt(inv_std, out=inv_std)
        inv_std += inv_std.dtype.type(self.eps)
        xp.reciprocal(inv_std, out=inv_std)
        y *= inv_std

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        rows = self.dims[0]
        dy = top[0].diff.reshape(self.dims)
        dx = bottom[0].diff.reshape(self.dims)
        mean_dy = scratch(self, "_mean", (rows, 1), dy.dtype)
        dy.mean(axis=1, keepdims=True, out=mean_dy)
        if not self.normalize_variance:
            xp.subtract(dy, mean_dy, out=dx)
            return
        # dx = (dy - mean(dy) - y * mean(y * dy)) / (std + eps), as Caffe;
        # both means are taken before dx (which may be dy) is written.
        y = top[0].data.reshape(self.dims)
        product = scratch(self, "_square", self.dims, y.dtype)
        xp.multiply(dy, y, out=product)
        mean_dy_y = product.mean(axis=1, keepdims=True)
        xp.multiply(y, mean_dy_y, out=product)
        xp.subtract(dy, mean_dy, out=dx)
        dx -= product
        dx *= self._inv_std
