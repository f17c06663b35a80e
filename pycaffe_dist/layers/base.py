"""The layer registry and the lifecycle every layer shares.

A layer class declares its prototxt type string and bottom/top counts and
implements the small hooks of Caffe's layer lifecycle:

    layer_setup(bottom, top)   read parameters, create learnable blobs (once)
    reshape(bottom, top)       size tops and internal buffers (every forward)
    forward(bottom, top)       compute top data from bottom data
    backward(top, propagate_down, bottom)
                               compute bottom diffs where propagate_down[i];
                               *add* parameter gradients into self.blobs[i].diff
                               where self.param_propagate_down[i]

Bottom diffs are overwritten; parameter diffs accumulate (the solver clears
them once per iteration), which is what makes iter_size and shared
parameters work. Arrays come as numpy or cupy; layer code takes `xp` from
them (`self.xp`) and uses only what both provide.
"""
import numpy

from ..blob import Blob
from .. import backend

LAYERS = {}


class LayerError(ValueError):
    """A problem with one layer's definition; the message names the layer."""


def register(cls):
    """Class decorator: make `cls` available under its prototxt `type` string."""
    name = cls.type
    if not name:
        raise TypeError("%s has no type string" % cls.__name__)
    if name in LAYERS:
        raise KeyError("layer type %r is already registered (by %s)" % (name, LAYERS[name].__name__))
    LAYERS[name] = cls
    return cls


def layer_class(type_name):
    try:
        return LAYERS[type_name]
    except KeyError:
        raise LayerError("unknown layer type %r (known types: %s)"
                         % (type_name, ", ".join(sorted(LAYERS)))) from None


def layer_type_list():
    return sorted(LAYERS)


class Layer:
    """Base of every layer; see the module docstring for the hooks."""

    type = None
    exact_num_bottom = None
    min_bottom = None
    max_bottom = None
    exact_num_top = None
    min_top = None
    max_top = None
    # Layers such as Accuracy may appear with no top diff to propagate.
    auto_top_blobs = False
    # Layers whose first top is a loss by default (loss_weight 1).
    is_loss = False
    # False for layers that never propagate to bottoms (data, accuracy).
    allow_backward = True
    # Set by Net for one forward call: also apply the in-place ReLU that
    # follows (see fuses_relu); the ReLU layer's own forward is then skipped.
    fused_relu = False

    def fuses_relu(self):
        """Whether forward can apply max(top, 0) itself (fused_relu), as
        the data comes out of its threads' lanes."""
        return False

    def __init__(self, param, phase=0):
        self.param = param
        self.name = param.name
        self.phase = phase
        self.blobs = []
        self.param_propagate_down = []
        self.loss_weights = []
        self.dtype = numpy.float32   # the Net sets its own dtype before setup
        self.xp = backend.array_module()

    # -- lifecycle, driven by the Net -----------------------------------------
    def setup(self, bottom, top):
        self.check_counts(bottom, top)
        if bottom:
            self.xp = backend.get_array_module(bottom[0].data)
        self.layer_setup(bottom, top)
        self.reshape(bottom, top)

    def check_counts(self, bottom, top):
        def check(what, n, exact, lo, hi):
            if exact is not None and n != exact:
                raise LayerError("layer %r (%s) takes %d %s blob(s), got %d"
                                 % (self.name, self.type, exact, what, n))
            if lo is not None and n < lo:
                raise LayerError("layer %r (%s) takes at least %d %s blob(s), got %d"
                                 % (self.name, self.type, lo, what, n))
            if hi is not None and n > hi:
                raise LayerError("layer %r (%s) takes at most %d %s blob(s), got %d"
                                 % (self.name, self.type, hi, what, n))
        check("bottom", len(bottom), self.exact_num_bottom, self.min_bottom, self.max_bottom)
        check("top", len(top), self.exact_num_top, self.min_top, self.max_top)

    def layer_setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        raise TypeError("%s must define reshape()" % type(self).__name__)

    def forward(self, bottom, top):
        raise TypeError("%s must define forward()" % type(self).__name__)

    def backward(self, top, propagate_down, bottom):
        # Layers without a gradient (data, accuracy) only run when nothing
        # below them needs one; reaching here means the net asked for one.
        if any(propagate_down):
            raise LayerError("layer %r (%s) cannot propagate a gradient to its bottoms"
                             % (self.name, self.type))

    def allow_force_backward(self, bottom_index):
        # A loss layer's second bottom is its label: never differentiated.
        return not (self.is_loss and bottom_index == 1)

    def expect_backward(self, bottom_needs):
        """Which bottoms backward will be asked for (the Net says so once it
        has worked that out); layers whose forward prepares for backward
        plan by it."""

    # -- helpers for subclasses -------------------------------------------------
    def make_blob(self, shape, filler=None):
        """A learnable blob of `shape`, filled by a FillerParameter when given."""
        from ..filler import fill
        blob = Blob(shape, dtype=self.dtype, xp=self.xp)
        if filler is not None:
            fill(blob.data, filler)
        return blob

    def error(self, message):
        return LayerError("layer %r (%s): %s" % (self.name, self.type, message))

    # Layers holding state that a resumed run needs (data cursors) override these.
    def get_state(self):
        return None

    def set_state(self, state):
        pass
