"""Results table and plots from the per-run JSON files.

:func:`collect` joins each run's ``metrics.json``, ``flops.json`` and ``latency.json`` into one
CSV row; :func:`markdown_table` and :func:`accuracy_vs_flops` render it. Scores are shown on
the 0-100 scale the papers use; the JSON files keep the ``evaluate`` library's scale, which
``metric_scale`` records (1 for GLUE's metrics, 100 for SQuAD's).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402
import pandas as pd  # noqa: E402

log = logging.getLogger(__name__)

KEYS = ["task", "method", "setting", "seed"]
METHOD_ORDER = ["dense", "topk", "ltp", "power_bert", "top"]
METHOD_LABELS = {"dense": "Dense (teacher)", "topk": "Top-k (static)", "ltp": "LTP", "power_bert": "PoWER-BERT", "top": "ToP"}


def _read(path: str | Path) -> dict:
    with open(path) as handle:
        return json.load(handle)


def _atomic_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def collect(metric_files: Sequence[str], flops_files: Sequence[str], latency_files: Sequence[str], out_csv: str | Path) -> pd.DataFrame:
    """One row per run with: the primary metric (x100) and every split's metrics, FLOPs and
    reduction, latency medians and speedups."""
    rows = {}
    for path in metric_files:
        m = _read(path)
        row = {k: m[k] for k in KEYS}
        row["metric"] = m["primary_metric"]
        factor = 100.0 / m.get("metric_scale", 1.0)
        row["score"] = factor * m["score"]
        for split, values in m["splits"].items():
            for name, value in values.items():
                if name == "n_examples" or name.endswith(("total", "_thresh")):
                    row[f"{split}/{name}"] = value  # counts and thresholds are not scores
                else:
                    row[f"{split}/{name}"] = factor * value
        rows[tuple(row[k] for k in KEYS)] = row
    for path in flops_files:
        f = _read(path)
        rows[tuple(f[k] for k in KEYS)].update(
            flops=f["flops"], dense_flops=f["dense_flops"], flops_reduction=f["flops_reduction"], mean_input_length=f["mean_input_length"],
            target_flops_reduction=f.get("target_flops_reduction"), target_error_pct=f.get("target_error_pct"),
        )
    for path in latency_files:
        lat = _read(path)
        runners = lat["timings"]["runners"]
        rows[tuple(lat[k] for k in KEYS)].update(
            latency_ms=runners["pruned"]["median_ms"],
            dense_latency_ms=runners["dense"]["median_ms"],
            latency_iqr_ms=runners["pruned"]["iqr_ms"],
            speedup=lat["speedup"],
            speedup_at_pruned_lengths=lat["speedup_at_pruned_lengths"],
            cpu=lat["environment"]["cpu_model"],
            threads=lat["environment"]["threads"],
        )
    frame = pd.DataFrame(list(rows.values()))
    frame["order"] = frame["method"].map({m: i for i, m in enumerate(METHOD_ORDER)}).fillna(len(METHOD_ORDER))
    frame = frame.sort_values(["task", "order", "flops_reduction", "setting", "seed"]).drop(columns="order")
    _atomic_text(out_csv, frame.to_csv(index=False, float_format="%.6g"))
    log.info("wrote %d rows to %s", len(frame), out_csv)
    return frame


def markdown_table(results_csv: str | Path, out_md: str | Path) -> str:
    """Task x method/setting table: score, FLOPs reduction, measured and ideal speedups
    (mean over seeds where several ran)."""
    frame = pd.read_csv(results_csv)
    grouped = frame.groupby(["task", "method", "setting", "metric"], sort=False)
    summary = grouped.agg(
        seeds=("seed", "count"),
        score=("score", "mean"),
        score_std=("score", "std"),
        flops_reduction=("flops_reduction", "mean"),
        speedup=("speedup", "mean"),
        speedup_at_pruned_lengths=("speedup_at_pruned_lengths", "mean"),
        latency_ms=("latency_ms", "mean"),
        dense_latency_ms=("dense_latency_ms", "mean"),
    ).reset_index()
    lines = [
        "| task | method | setting | metric | score | FLOPs reduction | latency speedup | speedup at pruned lengths | latency (ms) | dense latency (ms) | seeds |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary.itertuples():
        score = f"{r.score:.2f}" + (f" ± {r.score_std:.2f}" if r.seeds > 1 else "")
        lines.append(
            f"| {r.task} | {METHOD_LABELS.get(r.method, r.method)} | {r.setting} | {r.metric} | {score} | "
            f"{r.flops_reduction:.2f}x | {r.speedup:.2f}x | {r.speedup_at_pruned_lengths:.2f}x | "
            f"{r.latency_ms:.2f} | {r.dense_latency_ms:.2f} | {r.seeds} |"
        )
    cpu = frame["cpu"].iloc[0] if "cpu" in frame and len(frame) else "unknown CPU"
    threads = int(frame["threads"].iloc[0]) if "threads" in frame and len(frame) else 0
    lines += [
        "",
        f"Score: primary dev metric x100. FLOPs reduction: dense / pruned FLOPs at real lengths. "
        f"Latency: batch 1, median per example, {threads} pinned thread(s) on {cpu}; speedups are "
        f"ratios of medians measured interleaved with the dense model in the same process.",
    ]
    text = "\n".join(lines) + "\n"
    _atomic_text(out_md, text)
    return text


def accuracy_vs_flops(results_csv: str | Path, out_paths: Sequence[str | Path]) -> None:
    """One panel per task: score vs FLOPs reduction for every method (mean over seeds)."""
    frame = pd.read_csv(results_csv)
    points = frame.groupby(["task", "method", "setting", "metric"], sort=False)[["score", "flops_reduction"]].mean().reset_index()
    tasks = list(dict.fromkeys(points["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    markers = dict(zip(METHOD_ORDER, "o^sDv"))
    for ax, task in zip(axes[0], tasks):
        sub = points[points["task"] == task]
        for method in sorted(sub["method"].unique(), key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else 99):
            pts = sub[sub["method"] == method].sort_values("flops_reduction")
            ax.plot(pts["flops_reduction"], pts["score"], marker=markers.get(method, "x"), linestyle="-" if len(pts) > 1 else "none", label=METHOD_LABELS.get(method, method))
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}x"))
        ax.set_xlabel("FLOPs reduction (dense / pruned, log scale)")
        ax.set_ylabel(f"{sub['metric'].iloc[0]} (dev, x100)")
        ax.set_title(task.upper())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    for path in out_paths:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp" + path.suffix)
        fig.savefig(tmp, dpi=150)
        os.replace(tmp, path)
    plt.close(fig)
