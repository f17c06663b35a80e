"""The Python layer: a layer whose code the user writes in Python (pycaffe's `caffe.Layer`).

    layer { name: "double" type: "Python" bottom: "x" top: "y"
            python_param { module: "my_layers" layer: "Double" param_str: "2" } }

`my_layers` must be importable (on PYTHONPATH, or next to the script that
builds the net); `Double` subclasses `pycaffe_dist.Layer` and defines
`setup`, `reshape`, `forward` and `backward` with pycaffe's signatures.
Under the parallel solvers every worker builds its own net and so its own
instance of the class; worker processes import the module by name, so it
must be importable there as well (a module file, not a class defined in
`__main__` of an interactive session).
"""
import importlib

from ..blob import Blob
from .base import Layer as _CoreLayer
from .base import LayerError, register


class BlobVec(list):
    """A layer's learnable blobs: a list of Blob with pycaffe's `add_blob(*shape)`."""

    def __init__(self, dtype=None, xp=None):
        super().__init__()
        self._dtype = dtype
        self._xp = xp

    def add_blob(self, *shape):
        """Append a zero-filled learnable Blob of `shape` (e.g. `self.blobs.add_blob(3, 4)`)."""
        kwargs = {"dtype": self._dtype} if self._dtype is not None else {}
        self.append(Blob(shape, xp=self._xp, **kwargs))


class Layer:
    """Base class of layers written in Python, as pycaffe's `caffe.Layer`.

    The net creates the object with its LayerParameter, then sets
    `param_str` (python_param.param_str), `phase` (TRAIN or TEST) and
    `blobs` (this layer's learnable blobs; add them in `setup` with
    `self.blobs.add_blob(*shape)` and the solver trains them), and calls:

        setup(bottom, top)                     once, to read param_str and check bottoms
        reshape(bottom, top)                   before every forward: size the tops
        forward(bottom, top)                   top[i].data from bottom[j].data
        backward(top, propagate_down, bottom)  bottom[j].diff where propagate_down[j];
                                               parameter gradients into self.blobs[k].diff

    `bottom` and `top` are lists of Blob. Learnable blobs live in the net's
    flat parameter memory: write them in place (`self.blobs[0].data[...] = w`).
    An exception raised here reaches the caller of forward/backward unchanged.
    """

    type = "Python"

    def __init__(self, param=None):
        self.layer_param = param
        self.param_str = param.python_param.param_str if param is not None else ""
        self.phase = param.phase if param is not None else 0
        self.blobs = BlobVec()

    def setup(self, bottom, top):
        """Read `self.param_str`, check the bottoms, create learnable blobs (called once)."""

    def reshape(self, bottom, top):
        """Size the tops (`top[0].reshape(*shape)`); called before every forward."""
        raise TypeError("%s must define reshape(bottom, top) to size its tops"
                        % type(self).__name__)

    def forward(self, bottom, top):
        """Compute `top[i].data` from `bottom[j].data`."""
        raise TypeError("%s must define forward(bottom, top)" % type(self).__name__)

    def backward(self, top, propagate_down, bottom):
        """Compute `bottom[j].diff` where `propagate_down[j]`, from `top[i].diff`."""
        if any(propagate_down):
            raise TypeError("%s must define backward(top, propagate_down, bottom)"
                            % type(self).__name__)


def load_class(module_name, class_name, layer_name):
    """The class python_param names; LayerError when the module or the class is not there."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        # Only the module itself being absent is the net's problem; an import
        # failing inside the user's module is theirs and propagates unchanged.
        if e.name is None or not (module_name == e.name or module_name.startswith(e.name + ".")):
            raise
        raise LayerError("layer %r (Python): cannot import python_param.module %r; put its folder "
                         "on PYTHONPATH" % (layer_name, module_name)) from None
    try:
        return getattr(module, class_name)
    except AttributeError:
        raise LayerError("layer %r (Python): module %r (%s) has no class %r"
                         % (layer_name, module_name, getattr(module, "__file__", "?"), class_name)) from None


@register
class Python(_CoreLayer):
    """Runs a user's `Layer` subclass inside the net (Caffe's PythonLayer)."""

    type = "Python"
    # Set once user code runs: the Net then lets its exceptions through unchanged.
    user_code = False

    def layer_setup(self, bottom, top):
        p = self.param.python_param
        if not p.module or not p.layer:
            raise self.error("python_param needs both module and layer")
        cls = load_class(p.module, p.layer, self.name)
        # Caffe's share_in_parallel; each worker has its own instance here,
        # so the flag is kept for the parallel solvers to read.
        self.share_in_parallel = p.share_in_parallel
        self.user_code = True
        self.user = cls(self.param)
        self.blobs = BlobVec(self.dtype, self.xp)
        self.user.blobs = self.blobs
        self.user.param_str = p.param_str
        self.user.phase = self.phase
        self.user.setup(bottom, top)

    def reshape(self, bottom, top):
        self.user.reshape(bottom, top)

    def forward(self, bottom, top):
        self.user.forward(bottom, top)

    def backward(self, top, propagate_down, bottom):
        self.user.backward(top, list(propagate_down), bottom)
