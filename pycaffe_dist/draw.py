"""Pictures of nets through graphviz (pycaffe's caffe.draw).

    from pycaffe_dist import draw
    draw.draw_net_to_file(net_param, "lenet.png", rankdir="TB", phase=caffe.TRAIN)

Layers are boxes (name, type, the parameters that shape their output),
blobs are octagons. A layer that works in place gets a new blob node after
it, so a ReLU sits in line instead of looping on its input. `to_dot` gives
the graphviz text and needs nothing installed; rendering to png/svg/pdf runs
graphviz's `dot` program (`apt-get install graphviz`).
"""
import os
import shutil
import subprocess

from . import graph
from .proto import caffe_pb2

LAYER_COLORS = {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900",
                "InnerProduct": "#CC33FF", "Data": "#9ACD32", "Input": "#9ACD32",
                "MemoryData": "#9ACD32", "ImageData": "#9ACD32", "HDF5Data": "#9ACD32"}
DEFAULT_LAYER_COLOR = "#6495ED"
BLOB_COLOR = "#E0E0E0"
POOL_NAMES = {v: k for k, v in caffe_pb2.PoolingParameter.PoolMethod.items()}


def _quote(text):
    return '"%s"' % str(text).replace("\\", "\\\\").replace('"', '\\"')


def _first(values, default=None):
    return values[0] if len(values) else default


def _spatial(p):
    """'kernel 5, stride 2, pad 1' from a Convolution or Pooling parameter message."""
    kernel = getattr(p, "kernel_size", None)
    kernel = _first(kernel) if hasattr(kernel, "__len__") else kernel
    kernel = kernel or (("%dx%d" % (p.kernel_h, p.kernel_w)) if p.kernel_h else None)
    stride = getattr(p, "stride", None)
    stride = _first(stride, 1) if hasattr(stride, "__len__") else stride
    pad = getattr(p, "pad", None)
    pad = _first(pad, 0) if hasattr(pad, "__len__") else pad
    parts = ["kernel %s" % kernel] if kernel else []
    if stride and stride != 1:
        parts.append("stride %s" % stride)
    if pad:
        parts.append("pad %s" % pad)
    return ", ".join(parts)


def describe_layer(layer, display_lrm=False):
    """The lines of a layer's box: name, type, and what shapes its output."""
    lines = [layer.name, "(%s)" % layer.type]
    if layer.type in ("Convolution", "Deconvolution"):
        p = layer.convolution_param
        lines += [_spatial(p), "%d outputs" % p.num_output]
    elif layer.type == "Pooling":
        p = layer.pooling_param
        lines.append("%s %s" % (POOL_NAMES.get(p.pool, p.pool), "global" if p.global_pooling else _spatial(p)))
    elif layer.type == "InnerProduct":
        lines.append("%d outputs" % layer.inner_product_param.num_output)
    elif layer.type == "Dropout":
        lines.append("ratio %g" % layer.dropout_param.dropout_ratio)
    elif layer.type == "Python":
        lines.append("%s.%s" % (layer.python_param.module, layer.python_param.layer))
    if display_lrm:
        for i, spec in enumerate(layer.param):
            lines.append("param %d: lr_mult %g, decay_mult %g" % (i, spec.lr_mult, spec.decay_mult))
    return [line for line in lines if line]


def edge_label(layer):
    """What to write on the edges out of a layer: its batch size or output count."""
    if layer.type in ("Data", "ImageData"):
        p = layer.data_param if layer.type == "Data" else layer.image_data_param
        return "batch %d" % p.batch_size
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return ""


def to_dot(net_param, rankdir="LR", label_edges=True, phase=None, display_lrm=False):
    """Graphviz text of a NetParameter; `phase` keeps only that phase's layers."""
    if phase is not None:
        net_param = graph.filter_net(net_param, graph.make_state(phase))
    out = ["digraph %s {" % _quote(net_param.name or "net"),
           "  rankdir=%s;" % rankdir,
           '  graph [fontname="Helvetica", nodesep=0.25, ranksep=0.35];',
           '  node [fontname="Helvetica", fontsize=11];',
           '  edge [fontname="Helvetica", fontsize=9];']
    versions = {}  # blob name -> how many times it was written

    def blob_node(name):
        return _quote("blob:%s:%d" % (name, versions.get(name, 0)))

    def add_blob(name):
        out.append("  %s [label=%s, shape=octagon, style=filled, fillcolor=%s];"
                   % (blob_node(name), _quote(name), _quote(BLOB_COLOR)))

    for i, layer in enumerate(net_param.layer):
        node = _quote("layer:%d" % i)
        label = "\\n".join(describe_layer(layer, display_lrm)).replace('"', "'")
        out.append('  %s [label="%s", shape=box, style="rounded,filled", fillcolor=%s];'
                   % (node, label, _quote(LAYER_COLORS.get(layer.type, DEFAULT_LAYER_COLOR))))
        for bottom in layer.bottom:
            if bottom not in versions:
                versions[bottom] = 0
                add_blob(bottom)
            out.append("  %s -> %s;" % (blob_node(bottom), node))
        text = edge_label(layer) if label_edges else ""
        for top in layer.top:
            versions[top] = versions[top] + 1 if top in versions else 0
            add_blob(top)
            out.append("  %s -> %s%s;" % (node, blob_node(top), " [label=%s]" % _quote(text) if text else ""))
    out.append("}")
    return "\n".join(out) + "\n"


def draw_net(caffe_net, rankdir, ext="png", phase=None, display_lrm=False):
    """The picture of a NetParameter as bytes in format `ext` (png, svg, pdf, ... or dot)."""
    text = to_dot(caffe_net, rankdir, phase=phase, display_lrm=display_lrm)
    if ext in ("dot", "gv"):
        return text.encode("utf-8")
    dot = shutil.which("dot")
    if dot is None:
        raise RuntimeError("drawing a net as %s needs graphviz's `dot` program; install graphviz "
                           "(apt-get install graphviz), or write .dot text instead" % ext)
    done = subprocess.run([dot, "-T" + ext], input=text.encode("utf-8"), capture_output=True)
    if done.returncode != 0:
        raise RuntimeError("dot -T%s failed: %s" % (ext, done.stderr.decode("utf-8", "replace").strip()))
    return done.stdout


def draw_net_to_file(caffe_net, filename, rankdir="LR", phase=None, display_lrm=False):
    """Draw a NetParameter into `filename`; the format follows its extension."""
    ext = os.path.splitext(filename)[1].lstrip(".").lower() or "png"
    data = draw_net(caffe_net, rankdir, ext, phase, display_lrm)
    with open(filename, "wb") as f:
        f.write(data)


def get_pydot_graph(caffe_net, rankdir, label_edges=True, phase=None, display_lrm=False):
    """The net as a pydot.Dot graph (needs the pydot package)."""
    import pydot
    return pydot.graph_from_dot_data(to_dot(caffe_net, rankdir, label_edges, phase, display_lrm))[0]
