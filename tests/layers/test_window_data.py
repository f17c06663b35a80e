"""WindowData: window files, fg/bg sampling, context padding and mirroring, resume."""
import numpy
import pytest

from pycaffe_dist.layers import LayerError
from pycaffe_dist.layers.window_data import c_round, context_region, read_window_file
from tests.layers.test_common import make_layer, tops

PIL = pytest.importorskip("PIL.Image")
BGR = (10.0, 20.0, 30.0)      # every pixel of the test images, in Caffe's channel order


def write_image(path, size=(10, 12), pattern=False):
    h, w = size
    rgb = numpy.empty((h, w, 3), numpy.uint8)
    rgb[...] = BGR[::-1]
    if pattern:
        rgb[..., 0] = numpy.arange(w, dtype=numpy.uint8)[None] * 10   # red grows to the right
    PIL.fromarray(rgb).save(path)


def write_windows(tmp_path, entries):
    lines = []
    for index, (name, windows) in enumerate(entries):
        lines += ["# %d" % index, name, "3 10 12", str(len(windows))]
        lines += [" ".join(str(v) for v in w) for w in windows]
    path = tmp_path / "windows.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def layer_for(tmp_path, windows, extra="", transform="crop_size: 4", batch=4, images=None):
    for name in images or ["a.png"]:
        write_image(tmp_path / name, pattern=name.startswith("p"))
    path = write_windows(tmp_path, windows)
    layer = make_layer('name: "win" type: "WindowData" transform_param { %s } window_data_param { '
                       'source: "%s" root_folder: "%s/" batch_size: %d %s }'
                       % (transform, path, tmp_path, batch, extra))
    top = tops(2)
    layer.setup([], top)
    return layer, top


def run(layer, top):
    layer.forward([], top)
    return top[0].data.copy(), top[1].data.copy()


def test_window_file_is_read_with_root_folder(tmp_path):
    path = write_windows(tmp_path, [("a.png", [(1, 0.9, 0, 0, 3, 3), (0, 0.1, 2, 2, 5, 5)]),
                                    ("b.png", [])])
    images = read_window_file(str(path), "/root/")
    assert images == {0: ("/root/a.png", (3, 10, 12), [(1, 0.9, 0, 0, 3, 3), (0, 0.1, 2, 2, 5, 5)]),
                      1: ("/root/b.png", (3, 10, 12), [])}


@pytest.mark.parametrize("text, message", [("", "is empty"), ("# 0\na.png\n3 10", "middle of an image size"),
                                           ("x 0 a.png 3 1 1 0", "expected '# <image index>'")])
def test_bad_window_files_are_named(tmp_path, text, message):
    path = tmp_path / "w.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_window_file(str(path))


def test_batches_hold_background_then_foreground(tmp_path):
    windows = [("a.png", [(3, 0.8, 0, 0, 3, 3), (2, 0.6, 4, 4, 7, 7),     # foreground
                          (5, 0.2, 1, 1, 4, 4),                            # background: class -> 0
                          (4, 0.45, 0, 0, 3, 3)])]                         # between thresholds: dropped
    layer, top = layer_for(tmp_path, windows, "fg_threshold: 0.5 bg_threshold: 0.4 fg_fraction: 0.5",
                           transform="crop_size: 4 mean_value: 10 mean_value: 20 mean_value: 30", batch=8)
    assert len(layer.fg) == 2 and len(layer.bg) == 1
    data, labels = run(layer, top)
    assert data.shape == (8, 3, 4, 4)
    assert list(labels[:4]) == [0] * 4 and set(labels[4:]) <= {2.0, 3.0}
    numpy.testing.assert_array_equal(data, 0)     # constant image minus its own colour


def test_plain_window_is_mean_subtracted_and_scaled(tmp_path):
    layer, top = layer_for(tmp_path, [("p.png", [(1, 1.0, 2, 1, 5, 4), (0, 0.0, 0, 0, 3, 3)])],
                           "fg_fraction: 1 scale: 0.5", transform="crop_size: 4 mean_value: 1",
                           images=["p.png"])
    data, labels = run(layer, top)
    expected = numpy.empty((3, 4, 4))
    expected[0], expected[1] = (BGR[0] - 1) * 0.5, (BGR[1] - 1) * 0.5
    expected[2] = (numpy.arange(2, 6)[None] * 10.0 - 1) * 0.5    # red, columns 2..5
    for item in range(4):
        numpy.testing.assert_allclose(data[item], expected)
    assert set(labels) == {1.0}


def test_mirror_flips_the_window(tmp_path):
    layer, top = layer_for(tmp_path, [("p.png", [(1, 1.0, 2, 1, 5, 4), (0, 0.0, 0, 0, 3, 3)])],
                           "fg_fraction: 1", transform="crop_size: 4 mirror: true", batch=16,
                           images=["p.png"])
    data, _ = run(layer, top)
    reds = {tuple(row) for row in data[:, 2, 0]}
    assert reds == {(20.0, 30.0, 40.0, 50.0), (50.0, 40.0, 30.0, 20.0)}   # both ways among 16


def test_context_padding_beyond_the_border_stays_zero(tmp_path):
    # crop 8, context_pad 2: the 4x4 window at the corner doubles to x, y in [-2, 6];
    # 2 of its 9 columns (and rows) fall outside: 7 warp to round(7 * 8/9) = 6 pixels
    # after round(2 * 8/9) = 2 of padding.
    windows = [("a.png", [(1, 1.0, 0, 0, 3, 3), (0, 0.0, 0, 0, 3, 3)])]
    layer, top = layer_for(tmp_path, windows, "fg_fraction: 1 context_pad: 2", transform="crop_size: 8")
    data, _ = run(layer, top)
    for c in range(3):
        numpy.testing.assert_array_equal(data[0, c, :2], 0)
        numpy.testing.assert_array_equal(data[0, c, :, :2], 0)
        numpy.testing.assert_array_equal(data[0, c, 2:, 2:], BGR[c])
    assert context_region((0, 0, 3, 3), 8, 2, False, 10, 12, False) == ((0, 0, 6, 6), (6, 6), (2, 2))
    # Mirrored, the left padding is the right-hand overshoot: none here.
    assert context_region((0, 0, 3, 3), 8, 2, False, 10, 12, True) == ((0, 0, 6, 6), (6, 6), (2, 0))


def test_square_mode_widens_the_window_first():
    # A 2-wide, 4-tall window becomes 4x4 around its centre; one column falls off the left.
    assert context_region((0, 2, 1, 5), 8, 0, True, 10, 12, False) == ((0, 2, 3, 6), (8, 6), (0, 2))
    assert context_region((0, 2, 1, 5), 8, 0, False, 10, 12, False) == ((0, 2, 1, 5), (8, 8), (0, 0))


def test_c_round_goes_away_from_zero():
    assert [c_round(v) for v in (0.5, 1.5, 2.5, -0.5, -1.5, 1.49)] == [1, 2, 3, -1, -2, 1]


def test_resumed_layer_draws_the_same_batches(tmp_path):
    windows = [("p.png", [(1, 0.9, 0, 0, 3, 3), (2, 0.9, 5, 3, 8, 6), (0, 0.1, 1, 1, 4, 4),
                          (0, 0.0, 6, 5, 9, 8)])]
    layer, top = layer_for(tmp_path, windows, "cache_images: true", transform="crop_size: 4 mirror: true",
                           batch=6, images=["p.png"])
    run(layer, top)
    state = layer.get_state()
    expected = run(layer, top)
    other, other_top = layer_for(tmp_path, windows, "cache_images: true", transform="crop_size: 4 mirror: true",
                                 batch=6, images=["p.png"])
    other.set_state(state)
    for a, b in zip(run(other, other_top), expected):
        numpy.testing.assert_array_equal(a, b)


def test_missing_foreground_is_an_error(tmp_path):
    with pytest.raises(LayerError, match="'win'.*no foreground windows"):
        layer_for(tmp_path, [("a.png", [(0, 0.0, 0, 0, 3, 3)])])


def test_window_outside_the_image_is_named(tmp_path):
    layer, top = layer_for(tmp_path, [("a.png", [(1, 1.0, 8, 8, 20, 20), (0, 0.0, 0, 0, 3, 3)])],
                           "fg_fraction: 1")
    with pytest.raises(LayerError, match="lies outside its 12x10 image"):
        run(layer, top)


def test_mean_file_centre_is_subtracted(tmp_path):
    from pycaffe_dist.data.datum import save_mean
    mean = numpy.arange(3 * 6 * 6, dtype=numpy.float32).reshape(3, 6, 6)
    save_mean(str(tmp_path / "mean.binaryproto"), mean)
    layer, top = layer_for(tmp_path, [("a.png", [(1, 1.0, 2, 1, 5, 4), (0, 0.0, 0, 0, 3, 3)])], "fg_fraction: 1",
                           transform='crop_size: 4 mean_file: "%s"' % (tmp_path / "mean.binaryproto"))
    data, _ = run(layer, top)
    expected = numpy.asarray(BGR).reshape(3, 1, 1) - mean[:, 1:5, 1:5]
    numpy.testing.assert_allclose(data[0], expected)
