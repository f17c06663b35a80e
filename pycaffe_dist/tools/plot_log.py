"""`pycaffe-dist plot_log LOG [LOG ...] OUT.png`: loss and accuracy curves of training logs.

One figure, four panels: loss and accuracy against iterations (top) and
against seconds of training (bottom); train outputs as lines, test outputs
as lines with markers. Several logs are drawn on the same axes, labelled by
file name. Needs matplotlib (`pip install pycaffe_dist[plot]`).
"""
import os

from .common import UserError, parser, user_errors
from .parse_log import FIXED_COLUMNS, parse_log


def _outputs(rows):
    names = []
    for row in rows:
        names += [k for k in row if k not in FIXED_COLUMNS and k not in names]
    return names


def _panel_of(name):
    return "accuracy" if "acc" in name.lower() else "loss"


def plot_logs(logs, output, title=None):
    """Draw the curves of the given log files into an image file (format from its extension)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("plot_log needs matplotlib: pip install 'pycaffe_dist[plot]'") from None
    figure = Figure(figsize=(12, 8), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 2)
    panels = {("loss", "NumIters"): axes[0][0], ("accuracy", "NumIters"): axes[0][1],
              ("loss", "Seconds"): axes[1][0], ("accuracy", "Seconds"): axes[1][1]}
    drawn = set()
    series = 0  # each series keeps one colour in every panel it appears in
    for log in logs:
        train, test = parse_log(log)
        prefix = os.path.basename(log) + ": " if len(logs) > 1 else ""
        for kind, rows, style in (("train", train, dict(linewidth=1.2, alpha=0.8)),
                                  ("test", test, dict(linewidth=2, marker="o", markersize=4))):
            for name in _outputs(rows):
                points = [r for r in rows if name in r]
                for x in ("NumIters", "Seconds"):
                    ax = panels[(_panel_of(name), x)]
                    ax.plot([r[x] for r in points], [r[name] for r in points], color="C%d" % (series % 10),
                            label="%s%s %s" % (prefix, kind, name), **style)
                    drawn.add(ax)
                series += 1
    if not drawn:
        raise UserError("no 'Train net output' or 'Test net output' lines in %s" % ", ".join(logs))
    for (panel, x), ax in panels.items():
        ax.set_xlabel("iterations" if x == "NumIters" else "seconds of training")
        ax.set_ylabel(panel)
        ax.set_title("%s vs %s" % (panel, "iterations" if x == "NumIters" else "time"))
        ax.grid(True, alpha=0.3)
        if ax in drawn:
            ax.legend(fontsize=9)
        else:
            ax.text(0.5, 0.5, "no %s outputs in the log" % panel, ha="center", va="center",
                    transform=ax.transAxes, color="gray")
        if panel == "accuracy" and ax in drawn:
            ax.set_ylim(top=min(1.0, ax.get_ylim()[1]))
    figure.suptitle(title or ", ".join(os.path.basename(log) for log in logs))
    figure.savefig(output)


def build_parser():
    p = parser("plot_log", "Plot loss and accuracy of training logs against iterations and time.")
    p.add_argument("logs", nargs="+", metavar="LOG", help="logs of `pycaffe-dist train` or `caffe train`")
    p.add_argument("output", help="image file (.png, .svg, .pdf)")
    p.add_flag("title", help="figure title (default: the log names)")
    return p


@user_errors("plot_log")
def main(argv):
    """Entry point of `pycaffe-dist plot_log`; returns the exit status."""
    args = build_parser().parse_args(argv)
    plot_logs(args.logs, args.output, args.title)
    print("Wrote %s" % args.output)
    return 0
