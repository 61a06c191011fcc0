"""Training budgets: how many optimiser steps each method setting takes on a task.

A comparison of pruning methods at equal FLOPs is fair only if every method had the same
training budget. This module counts it from the configuration alone, as the training loop
will run it (:func:`top.train.run_stages`): a stage of ``e`` epochs over ``n`` training rows in
batches of ``b`` takes :func:`stage_steps` ``= max(1, ceil(e * ceil(n / b)))`` optimiser steps
(the last batch of an epoch may be short; a fractional epoch stops mid-way), and a run's
budget is the sum over the method's stages (:meth:`~top.pruning.base.PruningMethod.stages`:
top-k ``finetune``; LTP ``soft`` + ``hard``; PoWER-BERT ``search`` + ``retrain``; ToP
``prune`` + ``finetune``), each stage with the run's resolved ``train.batch_size`` and
``train.train_limit`` (:func:`top.config.resolve_run`). The teacher's fine-tune is shared by
every method of a task and is not part of a method's budget; ``dense`` trains nothing more.

:func:`check_budgets` refuses a task whose method settings' totals differ by more than a
tolerance (``budget_tolerance`` in the configuration; :mod:`top.preflight` runs it at workflow
start with the training sets' row counts). The training loop takes its stage lengths from
:func:`stage_steps`, so both count the same way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from top.config import TEACHER_METHOD, resolve_run, task_seeds, task_settings_of, teacher_settings


def stage_steps(epochs: float, steps_per_epoch: int) -> int:
    """Optimiser steps of a stage of ``epochs`` (possibly fractional) passes over data cut into
    ``steps_per_epoch`` batches; at least one."""
    return max(1, math.ceil(epochs * steps_per_epoch))


def batches_per_epoch(rows: int, batch_size: int) -> int:
    """Batches of one pass over ``rows`` examples (the last one may be short)."""
    if rows < 1 or batch_size < 1:
        raise ValueError(f"rows and batch_size must be positive, got rows={rows}, batch_size={batch_size}")
    return math.ceil(rows / batch_size)


@dataclass(frozen=True)
class StageBudget:
    """One training stage's share of a run's budget."""

    name: str
    epochs: float
    batch_size: int
    steps: int


@dataclass(frozen=True)
class RunBudget:
    """The optimiser steps of one (task, method, setting): per stage and in total.

    Attributes:
        rows: training examples each epoch goes over (the task's training rows, or
            ``train.train_limit`` if smaller).
    """

    task: str
    method: str
    setting: str
    rows: int
    stages: tuple[StageBudget, ...]

    @property
    def total_steps(self) -> int:
        return sum(stage.steps for stage in self.stages)

    @property
    def examples(self) -> float:
        """Training examples processed over all stages (steps x batch size, the last short
        batch of each epoch counted whole)."""
        return float(sum(stage.steps * stage.batch_size for stage in self.stages))

    def describe(self) -> str:
        """e.g. ``soft 7 epochs + hard 3 epochs = 1150 steps (batch 32, 3668 rows)``."""
        if not self.stages:
            return "no training stage = 0 steps"
        parts = " + ".join(f"{s.name} {s.epochs:g} epochs" for s in self.stages)
        sizes = sorted({s.batch_size for s in self.stages})
        return f"{parts} = {self.total_steps} steps (batch {'/'.join(map(str, sizes))}, {self.rows} rows)"


def run_budget(cfg: Mapping[str, Any], task: str, method: str, setting: str, train_rows: int, model_config) -> RunBudget:
    """The budget of one method setting on ``task``, whose training split has ``train_rows``
    rows. ``model_config`` (the model's ``transformers`` config) builds the method, whose
    :meth:`~top.pruning.base.PruningMethod.stages` say which stages run for how many epochs."""
    from top.pruning.registry import build_method

    run = resolve_run(cfg, task, method, setting, task_seeds(cfg, task)[0])
    limit = run["train"].get("train_limit")
    rows = min(train_rows, limit) if limit else train_rows
    batch_size = int(run["train"]["batch_size"])
    per_epoch = batches_per_epoch(rows, batch_size)
    built = build_method(method, model_config, run["method_settings"])
    stages = tuple(StageBudget(stage.name, float(stage.epochs), batch_size, stage_steps(stage.epochs, per_epoch)) for stage in built.stages())
    return RunBudget(task, method, setting, rows, stages)


def teacher_budget(cfg: Mapping[str, Any], task: str, train_rows: int) -> RunBudget:
    """The teacher fine-tune's budget on ``task`` (one ``finetune`` stage of
    ``teacher.epochs``), recorded as the ``dense`` row's; not part of the methods' comparison."""
    settings = teacher_settings(cfg, task)
    limit = settings.get("train_limit")
    rows = min(train_rows, limit) if limit else train_rows
    batch_size = int(settings["batch_size"])
    steps = stage_steps(float(settings["epochs"]), batches_per_epoch(rows, batch_size))
    return RunBudget(task, TEACHER_METHOD, "teacher", rows, (StageBudget("finetune", float(settings["epochs"]), batch_size, steps),))


def task_budgets(cfg: Mapping[str, Any], task: str, train_rows: int, model_config) -> list[RunBudget]:
    """The budget of every method setting ``task`` runs (:func:`top.config.task_settings_of`;
    ``dense`` left out: it is the teacher and trains nothing after it)."""
    return [
        run_budget(cfg, task, method, setting, train_rows, model_config)
        for method in cfg["methods"]
        if method != TEACHER_METHOD
        for setting in task_settings_of(cfg, task, method)
    ]


def scaled_steps(budget: RunBudget, scales: Mapping[tuple[str, str], float] | None = None) -> float:
    """``budget``'s total steps divided by its ``scales`` entry ((method, setting) -> the factor
    its steps are meant to have over the others', default 1)."""
    return budget.total_steps / (scales or {}).get((budget.method, budget.setting), 1.0)


def budget_spread(budgets: Sequence[RunBudget], scales: Mapping[tuple[str, str], float] | None = None) -> float:
    """(largest - smallest) / largest total steps, each scaled (:func:`scaled_steps`); 0 for
    fewer than two budgets."""
    totals = [scaled_steps(b, scales) for b in budgets]
    if len(totals) < 2 or max(totals) == 0:
        return 0.0
    return (max(totals) - min(totals)) / max(totals)


def check_budgets(budgets: Iterable[RunBudget], tolerance: float, scales: Mapping[tuple[str, str], float] | None = None) -> list[str]:
    """One problem per task whose method settings' total steps differ by more than
    ``tolerance`` (a fraction of the task's largest total). ``scales``: (method, setting) -> the
    factor its steps are meant to have over the others' (an ablation's ``budget_scale``; its
    steps are divided by it first). The message names the largest setting and every setting
    below ``(1 - tolerance)`` times it, with their stages."""
    scales = scales or {}

    def named(budget: RunBudget) -> str:
        scale = scales.get((budget.method, budget.setting), 1.0)
        return f"{budget.method}/{budget.setting}: {budget.describe()}" + (f" (budget_scale {scale:g})" if scale != 1.0 else "")

    by_task: dict[str, list[RunBudget]] = {}
    for budget in budgets:
        by_task.setdefault(budget.task, []).append(budget)
    problems = []
    for task, group in by_task.items():
        spread = budget_spread(group, scales)
        if spread <= tolerance:
            continue
        largest = max(group, key=lambda b: scaled_steps(b, scales))
        floor = (1 - tolerance) * scaled_steps(largest, scales)
        short = [b for b in group if scaled_steps(b, scales) < floor]
        lines = [f"task {task}: training budgets differ by {100 * spread:.1f}% (budget_tolerance {100 * tolerance:g}%); largest {named(largest)}"]
        lines += [f"  {named(b)}" for b in short]
        lines.append(
            "  give every method setting the same optimiser steps (epochs x ceil(rows / batch_size), summed over its stages), "
            "e.g. in task_settings.<task>.methods"
        )
        problems.append("\n".join(lines))
    return problems


def budget_table(budgets: Sequence[RunBudget]) -> str:
    """A Markdown table: task, method, setting, stages, rows, batch size, total steps."""
    lines = ["| task | method | setting | stages (epochs) | rows | batch | steps |", "|---|---|---|---|---:|---:|---:|"]
    for b in budgets:
        stages = " + ".join(f"{s.name} {s.epochs:g}" for s in b.stages) or "–"
        sizes = "/".join(str(size) for size in sorted({s.batch_size for s in b.stages})) or "–"
        lines.append(f"| {b.task} | {b.method} | {b.setting} | {stages} | {b.rows} | {sizes} | {b.total_steps} |")
    return "\n".join(lines) + "\n"


# ---- time estimate ------------------------------------------------------------------------


@dataclass(frozen=True)
class Throughput:
    """Training examples per second on some machine: ``dense`` for a plain fine-tune step (the
    teacher's), ``top_prune`` for a ToP pruning step; ``source`` says where they were measured."""

    dense: float
    top_prune: float
    source: str


def run_seconds(budget: RunBudget, throughput: Throughput) -> float:
    """Estimated training time of a run: ToP's ``prune`` stage at ``throughput.top_prune``,
    every other stage at ``throughput.dense`` (an approximation: top-k, LTP and PoWER-BERT steps
    cost about a fine-tune step, somewhat more for LTP's and PoWER-BERT's soft masks)."""
    seconds = 0.0
    for stage in budget.stages:
        rate = throughput.top_prune if (budget.method == "top" and stage.name == "prune") else throughput.dense
        seconds += stage.steps * stage.batch_size / rate
    return seconds


@dataclass(frozen=True)
class TaskEstimate:
    """Estimated hours of one task's runs: per seed (teacher, methods, per-run overhead) and over
    all its seeds."""

    task: str
    seeds: int
    runs_per_seed: int
    teacher_h: float
    methods_h: float
    overhead_h: float

    @property
    def per_seed_h(self) -> float:
        return self.teacher_h + self.methods_h + self.overhead_h

    @property
    def total_h(self) -> float:
        return self.seeds * self.per_seed_h


def estimate_task(
    cfg: Mapping[str, Any], task: str, train_rows: int, model_config, throughput: Throughput, overhead_s_per_run: float
) -> TaskEstimate:
    """Estimated time of ``task``'s runs from its budgets (:func:`run_seconds`; the teacher at
    ``throughput.dense``), plus ``overhead_s_per_run`` for each run's evaluation, FLOPs count and
    latency measurement (the ``dense`` row included)."""
    budgets = task_budgets(cfg, task, train_rows, model_config)
    teacher = teacher_budget(cfg, task, train_rows)
    runs = len(budgets) + 1
    return TaskEstimate(
        task=task,
        seeds=len(task_seeds(cfg, task)),
        runs_per_seed=runs,
        teacher_h=run_seconds(teacher, throughput) / 3600,
        methods_h=sum(run_seconds(b, throughput) for b in budgets) / 3600,
        overhead_h=runs * overhead_s_per_run / 3600,
    )
