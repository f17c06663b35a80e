"""`pycaffe-dist draw_net`."""
import shutil

import pytest
from PIL import Image

from pycaffe_dist.cli import main

NET = '''
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 2 kernel_size: 3 } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
'''


def test_dot_output_needs_no_graphviz(tmp_path):
    (tmp_path / "net.prototxt").write_text(NET)
    assert main(["draw_net", str(tmp_path / "net.prototxt"), str(tmp_path / "net.dot"), "--rankdir", "TB"]) == 0
    text = (tmp_path / "net.dot").read_text()
    assert text.startswith('digraph "tiny"') and "MAX kernel 2, stride 2" in text


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot is not installed")
def test_png(tmp_path, capsys):
    (tmp_path / "net.prototxt").write_text(NET)
    assert main(["draw_net", str(tmp_path / "net.prototxt"), str(tmp_path / "net.png"), "-phase", "TEST"]) == 0
    with Image.open(tmp_path / "net.png") as im:
        assert im.format == "PNG"
    assert main(["draw_net", str(tmp_path / "missing.prototxt"), str(tmp_path / "x.png")]) == 1
    assert "missing.prototxt" in capsys.readouterr().err
