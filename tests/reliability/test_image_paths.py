"""Image lists naming files outside their root folder: `..`, absolute paths, symlinks pointing out.

Real files and real symlinks; the error names the list file and line, and
nothing is read from outside the root (nor written: no database appears).
"""
import os

import numpy
import pytest
from PIL import Image

from pycaffe_dist import backend
from pycaffe_dist.blob import Blob
from pycaffe_dist.data.sources import PathError, read_image_list
from pycaffe_dist.layers import dataset
from pycaffe_dist.layers.base import LayerError
from pycaffe_dist.proto import caffe_pb2
from pycaffe_dist.tools import convert_imageset
from tests.data.helpers import TEST, rgb_to_chw_bgr, write_images


@pytest.fixture(autouse=True)
def seeded(monkeypatch):
    monkeypatch.delenv(dataset.BAD_RECORD_ENV, raising=False)
    backend.set_random_seed(1)


@pytest.fixture
def tree(tmp_path):
    """root/ with three images and a list; outside/ beside it with a secret image of the same size."""
    root = tmp_path / "root"
    list_path, entries = write_images(str(root), 3, size=(3, 4))
    (tmp_path / "outside").mkdir()
    secret = numpy.full((3, 4, 3), 7, numpy.uint8)
    Image.fromarray(secret).save(tmp_path / "outside" / "secret.png")
    return root, list_path, entries


def add_lines(list_path, *lines):
    with open(list_path, "a") as f:
        f.write("".join(line + "\n" for line in lines))


@pytest.mark.parametrize("name,why", [
    ("../outside/secret.png", "leads outside the root folder"),
    ("imgs/../../outside/secret.png", "leads outside the root folder"),
    ("../../../../../../etc/passwd", "leads outside the root folder"),
    ("/etc/passwd", "is an absolute path; entries must be relative to the root folder"),
])
def test_dotdot_and_absolute_entries_are_refused_naming_the_line(tree, name, why):
    root, list_path, _ = tree
    add_lines(list_path, name + " 1")
    with pytest.raises(PathError, match=f"{list_path}:4: '{name}' {why}"):
        read_image_list(list_path, str(root))
    with pytest.raises(LayerError, match=rf"layer 'img' \(ImageData\): {list_path}:4: '{name}' {why}"):
        run(image_data(root, list_path), 1)


def test_dots_that_stay_inside_are_fine(tree):
    root, list_path, entries = tree
    add_lines(list_path, "imgs/./sub/../img_0.png 9")
    items = read_image_list(list_path, str(root))
    assert items[3][:2] == (os.path.join(str(root), "imgs/./sub/../img_0.png"), 9)


@pytest.mark.parametrize("skip", [False, True])
def test_a_symlink_pointing_out_is_refused_even_when_skipping(tree, tmp_path, skip):
    root, list_path, _ = tree
    os.symlink(tmp_path / "outside" / "secret.png", root / "imgs" / "evil.png")
    os.symlink(tmp_path / "outside", root / "linked_dir")
    add_lines(list_path, "imgs/evil.png 1", "linked_dir/secret.png 2")
    lp = image_data(root, list_path)
    if skip:      # a bad record is skipped; an escape is not a bad record: it stops the run
        lp.data_param.bad_record = caffe_pb2.DataParameter.SKIP
    real = os.path.realpath(tmp_path / "outside" / "secret.png")
    with pytest.raises(LayerError, match=f"{list_path}:4: {root}/imgs/evil.png resolves to {real}, "
                                         f"outside the root folder {root}"):
        run(lp, 2)
    # The directory link: only its line in the list.
    lines = open(list_path).read().splitlines()
    open(list_path, "w").write("\n".join(lines[:3] + lines[4:]) + "\n")
    with pytest.raises(LayerError, match=f"{list_path}:4: {root}/linked_dir/secret.png resolves to {real}"):
        run(lp, 2)


def test_symlinks_inside_the_root_and_a_symlinked_root_work(tree, tmp_path):
    root, list_path, entries = tree
    os.symlink(root / "imgs" / "img_1.png", root / "imgs" / "alias.png")
    add_lines(list_path, "imgs/alias.png 5")
    os.symlink(root, tmp_path / "root_link")
    data, labels = run(image_data(str(tmp_path / "root_link"), list_path, batch=4), 1)
    want = [entries[0][2], entries[1][2], entries[2][2], entries[1][2]]
    numpy.testing.assert_array_equal(data, numpy.stack([rgb_to_chw_bgr(p) for p in want]))
    numpy.testing.assert_array_equal(labels, [entries[0][1], entries[1][1], entries[2][1], 5])


def test_without_a_root_folder_paths_are_the_users_own(tree, tmp_path, monkeypatch):
    root, _, entries = tree
    monkeypatch.chdir(root / "imgs")
    lst = tmp_path / "own.txt"
    lst.write_text(f"../../outside/secret.png 3\n{root}/imgs/img_2.png 4\n")
    data, labels = run(image_data("", str(lst), batch=2), 1)
    numpy.testing.assert_array_equal(data[0], numpy.full((3, 3, 4), 7))
    numpy.testing.assert_array_equal(data[1], rgb_to_chw_bgr(entries[2][2]))
    numpy.testing.assert_array_equal(labels, [3, 4])


def test_convert_imageset_refuses_escapes_and_writes_nothing(tree, tmp_path, capsys):
    root, list_path, _ = tree
    original = open(list_path).read()
    os.symlink(tmp_path / "outside" / "secret.png", root / "imgs" / "evil.png")
    real = os.path.realpath(tmp_path / "outside" / "secret.png")
    for line, message in [("../outside/secret.png 1", "'../outside/secret.png' leads outside the root folder"),
                          (f"{tmp_path}/outside/secret.png 1", "is an absolute path"),
                          ("imgs/evil.png 1", f"{root}/imgs/evil.png resolves to {real}, outside the root folder")]:
        open(list_path, "w").write(original + line + "\n")
        assert convert_imageset.main([str(root), list_path, str(tmp_path / "db")]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"convert_imageset: error: {list_path}:4: "), err
        assert message in err[0]
        assert not os.path.exists(tmp_path / "db")
    # An empty ROOTFOLDER: the list's paths are the user's own, absolute ones included.
    open(list_path, "w").write(f"{tmp_path}/outside/secret.png 1\n")
    assert convert_imageset.main(["", list_path, str(tmp_path / "db")]) == 0


def image_data(root, list_path, batch=2):
    lp = caffe_pb2.LayerParameter(name="img", type="ImageData", top=["data", "label"])
    lp.image_data_param.source = str(list_path)
    lp.image_data_param.root_folder = str(root)
    lp.image_data_param.batch_size = batch
    return lp


def run(lp, batches):
    layer = dataset.ImageDataLayer(lp, TEST)
    tops = [Blob((1,)), Blob((1,))]
    try:
        layer.setup([], tops)
        datas, labels = [], []
        for _ in range(batches):
            layer.forward([], tops)
            datas.append(tops[0].data.copy())
            labels.append(tops[1].data.copy())
    finally:
        layer.close()
    return numpy.concatenate(datas), numpy.concatenate(labels)

