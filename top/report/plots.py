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

One panel per task; every figure is written as each path in ``out_paths`` (PNG, SVG, PDF),
through a temporary name.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["svg.fonttype"] = "none"  # SVG text stays text: searchable, editable
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter, PercentFormatter  # noqa: E402

from top.files import atomic_path  # noqa: E402
from top.report.labels import GROUP, METRIC_LABELS, TASK_LABELS, method_label, method_rank  # noqa: E402
from top.report.paper import load_paper_results, same_model  # noqa: E402
from top.report.tables import summarise  # noqa: E402

log = logging.getLogger(__name__)

_MARKERS = {"dense": "o", "topk": "^", "ltp": "s", "power_bert": "D", "top": "*"}
_COLORS = {"dense": "black", "topk": "tab:gray", "ltp": "tab:blue", "power_bert": "tab:green", "top": "tab:red"}
_EXTRA_COLORS = ["tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:orange"]


def _style(method: str, extra: dict[str, str]) -> dict:
    if method not in _COLORS and method not in extra:
        extra[method] = _EXTRA_COLORS[len(extra) % len(_EXTRA_COLORS)]
    return {"color": _COLORS.get(method, extra.get(method)), "marker": _MARKERS.get(method, "P")}


def _panels(tasks: Sequence[str], width: float = 4.6, height: float = 3.8):
    ncols = min(4, len(tasks))
    nrows = math.ceil(len(tasks) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for ax in axes.flat[len(tasks) :]:
        ax.set_visible(False)
    return fig, list(axes.flat[: len(tasks)])


def _ratio_axis(axis) -> None:
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}x"))


def _save(fig, out_paths: Sequence[str | Path]) -> None:
    for path in out_paths:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=150, bbox_inches="tight")
    plt.close(fig)
    log.info("wrote %s", ", ".join(str(p) for p in out_paths))


def _figure_legend(fig, axes) -> None:
    """One legend for all panels, below them (labels are the same across tasks)."""
    handles: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    # our methods first (matplotlib lists plain lines before error-bar containers), then guides
    guides = ("Pareto", "paper", "ideal", "hollow")
    order = sorted(handles, key=lambda label: any(word in label for word in guides))
    handles = {label: handles[label] for label in order}
    fig.tight_layout()
    fig.legend(handles.values(), handles.keys(), loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(4, len(handles)), fontsize=9, frameon=False)


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


def accuracy_vs_flops(
    results_csv: str | Path, out_paths: Sequence[str | Path], paper_yaml: str | Path | None = None, model: str | None = None
) -> None:
    """Task metric (dev, x100) vs FLOPs reduction (log scale), one panel per task."""
    summary = summarise(pd.read_csv(results_csv))
    paper = None
    if paper_yaml:
        paper, _ = load_paper_results(paper_yaml)
        same = paper["model"].map(lambda name: same_model(model, name)).astype(bool)
        paper = paper[same & paper["score"].notna()]
    tasks = list(dict.fromkeys(summary["task"]))
    fig, axes = _panels(tasks)
    extra: dict[str, str] = {}
    for ax, task in zip(axes, tasks):
        sub = summary[summary["task"] == task]
        metric = sub["metric"].iloc[0]
        for method in _ordered(sub["method"]):
            pts = sub[sub["method"] == method].sort_values("flops_reduction")
            style = _style(method, extra)
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
        ax.set_xscale("log", base=2)
        _ratio_axis(ax.xaxis)
        ax.set_xlabel("FLOPs reduction (dense / pruned, log scale)")
        ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)} (dev, x100)")
        ax.set_title(TASK_LABELS.get(task, task))
        ax.grid(True, which="both", alpha=0.3)
    _figure_legend(fig, axes)
    _save(fig, out_paths)


def latency_vs_flops(results_csv: str | Path, out_paths: Sequence[str | Path]) -> None:
    """Measured batch-1 CPU speedup over the stock dense model (SDPA) vs FLOPs reduction (both
    log scale), one panel per task; filled markers: the pruned model; hollow: the ideal, the same
    SDPA layers at the pruned per-layer lengths without scoring or gather; dashed: speedup =
    FLOPs reduction."""
    frame = pd.read_csv(results_csv)
    summary = summarise(frame)
    tasks = list(dict.fromkeys(summary["task"]))
    fig, axes = _panels(tasks)
    extra: dict[str, str] = {}
    for ax, task in zip(axes, tasks):
        sub = summary[summary["task"] == task]
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
        top = max(sub["flops_reduction"].max(), sub["speedup"].max(), sub["speedup_ideal"].max()) * 1.15
        bottom = min(sub["speedup"].min(), sub["speedup_ideal"].min(), 1.0) / 1.15
        ax.plot([bottom, top], [bottom, top], "k--", linewidth=1, label="speedup = FLOPs reduction")
        ax.axhline(1.0, color="gray", linestyle=":", linewidth=1)
        ax.scatter([], [], facecolors="none", edgecolors="gray", marker="o", label="hollow: ideal (SDPA layers at the pruned lengths)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlim(bottom, top)
        ax.set_ylim(bottom, top)
        _ratio_axis(ax.xaxis)
        _ratio_axis(ax.yaxis)
        ax.set_xlabel("FLOPs reduction (log scale)")
        ax.set_ylabel("measured latency speedup (log scale)")
        ax.set_title(TASK_LABELS.get(task, task))
        ax.grid(True, which="both", alpha=0.3)
    threads = int(frame["threads"].iloc[0])
    fig.suptitle(f"Batch-1 latency, {threads} pinned thread(s), {frame['cpu'].iloc[0]}", fontsize=10)
    _figure_legend(fig, axes)
    _save(fig, out_paths)


def retained_tokens(layers_csv: str | Path, results_csv: str | Path, out_paths: Sequence[str | Path]) -> None:
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
    tasks = list(dict.fromkeys(mean["task"]))
    fig, axes = _panels(tasks, width=5.2)
    extra: dict[str, str] = {}
    for ax, task in zip(axes, tasks):
        sub = mean[mean["task"] == task]
        for method in _ordered(sub["method"]):
            for setting in sorted(set(sub.loc[sub["method"] == method, "setting"]), key=lambda s: reduction[(method, s)]):
                pts = sub[(sub["method"] == method) & (sub["setting"] == setting)]
                label = method_label(method) if method == "dense" else f"{method_label(method)} {setting}"
                ax.plot(
                    pts["layer"] + 1, pts["kept_fraction"], linestyle=linestyle[(method, setting)], label=label, markersize=5, **_style(method, extra)
                )
        ax.set_xlabel("layer (tokens kept after it)")
        ax.set_ylabel("tokens kept (share of input length)")
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_ylim(0, 1.05)
        ax.set_xticks(sorted(sub["layer"].unique() + 1))
        ax.set_title(TASK_LABELS.get(task, task))
        ax.grid(True, alpha=0.3)
    _figure_legend(fig, axes)
    _save(fig, out_paths)


def reproduction_figure(
    frame: pd.DataFrame, out_paths: Sequence[str | Path], expected_teacher: dict[str, dict | None] | None = None, tasks: Sequence[str] | None = None
) -> None:
    """Dev score against FLOPs reduction (log scale), one panel per task, from the reproduction's
    summaries (one row per run, :data:`top.report.reproduction.SUMMARY_COLUMNS`): each method
    setting at its mean over seeds (error bars: std), labelled with the setting's name, the
    teacher as a dashed level and, where given, the expected teacher level as a dotted one."""
    tasks = list(tasks or dict.fromkeys(frame["task"]))
    numeric = frame.assign(score=pd.to_numeric(frame["score"]), flops_reduction=pd.to_numeric(frame["flops_reduction"]))
    grouped = numeric.groupby(["task", "method", "setting"], sort=False)
    summary = grouped[["score", "flops_reduction"]].mean().join(grouped["score"].std(ddof=1).rename("score_std")).reset_index()
    fig, axes = _panels(tasks, width=5.4, height=4.2)
    extra: dict[str, str] = {}
    for ax, task in zip(axes, tasks):
        sub = summary[summary["task"] == task]
        metric = numeric.loc[numeric["task"] == task, "metric"].iloc[0]
        for method in _ordered(sub["method"]):
            pts = sub[sub["method"] == method].sort_values("flops_reduction")
            style = _style(method, extra)
            if method == "dense":
                ax.axhline(pts["score"].mean(), color=style["color"], linestyle="--", linewidth=1, label="Dense (teacher)")
                continue
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
        ax.set_title(TASK_LABELS.get(task, task))
        ax.grid(True, which="both", alpha=0.3)
    _figure_legend(fig, axes)
    _save(fig, out_paths)


FIGURES = ("accuracy_vs_flops", "latency_vs_flops", "retained_tokens")


def draw_figure(
    figure: str, results_csv: str | Path, layers_csv: str | Path, paper_yaml: str | Path | None, model: str | None, out_paths: Sequence[str | Path]
) -> None:
    """Draw one of :data:`FIGURES` (what the workflow's ``figure`` rule calls)."""
    if figure == "accuracy_vs_flops":
        accuracy_vs_flops(results_csv, out_paths, paper_yaml, model)
    elif figure == "latency_vs_flops":
        latency_vs_flops(results_csv, out_paths)
    elif figure == "retained_tokens":
        retained_tokens(layers_csv, results_csv, out_paths)
    else:
        raise ValueError(f"unknown figure {figure!r}; expected one of {FIGURES}")
