"""The paper's figures from ``results.csv`` and ``layers.csv`` (see :mod:`top.report`).

- :func:`accuracy_vs_flops`: task metric vs FLOPs reduction, every method's points (mean over
  seeds, error bars = std), our Pareto front, and the papers' points where their model is ours
  (a dotted level where the paper's FLOPs reduction divides by another baseline).
- :func:`latency_vs_flops`: measured batch-1 speedup vs FLOPs reduction with the line
  speedup = FLOPs reduction and the ideal speedup (the stock SDPA layers at the pruned lengths,
  no pruning overhead).
- :func:`retained_tokens`: mean tokens kept after each layer, as a share of the input length.
- :func:`reproduction_figure`: the five-task reproduction's score vs FLOPs reduction, from its
  committed summaries (:mod:`top.report.reproduction`).

One panel per task (at most three a row, in the order tables use), one legend per figure
naming the methods (right of a single panel, below several), and beside each of our points in
the first two figures its setting. Ratio axes are log scale, labelled at round values (1x,
1.25x, 1.5x, 2x, 3x, 4x: :class:`RatioLocator`) as densely as their labels fit. Figures use
matplotlib's constrained layout, so panels, labels and legend fill the figure without overlap.
Every figure is written as each path in ``out_paths`` (PNG, SVG, PDF), through a temporary
name, and returned.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["svg.fonttype"] = "none"  # SVG text stays text: searchable, editable
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patheffects import withStroke  # noqa: E402
from matplotlib.text import Annotation  # noqa: E402
from matplotlib.ticker import FuncFormatter, Locator, NullLocator, PercentFormatter  # noqa: E402

from top.files import atomic_path  # noqa: E402
from top.report.labels import GROUP, METRIC_LABELS, TASK_LABELS, method_label, method_rank  # noqa: E402
from top.report.paper import load_paper_results, same_model  # noqa: E402
from top.report.tables import summarise  # noqa: E402

log = logging.getLogger(__name__)

_MARKERS = {"dense": "o", "topk": "^", "ltp": "s", "power_bert": "D", "top": "*"}
_COLORS = {"dense": "black", "topk": "tab:gray", "ltp": "tab:blue", "power_bert": "tab:green", "top": "tab:red"}
_EXTRA_COLORS = ["tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:orange"]
#: guide entries (not methods) go last in a legend
_GUIDES = ("Pareto", "paper", "ideal", "hollow", "speedup =")
#: the ratios a log axis may label, per decade, from the densest set to the sparsest
_RATIO_MANTISSAS = (
    (1, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.8, 2, 2.2, 2.5, 3, 3.5, 4, 4.5, 5, 6, 7, 8, 9),
    (1, 1.25, 1.5, 1.75, 2, 2.5, 3, 3.5, 4, 5, 6, 7, 8),
    (1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6, 8),
    (1, 1.5, 2, 3, 4, 6, 8),
    (1, 2, 5),
    (1,),
)
DPI = 150


class RatioLocator(Locator):
    """Ticks for a log axis of ratios (FLOPs reduction, speedup): round values such as 1, 1.25,
    1.5, 2, 3, 4, 6, 8, the densest set whose labels do not crowd each other on the axis as
    drawn (``max_ticks`` where the axis has no size yet).

    matplotlib's :class:`~matplotlib.ticker.LogLocator` labels powers of the base only (1x, 2x,
    4x on a base-2 axis), which leaves a 1x-2.6x range with two labels."""

    def __init__(self, max_ticks: int = 7, fontsize: float = 10.0):
        self.max_ticks = max_ticks
        self.fontsize = fontsize

    def __call__(self):
        vmin, vmax = self.axis.get_view_interval()
        axes = self.axis.axes
        horizontal = self.axis.axis_name == "x"
        length = (axes.bbox.width if horizontal else axes.bbox.height) / axes.get_figure(root=True).dpi
        return self.tick_values(vmin, vmax, length_inches=length, horizontal=horizontal)

    def tick_values(self, vmin: float, vmax: float, length_inches: float | None = None, horizontal: bool = True) -> list[float]:
        vmin, vmax = sorted((vmin, vmax))
        if vmin <= 0:
            vmin = min(vmax, 1.0) / 10 if vmax > 0 else 0.1
        ticks: list[float] = []
        for mantissas in _RATIO_MANTISSAS:
            values = (
                round(m * 10.0**exponent, 12) for exponent in range(math.floor(math.log10(vmin)), math.floor(math.log10(vmax)) + 1) for m in mantissas
            )
            ticks = [value for value in values if vmin <= value <= vmax]
            if self._fits(ticks, vmin, vmax, length_inches, horizontal):
                return ticks
        return ticks

    def _fits(self, ticks: list[float], vmin: float, vmax: float, length_inches: float | None, horizontal: bool) -> bool:
        if not length_inches or vmax <= vmin:
            return len(ticks) <= self.max_ticks
        per_decade = length_inches / math.log10(vmax / vmin)
        char = 0.6 * self.fontsize / 72  # a digit's width, inches
        for a, b in zip(ticks, ticks[1:]):
            # room for half of each label and a gap (side by side on x, stacked on y)
            need = (len(f"{a:g}x") + len(f"{b:g}x")) * char / 2 + 0.1 if horizontal else 1.6 * self.fontsize / 72
            if math.log10(b / a) * per_decade < need:
                return False
        return True


def _ratio_axis(axis) -> None:
    """Round ratios as ticks, labelled 1x, 1.5x, 2x; no unlabelled minor ticks between them."""
    axis.set_major_locator(RatioLocator())
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}x"))
    axis.set_minor_locator(NullLocator())


def _ratio_limits(values: Iterable[float], pad: float = 1.12) -> tuple[float, float]:
    """Log-axis limits around ``values`` (1 included), padded by the factor ``pad``."""
    values = [v for v in values if v > 0 and math.isfinite(v)] + [1.0]
    return min(values) / pad, max(values) * pad


def _style(method: str, extra: dict[str, str]) -> dict:
    if method not in _COLORS and method not in extra:
        extra[method] = _EXTRA_COLORS[len(extra) % len(_EXTRA_COLORS)]
    return {"color": _COLORS.get(method, extra.get(method)), "marker": _MARKERS.get(method, "P")}


def _task_order(tasks: Iterable[str]) -> list[str]:
    """Tasks in the order tables use (GLUE's, then SQuAD's), unknown ones last."""
    known = list(TASK_LABELS)
    return sorted(dict.fromkeys(tasks), key=lambda t: (known.index(t) if t in known else len(known), t))


def _panels(tasks: Sequence[str], width: float = 4.2, height: float = 3.6):
    """One panel per task, at most three a row, in a figure laid out by matplotlib's constrained
    layout (panels, labels and the legend below share the figure without overlap)."""
    ncols = min(3, len(tasks))
    nrows = math.ceil(len(tasks) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, layout="constrained")
    for ax in axes.flat[len(tasks) :]:
        ax.set_visible(False)
    return fig, list(axes.flat[: len(tasks)])


def _label_points(ax, xs: Iterable[float], ys: Iterable[float], labels: Iterable[str], color, below: bool = False) -> None:
    """Write each point's setting beside it (the legend names the method): to its right, or to
    its left near the right edge of the axes; above the point, or ``below`` it (call after the
    limits are set)."""
    low, high = (math.log10(v) for v in ax.get_xlim())
    for x, y, label in zip(xs, ys, labels):
        right_edge = (math.log10(x) - low) / (high - low) > 0.8
        ax.annotate(
            str(label),
            (x, y),
            xytext=(-6 if right_edge else 6, -3 if below else 3),
            textcoords="offset points",
            ha="right" if right_edge else "left",
            va="top" if below else "bottom",
            fontsize=7,
            color=color,
            path_effects=[withStroke(linewidth=2, foreground="white")],
            zorder=1.9,  # under the markers and lines (2), so a label never hides a point
        )


def _separate_labels(fig: Figure) -> None:
    """Move each point's label up or down, a label's height at a time, until it overlaps none
    of the labels placed before it in its panel (at most three steps either way)."""
    renderer = fig.canvas.get_renderer()
    fig.draw_without_rendering()
    for ax in fig.axes:
        placed = []
        for text in ax.texts:
            if not isinstance(text, Annotation):
                continue
            dx, dy = text.xyann
            box = text.get_window_extent(renderer)
            step = box.height * 72 / fig.dpi  # display pixels to offset points
            for shift in (0, 1, -1, 2, -2, 3, -3):
                text.xyann = (dx, dy + shift * step)
                box = text.get_window_extent(renderer)
                if not any(box.overlaps(other) for other in placed):
                    break
            placed.append(box)


def _save(fig: Figure, out_paths: Sequence[str | Path]) -> Figure:
    """Write ``fig`` to each path (the format from its suffix) and release it from pyplot; the
    figure is returned for inspection."""
    _separate_labels(fig)
    for path in out_paths:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=DPI, bbox_inches="tight", pad_inches=0.05)
    plt.close(fig)
    log.info("wrote %s", ", ".join(str(p) for p in out_paths))
    return fig


def _figure_legend(fig, axes, fontsize: float = 8) -> None:
    """One legend for all panels (labels are the same across tasks): right of a single panel,
    the figure widened to hold it; below several, in as many columns as fit the figure's width,
    the rows balanced."""
    handles: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    # our methods first (matplotlib lists plain lines before error-bar containers), then guides
    labels = sorted(handles, key=lambda label: any(word in label for word in _GUIDES))
    handles = [handles[label] for label in labels]
    renderer = fig.canvas.get_renderer()
    if len(axes) == 1:
        legend = fig.legend(handles, labels, loc="outside right center", fontsize=fontsize, frameon=False)
        fig.set_figwidth(fig.get_figwidth() + legend.get_window_extent(renderer).width / fig.dpi + 0.1)
        return
    for ncols in range(len(labels), 0, -1):
        ncols = math.ceil(len(labels) / math.ceil(len(labels) / ncols))  # balanced rows
        legend = fig.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize=fontsize, frameon=False)
        if ncols == 1 or legend.get_window_extent(renderer).width <= 0.98 * fig.bbox.width:
            return
        legend.remove()


def _ordered(methods) -> list[str]:
    return sorted(set(methods), key=lambda m: (method_rank(m), m))


def pareto_front(reduction: Sequence[float], score: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both axes (higher FLOPs reduction and
    higher score), ordered by FLOPs reduction."""
    points = sorted(range(len(reduction)), key=lambda i: (-reduction[i], -score[i]))
    front, best = [], -math.inf
    for i in points:
        if score[i] > best:
            front.append(i)
            best = score[i]
    return sorted(front, key=lambda i: reduction[i])


def _score_curve(ax, pts: pd.DataFrame, method: str, style: dict) -> None:
    """One method's mean score against its FLOPs reduction, with its std over seeds as error bars
    (``pts``: the method's rows of a summary, sorted by ``flops_reduction``)."""
    ax.errorbar(
        pts["flops_reduction"],
        pts["score"],
        yerr=pts["score_std"].fillna(0),
        capsize=2,
        markersize=7,
        linestyle="-" if len(pts) > 1 else "none",
        label=method_label(method),
        **style,
    )


def accuracy_vs_flops(
    results_csv: str | Path, out_paths: Sequence[str | Path], paper_yaml: str | Path | None = None, model: str | None = None
) -> Figure:
    """Task metric (dev, x100) vs FLOPs reduction (log scale), one panel per task; each point
    names its setting, the legend its method."""
    summary = summarise(pd.read_csv(results_csv))
    paper = None
    if paper_yaml:
        paper, _ = load_paper_results(paper_yaml)
        same = paper["model"].map(lambda name: same_model(model, name)).astype(bool)
        paper = paper[same & paper["score"].notna()]
    tasks = _task_order(summary["task"])
    fig, axes = _panels(tasks)
    extra: dict[str, str] = {}
    for ax, task in zip(axes, tasks):
        sub = summary[summary["task"] == task]
        metric = sub["metric"].iloc[0]
        reductions = list(sub["flops_reduction"])
        named = []  # (x, y, setting, colour) of the points to name, once the limits are set
        for method in _ordered(sub["method"]):
            pts = sub[sub["method"] == method].sort_values("flops_reduction")
            style = _style(method, extra)
            _score_curve(ax, pts, method, style)
            if method != "dense":
                named.append((pts["flops_reduction"], pts["score"], pts["setting"], style["color"]))
        front = pareto_front(list(sub["flops_reduction"]), list(sub["score"]))
        ax.plot(
            sub["flops_reduction"].iloc[front], sub["score"].iloc[front], color="gold", linewidth=6, alpha=0.35, zorder=0, label="Pareto front (ours)"
        )
        if paper is not None:
            reported = paper[(paper["task"] == task) & (paper["metric"] == metric)]
            for method in _ordered(reported["method"]):
                pts = reported[reported["method"] == method]
                style = _style(method, extra)
                placed = pts[pts["flops_comparable"].astype(bool)]
                if len(placed):
                    reductions += list(placed["flops_reduction"])
                    ax.scatter(
                        placed["flops_reduction"],
                        placed["score"],
                        facecolors="none",
                        edgecolors=style["color"],
                        marker=style["marker"],
                        s=60,
                        label=f"{method_label(method)} (paper)",
                    )
                for score in pts.loc[~pts["flops_comparable"].astype(bool), "score"]:  # no x to place it at: a level
                    ax.axhline(
                        score,
                        color=style["color"],
                        linestyle=":",
                        linewidth=1.2,
                        label=f"{method_label(method)} (paper score; its FLOPs on another baseline)",
                    )
        ax.set_xscale("log")
        ax.set_xlim(*_ratio_limits(reductions, pad=1.15))
        _ratio_axis(ax.xaxis)
        for points in named:
            _label_points(ax, *points)
        ax.set_xlabel("FLOPs reduction (dense / pruned, log scale)")
        ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)} (dev, x100)")
        ax.set_title(TASK_LABELS.get(task, task))
        ax.grid(True, alpha=0.3)
    _figure_legend(fig, axes)
    return _save(fig, out_paths)


def latency_vs_flops(results_csv: str | Path, out_paths: Sequence[str | Path]) -> Figure:
    """Measured batch-1 CPU speedup over the stock dense model (SDPA) vs FLOPs reduction (both
    log scale), one panel per task; filled markers: the pruned model, each naming its setting;
    hollow: the ideal, the same SDPA layers at the pruned per-layer lengths without scoring or
    gather; dashed: speedup = FLOPs reduction."""
    frame = pd.read_csv(results_csv)
    summary = summarise(frame)
    tasks = _task_order(summary["task"])
    fig, axes = _panels(tasks, width=3.9, height=3.9)
    extra: dict[str, str] = {}
    for ax, task in zip(axes, tasks):
        sub = summary[summary["task"] == task]
        named = []  # (x, y, setting, colour) of the points to name, once the limits are set
        for method in _ordered(sub["method"]):
            pts = sub[sub["method"] == method]
            style = _style(method, extra)
            ax.errorbar(
                pts["flops_reduction"],
                pts["speedup"],
                yerr=pts["speedup_std"].fillna(0),
                linestyle="none",
                capsize=2,
                markersize=7,
                label=method_label(method),
                **style,
            )
            ax.scatter(pts["flops_reduction"], pts["speedup_ideal"], facecolors="none", edgecolors=style["color"], marker=style["marker"], s=50)
            if method != "dense":
                named.append((pts["flops_reduction"], pts["speedup"], pts["setting"], style["color"]))
        low, high = _ratio_limits([*sub["flops_reduction"], *sub["speedup"], *sub["speedup_ideal"]])
        ax.plot([low, high], [low, high], "k--", linewidth=1, label="speedup = FLOPs reduction")
        ax.axhline(1.0, color="gray", linestyle=":", linewidth=1)
        ax.scatter([], [], facecolors="none", edgecolors="gray", marker="o", label="hollow: ideal (SDPA layers\nat the pruned lengths)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(low, high)
        ax.set_ylim(low, high)
        _ratio_axis(ax.xaxis)
        _ratio_axis(ax.yaxis)
        for points in named:
            _label_points(ax, *points, below=True)  # the hollow ideal sits above
        ax.set_xlabel("FLOPs reduction (log scale)")
        ax.set_ylabel("measured speedup (log scale)")
        ax.set_title(TASK_LABELS.get(task, task))
        ax.grid(True, alpha=0.3)
    threads = int(frame["threads"].iloc[0])
    fig.suptitle(f"Batch-1 latency, {threads} pinned thread(s)\n{frame['cpu'].iloc[0]}", fontsize=9)
    _figure_legend(fig, axes)
    return _save(fig, out_paths)


def retained_tokens(layers_csv: str | Path, results_csv: str | Path, out_paths: Sequence[str | Path]) -> Figure:
    """Mean tokens kept after each layer as a share of the input length (mean over dev
    examples, then seeds), one line per method setting (line style by FLOPs reduction, solid
    = least), one panel per task."""
    layers = pd.read_csv(layers_csv)
    # line style by the setting's rank within its method (mean FLOPs reduction over tasks), so
    # one legend serves every panel
    reduction = summarise(pd.read_csv(results_csv)).groupby(["method", "setting"])["flops_reduction"].mean()
    linestyle = {}
    for method, group in reduction.groupby(level="method"):
        for rank, (_, setting) in enumerate(group.sort_values().index):
            linestyle[(method, setting)] = ["-", "--", ":", "-."][rank % 4]
    mean = layers.groupby(GROUP + ["layer"], sort=False)["kept_fraction"].mean().reset_index()
    tasks = _task_order(mean["task"])
    fig, axes = _panels(tasks)
    extra: dict[str, str] = {}
    for ax, task in zip(axes, tasks):
        sub = mean[mean["task"] == task]
        for method in _ordered(sub["method"]):
            for setting in sorted(set(sub.loc[sub["method"] == method, "setting"]), key=lambda s: reduction[(method, s)]):
                pts = sub[(sub["method"] == method) & (sub["setting"] == setting)]
                label = method_label(method) if method == "dense" else f"{method_label(method)} {setting}"
                ax.plot(
                    pts["layer"] + 1, pts["kept_fraction"], linestyle=linestyle[(method, setting)], label=label, markersize=4, **_style(method, extra)
                )
        ax.set_xlabel("layer (tokens kept after it)")
        ax.set_ylabel("tokens kept (share of input length)")
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_ylim(0, 1.05)
        ax.set_xticks(sorted(sub["layer"].unique() + 1))
        ax.set_title(TASK_LABELS.get(task, task))
        ax.grid(True, alpha=0.3)
    _figure_legend(fig, axes)
    return _save(fig, out_paths)


def reproduction_figure(
    frame: pd.DataFrame,
    out_paths: Sequence[str | Path],
    expected_teacher: dict[str, dict | None] | None = None,
    tasks: Sequence[str] | None = None,
    notes: dict[str, str] | None = None,
) -> None:
    """Dev score against FLOPs reduction (log scale), one panel per task, from the reproduction's
    summaries (one row per run, :data:`top.report.reproduction.SUMMARY_COLUMNS`): each method
    setting at its mean over seeds (error bars: std), labelled with the setting's name, the
    teacher as a dashed level and, where given, the expected teacher level as a dotted one.
    ``notes``: a line under a task's title (e.g. that its runs are not all done)."""
    tasks = list(tasks or dict.fromkeys(frame["task"]))
    numeric = frame.assign(score=pd.to_numeric(frame["score"]), flops_reduction=pd.to_numeric(frame["flops_reduction"]))
    grouped = numeric.groupby(["task", "method", "setting"], sort=False)
    summary = grouped[["score", "flops_reduction"]].mean().join(grouped["score"].std(ddof=1).rename("score_std")).reset_index()
    fig, axes = _panels(tasks, width=5.4, height=4.2)
    extra: dict[str, str] = {}
    for ax, task in zip(axes, tasks):
        sub = summary[summary["task"] == task]
        note = (notes or {}).get(task)
        ax.set_title(TASK_LABELS.get(task, task) + (f"\n({note})" if note else ""))
        if sub.empty:  # e.g. only ablation runs recorded so far, which the figure leaves out
            ax.text(0.5, 0.5, "no runs on the curves yet", ha="center", va="center", transform=ax.transAxes, color="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        metric = numeric.loc[numeric["task"] == task, "metric"].iloc[0]
        for method in _ordered(sub["method"]):
            pts = sub[sub["method"] == method].sort_values("flops_reduction")
            style = _style(method, extra)
            if method == "dense":
                ax.axhline(pts["score"].mean(), color=style["color"], linestyle="--", linewidth=1, label="Dense (teacher)")
                continue
            _score_curve(ax, pts, method, style)
            for x, y, setting in zip(pts["flops_reduction"], pts["score"], pts["setting"]):
                ax.annotate(setting, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=style["color"])
        expected = (expected_teacher or {}).get(task)
        if expected and expected.get("metric") == metric:
            ax.axhline(expected["score"], color="gray", linestyle=":", linewidth=1.2, label="expected teacher level (published)")
        for target in (2.0, 4.0):
            ax.axvline(target, color="lightgray", linewidth=0.8, zorder=0)
        ax.set_xscale("log", base=2)
        _ratio_axis(ax.xaxis)
        ax.set_xlabel("FLOPs reduction (dense / pruned, log scale)")
        ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)} (dev, x100)")
        ax.grid(True, which="both", alpha=0.3)
    _figure_legend(fig, axes)
    _save(fig, out_paths)


FIGURES = ("accuracy_vs_flops", "latency_vs_flops", "retained_tokens")


def draw_figure(
    figure: str, results_csv: str | Path, layers_csv: str | Path, paper_yaml: str | Path | None, model: str | None, out_paths: Sequence[str | Path]
) -> Figure:
    """Draw one of :data:`FIGURES` (what the workflow's ``figure`` rule calls); the figure is
    returned after it was written."""
    if figure == "accuracy_vs_flops":
        return accuracy_vs_flops(results_csv, out_paths, paper_yaml, model)
    if figure == "latency_vs_flops":
        return latency_vs_flops(results_csv, out_paths)
    if figure == "retained_tokens":
        return retained_tokens(layers_csv, results_csv, out_paths)
    raise ValueError(f"unknown figure {figure!r}; expected one of {FIGURES}")
