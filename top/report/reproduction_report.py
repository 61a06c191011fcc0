"""The five-task reproduction's report, built from the committed task summaries alone.

:func:`render` reads every summary (:func:`top.report.reproduction.load_summaries`) and writes
the Markdown report (:func:`markdown`: the comparison at 2x and 4x FLOPs reduction of
:mod:`top.report.equal_flops`, the teachers against their expected level, every setting's mean
over seeds, the ablations beside the settings they ablate, where each summary came from) and the
figure (:func:`top.report.plots.reproduction_figure`). Tasks not finished yet appear apart, as
provisional, from the runs recorded so far (:class:`top.report.reproduction.Provisional`). The
report is written through a temporary name (:mod:`top.files`). The comparison and the figure also
go into a marked block of the README (:func:`readme_block`), so that its results table is built
by the same command from the same files.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from top.config import is_ablation as is_ablation_setting
from top.files import atomic_write_text, replace_block
from top.report.equal_flops import TARGETS, readouts, verdicts
from top.report.labels import METRIC_LABELS, TASK_LABELS, method_label
from top.report.reproduction import Provisional, Summaries, load_summaries

log = logging.getLogger(__name__)


DEFAULT_COMMAND = "python benchmarks/reproduction.py --render"
"""The command that builds the GLUE reproduction's report (``config/reproduction.yaml``)."""


def _fmt(value: Any, digits: int = 1, suffix: str = "", sign: str = "-") -> str:
    """``value`` at ``digits`` decimals; ``sign="+"`` writes the sign of a difference (+0.5)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:{sign}.{digits}f}{suffix}"


def _mean_std(values: pd.Series, digits: int = 1, suffix: str = "", sign: str = "-") -> str:
    values = values.dropna()
    if values.empty:
        return "–"
    if len(values) == 1:
        return _fmt(float(values.iloc[0]), digits, suffix, sign)
    return f"{values.mean():{sign}.{digits}f}{suffix} ± {values.std(ddof=1):.{digits}f}"


def _task_label(task: str) -> str:
    return TASK_LABELS.get(task, task)


def comparison_table(frame: pd.DataFrame, targets: Sequence[float] = TARGETS, seeds: int | None = None) -> list[str]:
    """The equal-FLOPs table: per task and target, each method's readout and the verdict;
    ``seeds``: the seeds a task still running asks for (:func:`top.report.equal_flops.verdict`)."""
    found = readouts(frame, targets)
    lines = [
        "| task | FLOPs reduction | ToP | Top-k | LTP | PoWER-BERT | verdict |",
        "|---|---:|---|---|---|---|---|",
    ]
    by_key = {(r.task, r.method, r.target): r for r in found}
    for v in verdicts(found, targets, seeds):
        cells = []
        for method in ("top", "topk", "ltp", "power_bert"):
            readout = by_key.get((v.task, method, v.target))
            cells.append("not run" if readout is None else readout.text())
        best = f" (best baseline: {method_label(v.best.method)})" if v.best is not None and v.top is not None and v.top.available else ""
        lines.append(f"| {_task_label(v.task)} | {v.target:g}x | {' | '.join(cells)} | **{v.verdict}**{best} |")
    return lines


def teacher_table(summaries: Summaries) -> list[str]:
    lines = ["| task | teacher (dense) | expected level | source of the expected level |", "|---|---:|---:|---|"]
    for task in summaries.tasks:
        rows = summaries.frame[(summaries.frame["task"] == task) & (summaries.frame["method"] == "dense")]
        metric = rows["metric"].iloc[0] if len(rows) else "–"
        expected = summaries.meta[task].get("expected_teacher") or {}
        level = f"{METRIC_LABELS.get(expected['metric'], expected['metric'])} {expected['score']:.1f}" if expected else "–"
        seeds = len(rows)
        ours = f"{METRIC_LABELS.get(metric, metric)} {_mean_std(rows['score'])} ({seeds} seed{'s' if seeds != 1 else ''})"
        lines.append(f"| {_task_label(task)} | {ours} | {level} | {expected.get('source', '–')} |")
    return lines


def runs_table(frame: pd.DataFrame) -> list[str]:
    """One row per (task, method, setting): mean ± std over seeds of the score, the FLOPs
    reduction, the optimiser steps, the kept epochs and the latency speedup."""
    lines = [
        "| task | method | setting | seeds | score | FLOPs reduction | train steps | kept epoch(s) | latency speedup |",
        "|---|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for (task, method, setting), rows in frame.groupby(["task", "method", "setting"], sort=False):
        epochs = ", ".join(str(int(e)) for e in rows["selected_epoch"].dropna()) or "–"
        steps = rows["train_steps"].dropna()
        lines.append(
            f"| {_task_label(task)} | {method_label(method)} | {setting} | {len(rows)} | {_mean_std(rows['score'])} | "
            f"{_mean_std(rows['flops_reduction'], 2, 'x')} | {int(steps.iloc[0]) if len(steps) else '–'} | {epochs} | "
            f"{_mean_std(rows['speedup'], 2, 'x')} |"
        )
    return lines


def provenance_table(summaries: Summaries) -> list[str]:
    """Per task: when its runs ran (the ledger's first and last date; else the summary's date),
    the configuration, the overrides, and the machines that ran them (else the summarising one)."""
    lines = ["| task | runs | config (SHA-256) | overrides | machine | torch | transformers |", "|---|---|---|---|---|---|---|"]
    for task in summaries.tasks:
        meta = summaries.meta[task]
        machine = meta.get("machine") or {}
        gpus = ", ".join(machine.get("gpus") or []) or "no GPU"
        where = f"{machine.get('cpu_model', '?')}, {machine.get('cores_available', '?')} cores, {gpus}"
        if meta.get("run_machines"):
            where = "; ".join(meta["run_machines"])
        dates = meta.get("run_dates") or [meta["date"]]
        when = dates[0] if len(set(dates)) == 1 else f"{dates[0]} to {dates[-1]}"
        overrides = " ".join(f"`{o}`" for o in meta.get("overrides") or []) or "–"
        lines.append(
            f"| {_task_label(task)} | {when} | `{meta['config']}` ({meta['config_sha256'][:12]}) | {overrides} | {where} | "
            f"{machine.get('torch_version', '?')} | {machine.get('transformers_version', '?')} |"
        )
    return lines


def is_ablation(frame: pd.DataFrame, ablations: Mapping[str, Mapping[str, Any]]) -> pd.Series:
    """Per row of ``frame``: whether its (method, setting) is an ablation of its task
    (``ablations``: task -> the configuration's ``ablations``)."""
    return pd.Series(
        [
            is_ablation_setting(ablations.get(task), method, setting)
            for task, method, setting in zip(frame["task"], frame["method"], frame["setting"])
        ],
        index=frame.index,
        dtype=bool,
    )


def ablation_table(frame: pd.DataFrame, ablations: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Each ablation beside the setting it ablates, both over the seeds both ran: each setting's
    score and FLOPs reduction (mean ± std over those seeds) and the score difference paired by
    seed. The ablated setting's seeds that have no ablation run are left out of its columns, so
    that its score, the ablation's and their paired difference read over the same seeds."""
    lines = [
        "| task | ablation | change | seeds | score | FLOPs reduction | of | its score | its FLOPs reduction | score difference (paired) |",
        "|---|---|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for task, by_method in ablations.items():
        for method, settings in by_method.items():
            for setting, ablation in settings.items():
                rows = frame[(frame["task"] == task) & (frame["method"] == method) & (frame["setting"] == setting)]
                base = frame[(frame["task"] == task) & (frame["method"] == method) & (frame["setting"] == ablation["of"])]
                both = set(rows["seed"]) & set(base["seed"])
                rows, base = rows[rows["seed"].isin(both)], base[base["seed"].isin(both)]
                if rows.empty:
                    continue
                paired = rows.set_index("seed")["score"] - base.set_index("seed")["score"]
                lines.append(
                    f"| {_task_label(task)} | {method_label(method)} {setting} | {ablation['change']} | {len(rows)} | "
                    f"{_mean_std(rows['score'])} | {_mean_std(rows['flops_reduction'], 2, 'x')} | {ablation['of']} | "
                    f"{_mean_std(base['score'])} | {_mean_std(base['flops_reduction'], 2, 'x')} | {_mean_std(paired, sign='+')} |"
                )
    return lines


def ablation_lines(frame: pd.DataFrame, ablations: Mapping[str, Mapping[str, Any]], heading: str) -> list[str]:
    """A section with :func:`ablation_table`, or nothing when ``frame`` has no ablation row."""
    if not is_ablation(frame, ablations).any():
        return []
    return [
        heading,
        "",
        "Settings that change one thing of another setting of the same method (the configuration's `ablations`); they "
        "are left out of the method's curve, the comparison at equal FLOPs and the figure. Both settings are read over "
        "the seeds both ran, and the difference is paired by seed.",
        "",
        *ablation_table(frame, ablations),
        "",
    ]


def complete_curves(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``frame`` whose (task, method, seed) has as many settings as the most complete
    seed of that task and method: a seed part-way through its runs would read "cannot reach" off
    a curve it has not finished."""
    settings = frame.groupby(["task", "method", "seed"])["setting"].transform("nunique")
    most = settings.groupby([frame["task"], frame["method"]]).transform("max")
    return frame[settings == most]


def finished_curves(summaries: Summaries) -> pd.DataFrame:
    """The finished tasks' rows on the methods' curves: every row but the ablations'."""
    return summaries.frame[~is_ablation(summaries.frame, summaries.ablations)]


def provisional_curves(task: str, part: Provisional) -> pd.DataFrame:
    """An unfinished task's recorded rows on the methods' curves: every row but the ablations'."""
    return part.frame[~is_ablation(part.frame, {task: part.ablations})]


def provisional_section(provisional: Mapping[str, Provisional], figure: str | None = None) -> list[str]:
    """The runs recorded so far of tasks not finished: the same comparison and table as a
    finished task's, marked provisional. A seed's curve has only the settings recorded so far,
    and fewer seeds give no spread, so these are progress, not results."""
    if not provisional:
        return []
    lines = [
        "## Provisional: tasks still running",
        "",
        "Runs recorded so far in the run ledgers (current settings and teacher only). The comparison reads only the "
        "seeds whose curve has as many settings as the method's most complete seed (the table below lists every "
        "recorded run). A verdict waits for every seed the configuration asks for: until then it reads undetermined, with "
        "what the rule gives so far, and with one seed there is no spread. These rows show progress, not a verdict.",
        "",
    ]
    for task, part in provisional.items():
        main = provisional_curves(task, part)
        lines += [
            f"### {_task_label(task)} ({part.note()})",
            "",
            *comparison_table(complete_curves(main), seeds=part.seeds),
            "",
            *runs_table(main),
            "",
        ]
        if part.cpus:
            where = "; ".join(f"seed {seed} on {', '.join(models)}" for seed, models in part.cpus.items())
            lines += [f"Machines: {where}. Each latency speedup is its run's own, pruned against dense on that machine.", ""]
        lines += ablation_lines(part.frame, {task: part.ablations}, f"#### {_task_label(task)}: ablations")
    if figure:
        lines += [f"![dev score against FLOPs reduction, one panel per task (provisional)]({figure})", ""]
    return lines


def readme_block(
    summaries: Summaries,
    provisional: Mapping[str, Provisional],
    report: str,
    figure: str | None,
    command: str = DEFAULT_COMMAND,
) -> str:
    """The README's results block: the comparison at equal FLOPs of the finished tasks, then
    each unfinished task's from its runs so far (marked provisional), and the figure; ``report``
    and ``figure`` are paths relative to the README."""
    lines = [f"<!-- generated by {command} from the committed summaries and run ledgers; do not edit by hand -->", ""]
    if summaries.tasks:
        finished = ", ".join(_task_label(task) for task in summaries.tasks)
        lines += [f"**Finished: {finished}**", "", *comparison_table(finished_curves(summaries)), ""]
    for task, part in provisional.items():
        lines += [
            f"**{_task_label(task)}, {part.note()}**",
            "",
            *comparison_table(complete_curves(provisional_curves(task, part)), seeds=part.seeds),
            "",
        ]
    if not summaries.tasks and not provisional:
        lines += ["No run has been recorded yet.", ""]
    if figure:
        lines += [f"![dev score against FLOPs reduction, one panel per task]({figure})", ""]
    lines += [f"Every run, the teachers, the ablations and where each row came from: [{report}]({report}).", ""]
    return "\n".join(lines)


def markdown(
    summaries: Summaries,
    figure: str | None,
    pending: Sequence[str] = (),
    provisional: Mapping[str, Provisional] | None = None,
    not_reproducible: Mapping[str, str] | None = None,
    command: str = DEFAULT_COMMAND,
    precision: Mapping[str, str] | None = None,
) -> str:
    """The report: comparison at equal FLOPs, teachers, every setting, the figure, provenance.
    ``figure``: the figure's path relative to the report (None: no figure); ``pending``: tasks
    of the reproduction without a summary yet; ``provisional``: those of them with recorded runs,
    shown apart (:func:`provisional_section`); ``not_reproducible``: task -> why it does not
    run (the configuration's ``not_reproducible``); ``command``: the command that builds the
    report again; ``precision``: what trained at which precision (e.g. ``{"teachers": "fp32",
    "students": "bf16"}``), named in the header."""
    lines = [
        f"# Reproduction: {', '.join(_task_label(task) for task in [*summaries.tasks, *pending])}",
        "",
        f"Generated by `{command}` from the task summaries `<task>.csv` and "
        "`<task>.json` (and, for tasks not finished, the run ledgers `runs/<task>.csv`) only; do not edit by hand. "
        "The README says how the runs are made.",
        "",
    ]
    if precision:
        trained = ", ".join(f"{who} {dtype}" for who, dtype in precision.items())
        lines += [f"Training precision: {trained}; evaluation, FLOPs and latency in fp32.", ""]
    if pending:
        lines += [f"Not finished yet: {', '.join(_task_label(t) for t in pending)}. Their rows appear here as each task finishes.", ""]
    if not_reproducible:
        lines += ["## Not reproducible here", ""]
        lines += [f"- **{_task_label(task)}**: {reason.strip()}" for task, reason in not_reproducible.items()]
        lines += [""]
    lines += provisional_section(provisional or {}, figure if not summaries.tasks else None)
    if not summaries.tasks:
        lines += ["No task has finished yet: there are no results to show.", ""]
        return "\n".join(lines)
    frame = finished_curves(summaries)
    lines += [
        "## ToP against the baselines at equal FLOPs",
        "",
        "Each method's dev score at 2x and 4x FLOPs reduction, read off its own score-vs-FLOPs curve (its settings' points "
        "for one seed), interpolated linearly in log(FLOPs reduction) between the two nearest points that bracket the "
        "target, never extrapolated (`top/report/equal_flops.py`); then mean ± sample std [min–max] over seeds. Verdict: "
        "**ahead** when ToP's mean − std exceeds the best baseline's mean + std, **behind** when ToP's mean + std is below "
        "the best baseline's mean − std, **within spread** otherwise.",
        "",
        *comparison_table(frame),
        "",
        "## Teachers",
        "",
        "The dense row is the fine-tuned teacher every method starts from. The expected level is a published dev score "
        "of a comparable model fully fine-tuned on the task (the configuration's `expected_teacher`).",
        "",
        *teacher_table(summaries),
        "",
        "## Every setting (mean ± std over seeds)",
        "",
        "Scores are dev scores (x100) of each run's kept checkpoint (best dev epoch within the FLOPs budget); train steps "
        "are the optimiser steps the configuration gives the run over all its stages (dense: the teacher's fine-tune); "
        "latency speedup: batch 1 on one pinned CPU thread, over the stock dense model.",
        "",
        *runs_table(frame),
        "",
    ]
    if figure:
        lines += [f"![dev score against FLOPs reduction, one panel per task]({figure})", ""]
    lines += ablation_lines(summaries.frame, summaries.ablations, "## Ablations")
    lines += ["## Where each summary came from", "", *provenance_table(summaries), ""]
    return "\n".join(lines)


def render(
    folder: str | Path,
    out_markdown: str | Path,
    out_figure: str | Path,
    tasks: Sequence[str] = (),
    provisional: Mapping[str, Provisional] | None = None,
    not_reproducible: Mapping[str, str] | None = None,
    command: str = DEFAULT_COMMAND,
    precision: Mapping[str, str] | None = None,
    readme: str | Path | None = None,
) -> Summaries:
    """Build the report and the figure from the summaries in ``folder``; ``tasks``: every task
    of the reproduction (those without a summary are listed as not finished); ``provisional``:
    the recorded runs of unfinished tasks, shown apart and drawn with their panel marked (a
    seed part-way through a method's curve is left out of the figure, as of the comparison);
    ``not_reproducible``: task -> why it does not run, listed with the reason; ``command``: the
    command that builds the report again and ``precision`` what trained at which precision (both
    named in its header); ``readme``: a file whose block named after the report (``<!--
    reproduction:start -->`` ... ``<!-- reproduction:end -->`` for ``reproduction.md``) gets
    :func:`readme_block`. Without any summary or recorded run no figure is drawn (and a stale
    one is removed)."""
    from top.report.plots import reproduction_figure

    summaries = load_summaries(folder)
    out_markdown, out_figure = Path(out_markdown), Path(out_figure)
    pending = [task for task in tasks if task not in summaries.meta]
    provisional = {task: part for task, part in (provisional or {}).items() if task in pending and len(part.frame)}
    figure = None
    drawn = [*summaries.tasks, *provisional]
    if drawn:
        curves = [finished_curves(summaries), *(provisional_curves(task, part) for task, part in provisional.items())]
        frame = complete_curves(pd.concat(curves, ignore_index=True))  # as the comparison reads them
        expected = {task: meta.get("expected_teacher") for task, meta in summaries.meta.items()}
        expected |= {task: part.expected_teacher for task, part in provisional.items()}
        notes = {task: part.note() for task, part in provisional.items()}
        reproduction_figure(frame, [out_figure], expected, tasks=drawn, notes=notes)
        figure = os.path.relpath(out_figure, out_markdown.parent)
    else:
        out_figure.unlink(missing_ok=True)
    atomic_write_text(out_markdown, markdown(summaries, figure, pending, provisional, not_reproducible, command, precision))
    log.info("wrote %s", out_markdown)
    if readme is not None:
        readme = Path(readme)
        shown = {path: Path(os.path.relpath(path, readme.parent)).as_posix() for path in (out_markdown, out_figure)}
        block = readme_block(summaries, provisional, shown[out_markdown], shown[out_figure] if figure else None, command)
        replace_block(readme, out_markdown.stem, block)
        log.info("wrote the %s block of %s", out_markdown.stem, readme)
    return summaries
