import os

import numpy
import pytest
from PIL import Image

from pycaffe_dist.data import datum, db
from pycaffe_dist.tools import convert_imageset
from tests.data.helpers import rgb_to_chw_bgr, write_images


def records(path):
    with db.Reader(path) as r:
        return [(k.decode(), datum.parse(v)) for k, v in r.items()]


def test_raw_colour_keys_labels_and_bgr_pixels(tmp_path, capsys):
    list_path, entries = write_images(str(tmp_path), 3)
    out = str(tmp_path / "db")
    assert convert_imageset.main([str(tmp_path) + "/", list_path, out]) == 0
    assert "wrote 3 images" in capsys.readouterr().out
    recs = records(out)
    assert [k for k, _ in recs] == [f"{i:08d}_{rel}" for i, (rel, _, _) in enumerate(entries)]
    for (_, d), (_, label, pixels) in zip(recs, entries):
        assert d.label == label and not d.encoded
        numpy.testing.assert_array_equal(datum.datum_to_array(d), rgb_to_chw_bgr(pixels))


def test_gray_resize_and_gflags_spellings(tmp_path):
    list_path, entries = write_images(str(tmp_path), 2)
    out = str(tmp_path / "db")
    argv = ["-gray", "-resize_height=6", "--resize_width", "5", "-shuffle=false", str(tmp_path), list_path, out]
    assert convert_imageset.main(argv) == 0
    for (_, d), (_, _, pixels) in zip(records(out), entries):
        ref = numpy.asarray(Image.fromarray(pixels).convert("L").resize((5, 6), Image.BILINEAR))
        numpy.testing.assert_array_equal(datum.datum_to_array(d), ref[None])


def test_encoded_keeps_file_bytes_when_they_fit(tmp_path):
    list_path, entries = write_images(str(tmp_path), 2, fmt="png")
    out = str(tmp_path / "db")
    assert convert_imageset.main(["-encoded", str(tmp_path), list_path, out]) == 0
    for (_, d), (rel, _, _) in zip(records(out), entries):
        assert d.encoded and d.data == (tmp_path / rel).read_bytes()
    out2 = str(tmp_path / "db2")
    assert convert_imageset.main(["-encode_type", "jpg", "-gray", str(tmp_path), list_path, out2]) == 0
    for _, d in records(out2):
        assert d.encoded and d.data[:2] == b"\xff\xd8"   # re-encoded as a grey JPEG
        assert datum.datum_to_array(d).shape == (1, 12, 10)


def test_shuffle_is_a_permutation(tmp_path):
    list_path, entries = write_images(str(tmp_path), 8)
    out = str(tmp_path / "db")
    assert convert_imageset.main(["-shuffle", str(tmp_path), list_path, out]) == 0
    names = [k.split("_", 1)[1] for k, _ in records(out)]
    assert sorted(names) == sorted(rel for rel, _, _ in entries) and names != [rel for rel, _, _ in entries]


def fails(capsys, argv, pattern, tmp_path):
    assert convert_imageset.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("convert_imageset: error: "), err
    assert pattern in err[0], err[0]
    assert not os.path.exists(tmp_path / "db")
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".db")]   # no temp left either


def test_missing_image(tmp_path, capsys):
    list_path, _ = write_images(str(tmp_path), 3)
    os.remove(tmp_path / "imgs" / "img_2.png")
    fails(capsys, [str(tmp_path), list_path, str(tmp_path / "db")],
          f"{list_path}:3: {tmp_path}/imgs/img_2.png: no such file", tmp_path)


def test_line_without_label(tmp_path, capsys):
    list_path, _ = write_images(str(tmp_path), 2)
    with open(list_path, "a") as f:
        f.write("imgs/img_0.png\n")
    fails(capsys, [str(tmp_path), list_path, str(tmp_path / "db")], f"{list_path}:3: no label after", tmp_path)


def test_unreadable_image_and_check_size(tmp_path, capsys):
    list_path, _ = write_images(str(tmp_path), 3, sizes=[(4, 4), (4, 4), (5, 4)])
    fails(capsys, ["-check_size", str(tmp_path), list_path, str(tmp_path / "db")],
          f"{list_path}:3: imgs/img_2.png is 3x5x4, the first image is 3x4x4 (-check_size)", tmp_path)
    (tmp_path / "imgs" / "img_1.png").write_bytes(b"garbage")
    fails(capsys, [str(tmp_path), list_path, str(tmp_path / "db")], f"{list_path}:2: ", tmp_path)


def test_usage_errors(tmp_path, capsys):
    assert convert_imageset.main(["only_one_arg"]) == 2
    assert "convert_imageset: error:" in capsys.readouterr().err
    list_path, _ = write_images(str(tmp_path), 1)
    assert convert_imageset.main(["-backend", "leveldb", str(tmp_path), list_path, str(tmp_path / "db")]) == 1
    assert "not supported" in capsys.readouterr().err
    os.mkdir(tmp_path / "db")
    assert convert_imageset.main([str(tmp_path), list_path, str(tmp_path / "db")]) == 1
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help(flag, capsys):
    assert convert_imageset.main([flag]) == 0
    assert "-resize_height" in capsys.readouterr().out
