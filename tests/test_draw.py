"""caffe.draw: the graphviz text of a net, and pictures when graphviz is installed."""
import io
import re
import shutil

import pytest
from PIL import Image

from pycaffe_dist import TEST, TRAIN, draw
from pycaffe_dist.proto import io as proto_io

NET = '''
name: "small"
layer { name: "data" type: "Input" top: "data" top: "label" input_param { shape { dim: 2 dim: 4 } shape { dim: 2 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1" param { lr_mult: 1 decay_mult: 1 }
        inner_product_param { num_output: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip1" bottom: "label" top: "acc" include { phase: TEST } }
'''
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot is not installed")


def edges(text):
    return re.findall(r'"([^"]+)" -> "([^"]+)"', text)


def test_dot_text_wires_layers_and_versions_in_place_blobs():
    net, _ = proto_io.parse_net_text(NET)
    text = draw.to_dot(net, "TB", display_lrm=True)
    assert "rankdir=TB;" in text
    wires = edges(text)
    # The in-place ReLU reads ip1 and writes a new ip1 node: no loop.
    assert ("blob:ip1:0", "layer:2") in wires and ("layer:2", "blob:ip1:1") in wires
    assert ("blob:ip1:1", "layer:3") in wires and ("blob:ip1:1", "layer:4") in wires
    assert ("blob:label:0", "layer:3") in wires
    assert "3 outputs" in text and "lr_mult 1, decay_mult 1" in text
    train = draw.to_dot(net, phase=TRAIN)
    assert "acc" not in train and "acc" in draw.to_dot(net, phase=TEST)


@needs_dot
def test_rendered_png_and_svg(tmp_path):
    net, _ = proto_io.parse_net_text(NET)
    png = draw.draw_net(net, "LR", ext="png")
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1]  # left to right: wide
    draw.draw_net_to_file(net, str(tmp_path / "net.svg"), rankdir="TB")
    svg = (tmp_path / "net.svg").read_text()
    assert "<svg" in svg and "relu1" in svg and "SoftmaxWithLoss" in svg
