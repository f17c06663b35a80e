import pytest

from pycaffe_dist.data.flags import FlagParser, UsageError


def parser():
    p = FlagParser("tool", "test")
    p.add_argument("path")
    p.bool_flag("gray")
    p.flag("resize_height", default=0, type=int)
    return p


@pytest.mark.parametrize("argv, gray, height", [
    (["-gray", "-resize_height", "32", "x"], True, 32),
    (["--gray", "--resize_height=32", "x"], True, 32),
    (["-gray=true", "-resize_height=7", "x"], True, 7),
    (["-gray=false", "x"], False, 0),
    (["-nogray", "x"], False, 0),
    (["x", "-gray"], True, 0),
])
def test_gflags_spellings(argv, gray, height):
    args = parser().parse(argv)
    assert (args.path, args.gray, args.resize_height) == ("x", gray, height)


def test_mistakes_are_one_line_usage_errors():
    with pytest.raises(UsageError, match="-gray takes true or false"):
        parser().parse(["-gray=maybe", "x"])
    with pytest.raises(UsageError, match=r"unrecognized arguments: -colour \(see tool -h\)"):
        parser().parse(["-colour", "x"])
    with pytest.raises(UsageError, match="invalid int value"):
        parser().parse(["-resize_height", "big", "x"])
