"""Results tables from the per-run JSON files, with the papers' numbers beside ours.

:func:`collect` joins each run's ``metrics.json``, ``flops.json`` and ``latency.json`` into one
CSV row (``results.csv``) and its mean per-layer token counts into ``layers.csv``;
:func:`summarise` averages the seeds of each (task, method, setting); :func:`write_table`
renders one of the paper's tables (``glue``: Table 2's task x method grid with the GLUE average;
``squad``; ``latency``) as CSV, Markdown and LaTeX. Scores are shown on the 0-100 scale the
papers use; the JSON files keep the ``evaluate`` library's scale, which ``metric_scale``
records (1 for GLUE's metrics, 100 for SQuAD's).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from top.files import atomic_write_text
from top.report.labels import GROUP, KEYS, METRIC_LABELS, TASK_LABELS, method_label, method_rank
from top.report.paper import comparable, empty_paper_results, load_paper_results
from top.tasks import is_qa_task

log = logging.getLogger(__name__)

TABLES = ("glue", "squad", "latency")
#: What ``metrics.json`` says about the checkpoint a run kept, copied into ``results.csv``.
SELECTION_COLUMNS = ("selection", "selected_epoch", "selection_epochs", "selection_fallback")
#: ``results.csv``'s column naming a run's metrics that are undefined (``null`` in metrics.json).
UNDEFINED_COLUMN = "undefined_metrics"
UNDEFINED_NOTE = (
    "–: the metric is undefined for this run (null in its metrics.json), e.g. Pearson or Spearman correlation when "
    "the predictions or the labels are constant"
)


def _read(path: str | Path) -> dict:
    with open(path) as handle:
        return json.load(handle)


# ---------------------------------------------------------------------------------------------
# collect and summarise


def collect(
    metric_files: Sequence[str],
    flops_files: Sequence[str],
    latency_files: Sequence[str],
    out_csv: str | Path,
    out_layers_csv: str | Path | None = None,
) -> pd.DataFrame:
    """One row per run with: the primary metric (x100) and every split's metrics, which
    checkpoint the run kept (``selection``: the rule, ``selected_epoch``: from 1 within the last
    stage, ``selection_epochs``: that stage's epochs, ``selection_fallback``: no epoch met the
    FLOPs budget, so the last was kept; :mod:`top.selection`), FLOPs and reduction, latency
    medians and speedups. ``out_layers_csv`` gets one row per run and layer:
    the mean tokens entering and kept after it (over the dev examples), and the kept fraction of
    the input length."""
    rows: dict[tuple, dict] = {}
    for path in metric_files:
        m = _read(path)
        row = {k: m[k] for k in KEYS}
        row["metric"] = m["primary_metric"]
        factor = 100.0 / m.get("metric_scale", 1.0)
        # an undefined metric (e.g. a correlation of constant predictions) is null in the JSON
        row["score"] = math.nan if m["score"] is None else factor * m["score"]
        for key in SELECTION_COLUMNS:
            row[key] = m.get(key)
        undefined = []
        for split, values in m["splits"].items():
            for name, value in values.items():
                if value is None:
                    row[f"{split}/{name}"] = math.nan
                    undefined.append(f"{split}/{name}")
                elif name == "n_examples" or name.endswith(("total", "_thresh")):
                    row[f"{split}/{name}"] = value  # counts and thresholds are not scores
                else:
                    row[f"{split}/{name}"] = factor * value
        row[UNDEFINED_COLUMN] = "; ".join(undefined)
        rows[tuple(row[k] for k in KEYS)] = row
    layers = []
    for path in flops_files:
        f = _read(path)
        rows[tuple(f[k] for k in KEYS)].update(
            flops=f["flops"],
            dense_flops=f["dense_flops"],
            flops_reduction=f["flops_reduction"],
            mean_input_length=f["mean_input_length"],
            target_flops_reduction=f.get("target_flops_reduction"),
            target_error_pct=f.get("target_error_pct"),
        )
        for layer, (entering, kept) in enumerate(zip(f["mean_lengths_in"], f["mean_lengths_kept"])):
            layers.append(
                {
                    **{k: f[k] for k in KEYS},
                    "layer": layer,
                    "mean_tokens_in": entering,
                    "mean_tokens_kept": kept,
                    "kept_fraction": kept / f["mean_input_length"],
                }
            )
    for path in latency_files:
        rows[tuple(_read(path)[k] for k in KEYS)].update(_latency_columns(_read(path)))
    frame = pd.DataFrame(list(rows.values()))
    frame = frame.sort_values(["task", "flops_reduction", "setting", "seed"])
    frame = frame.sort_values(["task", "method"], key=lambda col: col.map(method_rank) if col.name == "method" else col, kind="stable")
    atomic_write_text(out_csv, frame.to_csv(index=False, float_format="%.6g"))
    log.info("wrote %d rows to %s", len(frame), out_csv)
    if out_layers_csv is not None:
        atomic_write_text(out_layers_csv, pd.DataFrame(layers).to_csv(index=False, float_format="%.6g"))
    return frame


def _latency_columns(lat: dict) -> dict:
    """The ``results.csv`` columns of one ``latency.json`` (docs/design.md, "Latency protocol"):
    batch-1 medians of the pruned model, the stock dense model (the reference), the harness's
    own dense path and the ideal (SDPA layers at the pruned lengths); the speedups over the
    stock model; ``pruned_vs_ideal`` (ideal ms / pruned ms, 1 = no pruning overhead); per batch
    size ``b``, the throughput speedup and both models' examples/s; the peak resident memory of
    each runner where measured. Files written before these existed give NaN for what they lack
    (their ``dense`` was the harness's eager path, not the stock model)."""
    runners = lat["timings"]["runners"]
    nan = math.nan
    memory = lat.get("memory", {}).get("runners", {})
    columns = {
        "latency_ms": runners["pruned"]["median_ms"],
        "dense_latency_ms": runners["dense"]["median_ms"],
        "dense_harness_latency_ms": runners.get("dense_harness", {}).get("median_ms", nan),
        "ideal_latency_ms": runners.get("ideal", {}).get("median_ms", nan),
        "latency_iqr_ms": runners["pruned"]["iqr_ms"],
        "speedup": lat["speedup"],
        "speedup_ideal": lat.get("speedup_ideal", nan),
        "pruned_vs_ideal": lat.get("pruned_vs_ideal", nan),
    }
    for size, entry in sorted(lat.get("throughput", {}).items(), key=lambda item: int(item[0])):
        columns[f"throughput_speedup_b{size}"] = entry["speedup"]
        columns[f"examples_per_s_b{size}"] = entry["examples_per_s"]["pruned"]
        columns[f"dense_examples_per_s_b{size}"] = entry["examples_per_s"]["dense"]
    for name in ("pruned", "dense", "ideal"):
        if name in memory:
            columns[f"peak_rss_mb_{name}"] = memory[name]["peak_rss_bytes"] / 2**20
    columns.update(cpu=lat["environment"]["cpu_model"], threads=lat["environment"]["threads"])
    return columns


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds of every numeric column per (task, method, setting), with ``<col>_std``
    (sample standard deviation; NaN for one seed) and ``seeds`` (how many ran)."""
    numeric = [c for c in frame.columns if c not in KEYS and pd.api.types.is_numeric_dtype(frame[c])]
    grouped = frame.groupby(GROUP, sort=False)
    mean = grouped[numeric].mean()
    std = grouped[numeric].std(ddof=1).add_suffix("_std")
    firsts = grouped[[c for c in ("metric", "cpu") if c in frame]].first()
    summary = pd.concat([firsts, mean, std], axis=1)
    summary.insert(0, "seeds", grouped.size())
    return summary.reset_index()


def metric_value(row: pd.Series, metric: str) -> tuple[float, float]:
    """(mean, std over seeds) of ``metric`` for a summary row: its score when ``metric`` is the
    run's primary metric, else the first dev split's ``<split>/<metric>``; NaN if absent."""
    if metric == row["metric"]:
        return row["score"], row.get("score_std", math.nan)
    for column in row.index:
        if column.endswith(f"/{metric}") and not column.endswith("_std"):
            return row[column], row.get(f"{column}_std", math.nan)
    return math.nan, math.nan


# ---------------------------------------------------------------------------------------------
# cell formatting (one function per output flavour)


def _num(value: float, digits: int = 1) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _pm(mean: float, std: float, tex: bool) -> str:
    if math.isnan(mean):
        return "–"
    if std is None or math.isnan(std):
        return _num(mean)
    return f"{mean:.1f} $\\pm$ {std:.1f}" if tex else f"{mean:.1f} ± {std:.1f}"


def _times(value: float, tex: bool, digits: int = 2) -> str:
    if value is None or math.isnan(value):
        return "–"
    return f"{value:.{digits}f}$\\times$" if tex else f"{value:.{digits}f}x"


def _delta(value: float, tex: bool) -> str:
    if math.isnan(value):
        return ""
    sign = "+" if value >= 0 else "−"
    text = f"{sign}{abs(value):.1f}"
    return f"$\\Delta$ {text.replace('−', '-')}" if tex else f"Δ {text}"


def _tex_escape(text: str) -> str:
    for char, repl in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        text = text.replace(char, repl)
    return text


def _cell(score: float, std: float, reduction: float, delta: float, tex: bool, comparable_flops: bool = True) -> str:
    """``score ± std (R.Rx; Δ d)``: the score, its FLOPs reduction (``R.Rx†`` when counted on
    another baseline than ours), and ours - paper."""
    if math.isnan(score):
        return "–"
    flops = "" if math.isnan(reduction) else _times(reduction, tex, 1) + ("" if comparable_flops else ("$^\\dagger$" if tex else "†"))
    inner = "; ".join(part for part in (flops, _delta(delta, tex)) if part)
    return _pm(score, std, tex) + (f" ({inner})" if inner else "")


# ---------------------------------------------------------------------------------------------
# the three tables


def _source_label(sources: dict, source_id: str) -> str:
    """``label (split)``, e.g. ``ToP README (dev)``."""
    return f"{sources[source_id]['label']} ({sources[source_id]['split']})"


def _paper_rows(paper: pd.DataFrame, tasks: Sequence[str]) -> pd.DataFrame:
    """The first paper row per (task, method, metric) among ``tasks`` (file order = priority)."""
    paper = paper[paper["task"].isin(tasks)]
    return paper.drop_duplicates(["task", "method", "metric"], keep="first")


def _column_metrics(summary: pd.DataFrame, paper: pd.DataFrame, tasks: Sequence[str]) -> dict[str, str]:
    """The metric shown for each task: the paper's (first row for the task), else ours."""
    metrics = {}
    for task in tasks:
        reported = paper[(paper["task"] == task) & paper["score"].notna()]
        ours = summary[summary["task"] == task]
        metrics[task] = reported["metric"].iloc[0] if len(reported) else ours["metric"].iloc[0]
    return metrics


def _score_grid(
    summary: pd.DataFrame, paper: pd.DataFrame, sources: dict, tasks: Sequence[str], metrics: dict[str, str], model: str | None
) -> pd.DataFrame:
    """Long table: one row per (method, setting or paper source, task) with our mean/std/FLOPs,
    and for our rows the paper's number for the same task, method and metric, and the difference
    where the two are comparable (:func:`top.report.paper.comparable`: same checkpoint, dev split)."""
    paper = _paper_rows(paper, tasks)
    rows = []
    for _, r in summary[summary["task"].isin(tasks)].iterrows():  # (iterrows keeps "split/metric" names)
        metric = metrics[r.task]
        mean, std = metric_value(r, metric)
        ref = paper[(paper["task"] == r.task) & (paper["method"] == r.method) & (paper["metric"] == metric)]
        ref = ref.iloc[0] if len(ref) else None
        rows.append(
            {
                "method": r.method,
                "setting": r.setting,
                "source": "ours",
                "task": r.task,
                "metric": metric,
                "seeds": r.seeds,
                "score": mean,
                "score_std": std,
                "flops_reduction": r.flops_reduction,
                "flops_reduction_std": r.flops_reduction_std,
                "paper_source": ref["source"] if ref is not None else "",
                "paper_score": ref["score"] if ref is not None else math.nan,
                "paper_flops_reduction": ref["flops_reduction"] if ref is not None else math.nan,
                "flops_comparable": True,
                "score_diff": mean - ref["score"] if ref is not None and comparable(model, ref["model"], ref["split"]) else math.nan,
            }
        )
    for p in paper[paper["metric"] == paper["task"].map(metrics)].itertuples(index=False):
        rows.append(
            {
                "method": p.method,
                "setting": "",
                "source": _source_label(sources, p.source),
                "task": p.task,
                "metric": p.metric,
                "seeds": math.nan,
                "score": p.score,
                "score_std": math.nan,
                "flops_reduction": p.flops_reduction,
                "flops_reduction_std": math.nan,
                "paper_source": p.source,
                "paper_score": math.nan,
                "paper_flops_reduction": math.nan,
                "flops_comparable": p.flops_comparable,
                "score_diff": math.nan,
            }
        )
    long = pd.DataFrame(rows)
    if len(long):
        long["_rank"] = long["method"].map(method_rank)
        long["_paper"] = long["source"] != "ours"
        long = long.sort_values(["_rank", "method", "_paper"], kind="stable").drop(columns=["_rank", "_paper"])
    return long


def _by_row(long: pd.DataFrame, tex: bool, cells: Callable[[pd.DataFrame], dict[str, str]]) -> pd.DataFrame:
    """One line per (method, setting or paper source) of ``long``: its labels, then
    ``cells(rows of that line)``."""
    out = [
        {"Method": method_label(method), "Setting": setting, "Source": source, **cells(group)}
        for (method, setting, source), group in long.groupby(["method", "setting", "source"], sort=False)
    ]
    frame = pd.DataFrame(out)
    if tex:
        for column in ("Method", "Setting", "Source"):
            frame[column] = frame[column].map(_tex_escape)
    return frame


def _wide(long: pd.DataFrame, tasks: Sequence[str], metrics: dict[str, str], tex: bool) -> pd.DataFrame:
    """Method x task grid of score cells, and the average over the tasks."""
    header = [f"{TASK_LABELS.get(t, t)} ({METRIC_LABELS.get(metrics[t], metrics[t])})" for t in tasks]

    def cells(group: pd.DataFrame) -> dict[str, str]:
        by_task = group.set_index("task")
        line = {}
        for task, name in zip(tasks, header):
            r = by_task.loc[task] if task in by_task.index else None
            line[name] = "–" if r is None else _cell(r["score"], r["score_std"], r["flops_reduction"], r["score_diff"], tex, r["flops_comparable"])
        scores = by_task["score"].reindex(tasks)
        present = scores.notna().sum()
        line["Avg."] = _num(scores.mean() if present else math.nan) + (f" ({present}/{len(tasks)})" if 0 < present < len(tasks) else "")
        return line

    return _by_row(long, tex, cells)


def _throughput_columns(frame: pd.DataFrame) -> list[str]:
    """``throughput_speedup_b<size>`` columns of ``frame``, by batch size."""
    found = [c for c in frame.columns if c.startswith("throughput_speedup_b") and c[len("throughput_speedup_b") :].isdigit()]
    return sorted(found, key=lambda c: int(c[len("throughput_speedup_b") :]))


def _get(row, column: str) -> float:
    """A summary row's value, NaN where the column is missing (runs measured before it existed)."""
    return getattr(row, column, math.nan)


def _latency_long(summary: pd.DataFrame, paper: pd.DataFrame, sources: dict) -> pd.DataFrame:
    """One row per (task, method, setting) with FLOPs reduction, measured speedups and the
    paper's reported speedup for the same task and method where it has one."""
    reported = paper[paper["latency_speedup"].notna()].drop_duplicates(["task", "method"], keep="first")
    rows = []
    for r in summary.itertuples(index=False):
        ref = reported[(reported["task"] == r.task) & (reported["method"] == r.method)]
        ref = ref.iloc[0] if len(ref) else None
        rows.append(
            {
                "task": r.task,
                "method": r.method,
                "setting": r.setting,
                "seeds": r.seeds,
                "flops_reduction": r.flops_reduction,
                "speedup": r.speedup,
                "speedup_std": r.speedup_std,
                "speedup_ideal": _get(r, "speedup_ideal"),
                "pruned_vs_ideal": _get(r, "pruned_vs_ideal"),
                **{column: getattr(r, column) for column in _throughput_columns(summary)},
                "latency_ms": r.latency_ms,
                "latency_iqr_ms": r.latency_iqr_ms,
                "dense_latency_ms": r.dense_latency_ms,
                "ideal_latency_ms": _get(r, "ideal_latency_ms"),
                "paper_source": _source_label(sources, ref["source"]) if ref is not None else "",
                "paper_speedup": ref["latency_speedup"] if ref is not None else math.nan,
                "paper_flops_reduction": ref["flops_reduction"] if ref is not None else math.nan,
            }
        )
    return pd.DataFrame(rows)


def _latency_wide(long: pd.DataFrame, tex: bool) -> pd.DataFrame:
    throughput = _throughput_columns(long)
    out = []
    for r in long.itertuples(index=False):
        speedup = _times(r.speedup, tex) + (
            "" if math.isnan(r.speedup_std) else (f" $\\pm$ {r.speedup_std:.2f}" if tex else f" ± {r.speedup_std:.2f}")
        )
        paper = "–"
        if not math.isnan(r.paper_speedup):
            at = "" if math.isnan(r.paper_flops_reduction) else f" at {_times(r.paper_flops_reduction, tex, 1)} FLOPs reduction"
            paper = f"{_times(r.paper_speedup, tex)}{at}, {r.paper_source}"
        out.append(
            {
                "Task": TASK_LABELS.get(r.task, r.task),
                "Method": method_label(r.method),
                "Setting": r.setting,
                "FLOPs reduction": _times(r.flops_reduction, tex),
                "Measured speedup": speedup,
                "Ideal speedup": _times(r.speedup_ideal, tex),
                "Pruned / ideal": _num(r.pruned_vs_ideal, 2),
                "Throughput speedup": ", ".join(f"b{c[len('throughput_speedup_b') :]} {_times(getattr(r, c), tex)}" for c in throughput) or "–",
                "Latency ms (IQR)": f"{_num(r.latency_ms, 2)} ({_num(r.latency_iqr_ms, 2)})",
                "Dense ms": _num(r.dense_latency_ms, 2),
                "Paper speedup": paper,
            }
        )
    frame = pd.DataFrame(out)
    if tex and len(frame):
        for column in ("Method", "Setting", "Paper speedup"):
            frame[column] = frame[column].map(lambda s: _tex_escape(s) if "$" not in s else s.replace("_", r"\_"))
    return frame


def _model_note(paper: pd.DataFrame, model: str | None) -> str:
    """Which checkpoint ours and the shown paper rows are, and when Δ is given."""
    papers = "; ".join(sorted(set(paper["model"]))) or "none"
    return (
        f"Ours: {model or 'the configured model'}, dev split(s). Paper rows: {papers}; the split in brackets. "
        f"Δ is given only where the paper's checkpoint is ours and its split is dev."
    )


def _latency_note(summary: pd.DataFrame) -> str:
    """How latency was measured, for the notes under tables."""
    return (
        f"Latency: batch 1, median per example, {int(summary['threads'].iloc[0])} pinned thread(s) on {summary['cpu'].iloc[0]}; "
        f"speedups are ratios of medians measured interleaved in one process with the dense reference, the stock "
        f"Hugging Face model with SDPA."
    )


def _score_note(table: str) -> str:
    if table == "squad":
        return (
            "Cells: dev EM and F1 (x100; mean ± std over seeds where several ran) with Δ = ours − the paper's number for "
            "the same task, method and metric; FLOPs reduction: dense / pruned FLOPs at real lengths."
        )
    return (
        "Cells: dev score (x100; mean ± std over seeds where several ran) with (FLOPs reduction; Δ = ours − the "
        "paper's number for the same task, method and metric). Avg.: mean over the table's tasks (a count when some are "
        "missing; – alone: not run, or undefined for our run, as results.md says). †: the source divides by another dense baseline than ours (e.g. a fixed padded length; "
        "config/paper_results.yaml), so that reduction is not comparable with ours."
    )


def build_tables(results_csv: str | Path, paper_yaml: str | Path | None, table: str, model: str | None = None) -> dict[str, pd.DataFrame | str]:
    """Build ``table`` (``glue``, ``squad`` or ``latency``) from ``results.csv``.

    Returns ``{"long": DataFrame (the CSV), "md": str, "tex": str}``. Raises ``ValueError`` if
    the results hold no run the table covers.
    """
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; expected one of {TABLES}")
    summary = summarise(pd.read_csv(results_csv))
    paper, sources = load_paper_results(paper_yaml) if paper_yaml else (empty_paper_results(), {})
    if table == "latency":
        long = _latency_long(summary, paper, sources)
        if not len(long):
            raise ValueError(f"{results_csv}: no runs for the latency table")
        wide_md, wide_tex = _latency_wide(long, tex=False), _latency_wide(long, tex=True)
        note_md = (
            f"{_latency_note(summary)} Ideal: the same SDPA layers run at the pruned model's per-layer lengths with no "
            f"scoring and no gather (the speedup without pruning overhead); pruned / ideal = ideal ms / pruned ms (1 = no "
            f"overhead). Throughput speedup (bN: batches of N): examples/s of the pruned over the dense model on the same "
            f"sample in ragged batches, each padded to its longest row (a batch runs at its longest row's kept length in "
            f"every layer). "
            f"Paper speedups come from other hardware."
        )
        shown = paper[paper["latency_speedup"].notna() & paper["task"].isin(summary["task"])]
    else:
        wanted = [t for t in TASK_LABELS if is_qa_task(t) == (table == "squad")]
        tasks = [t for t in wanted if t in set(summary["task"])]
        if not tasks:
            raise ValueError(f"{results_csv}: no {table} tasks among the runs ({sorted(set(summary['task']))})")
        metrics = _column_metrics(summary, paper, tasks)
        long = _score_grid(summary, paper, sources, tasks, metrics, model)
        if table == "squad":  # both official figures: EM beside F1
            other = {t: ("exact_match" if m == "f1" else "f1") for t, m in metrics.items()}
            extra = _score_grid(summary, paper, sources, tasks, other, model)
            long = pd.concat([long, extra], ignore_index=True)
            long = long.sort_values(
                ["method", "source", "setting", "task", "metric"], key=lambda c: c.map(method_rank) if c.name == "method" else c, kind="stable"
            )
            wide_md = _squad_wide(long, tasks, tex=False)
            wide_tex = _squad_wide(long, tasks, tex=True)
        else:
            wide_md = _wide(long, tasks, metrics, tex=False)
            wide_tex = _wide(long, tasks, metrics, tex=True)
        note_md = _score_note(table)
        shown = paper[paper["task"].isin(tasks)]
    note = f"{note_md} {_model_note(shown, model)}"
    md = wide_md.to_markdown(index=False, disable_numparse=True) + "\n\n" + note + "\n"
    tex = wide_tex.to_latex(index=False, escape=False) + "% " + note.replace("\n", " ") + "\n"
    return {"long": long, "md": md, "tex": tex}


def _squad_wide(long: pd.DataFrame, tasks: Sequence[str], tex: bool) -> pd.DataFrame:
    """Per task an EM and an F1 column (with Δ) and the FLOPs reduction."""

    def cells(group: pd.DataFrame) -> dict[str, str]:
        line = {}
        for task in tasks:
            label = TASK_LABELS[task]
            for metric, name in (("exact_match", "EM"), ("f1", "F1")):
                r = group[(group["task"] == task) & (group["metric"] == metric)]
                line[f"{label} {name}"] = (
                    "–" if not len(r) else _cell(r["score"].iloc[0], r["score_std"].iloc[0], math.nan, r["score_diff"].iloc[0], tex)
                )
            reductions = group.loc[group["task"] == task, "flops_reduction"]
            line[f"{label} FLOPs red."] = _times(reductions.iloc[0], tex, 1) if len(reductions) else "–"
        return line

    return _by_row(long, tex, cells)


def write_table(
    results_csv: str | Path,
    paper_yaml: str | Path | None,
    table: str,
    out_csv: str | Path,
    out_md: str | Path,
    out_tex: str | Path,
    model: str | None = None,
) -> None:
    """Build ``table`` and write its CSV (long form), Markdown and LaTeX renderings atomically."""
    built = build_tables(results_csv, paper_yaml, table, model)
    atomic_write_text(out_csv, built["long"].to_csv(index=False, float_format="%.6g"))
    atomic_write_text(out_md, built["md"])
    atomic_write_text(out_tex, built["tex"])
    log.info("wrote the %s table: %s, %s, %s", table, out_csv, out_md, out_tex)


def _undefined_notes(frame: pd.DataFrame) -> list[str]:
    """A footnote line per run with undefined metrics (none: no lines)."""
    if UNDEFINED_COLUMN not in frame:
        return []
    runs = frame[frame[UNDEFINED_COLUMN].fillna("").astype(str).str.len() > 0]
    if not len(runs):
        return []
    lines = ["", f"{UNDEFINED_NOTE}:"]
    for r in runs.itertuples(index=False):
        lines.append(f"- {r.task} {method_label(r.method)} {r.setting} seed {r.seed}: {getattr(r, UNDEFINED_COLUMN)}")
    return lines


def markdown_table(results_csv: str | Path, out_md: str | Path) -> str:
    """Every run's row (mean over seeds where several ran): score, FLOPs reduction, measured and
    ideal speedups, pruned / ideal, latencies."""
    frame = pd.read_csv(results_csv)
    summary = summarise(frame)
    lines = [
        "| task | method | setting | metric | score | FLOPs reduction | latency speedup | ideal speedup | pruned / ideal | latency (ms) | dense latency (ms) | seeds |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary.itertuples():
        lines.append(
            f"| {r.task} | {method_label(r.method)} | {r.setting} | {r.metric} | {_pm(r.score, r.score_std, False) if r.seeds > 1 else _num(r.score, 2)} | "
            f"{r.flops_reduction:.2f}x | {r.speedup:.2f}x | {_times(_get(r, 'speedup_ideal'), False)} | {_num(_get(r, 'pruned_vs_ideal'), 2)} | "
            f"{r.latency_ms:.2f} | {r.dense_latency_ms:.2f} | {r.seeds} |"
        )
    lines += ["", f"Score: primary dev metric x100. FLOPs reduction: dense / pruned FLOPs at real lengths. {_latency_note(summary)}"]
    lines += _undefined_notes(frame)
    text = "\n".join(lines) + "\n"
    atomic_write_text(out_md, text)
    return text
