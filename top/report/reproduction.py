"""The five-task reproduction's persistent results: a small summary per finished task, and the
report built from those summaries alone.

``benchmarks/reproduction.py`` runs the workflow on ``config/reproduction.yaml`` one task at a
time, and records each finished run in the task's run ledger (:mod:`top.report.ledger`). When
every run of a task is recorded, :func:`summary_frame` cuts the ledger's rows and
:func:`write_summary` writes two files meant to be committed:

- ``<task>.csv``: one row per run (method, setting, seed) with the columns of
  :data:`SUMMARY_COLUMNS`: the dev score (0-100), the FLOPs reduction, the kept epoch, the
  optimiser steps the configuration gives the run (:mod:`top.budget`; the ``dense`` row: the
  teacher's fine-tune) and the batch-1 latency speedups;
- ``<task>.json``: where the rows come from: the configuration file and its SHA-256, the
  command-line overrides, the ledger the rows came from, the training rows, the expected teacher
  level (the configuration's ``task_settings.<task>.expected_teacher``), the machine (CPU model,
  cores, GPUs), the torch and transformers versions, and the date.

:func:`load_summaries` reads them back, checked, for the report
(:mod:`top.report.reproduction_report`), which is built from those files only. Both writers go
through temporary names (:mod:`top.files`).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from top.files import atomic_write_text, json_text
from top.report.labels import TASK_LABELS, method_rank
from top.report.outputs import RUN_DIR

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = (
    "task",
    "method",
    "setting",
    "seed",
    "metric",
    "score",
    "flops_reduction",
    "target_flops_reduction",
    "selected_epoch",
    "selection_epochs",
    "selection_fallback",
    "train_steps",
    "speedup",
    "speedup_ideal",
)
"""Columns of a task's summary CSV."""
REQUIRED = ("task", "method", "setting", "seed", "metric", "flops_reduction")
"""Columns that must have a value in every row (``score`` may be empty where the metric is
undefined, e.g. a correlation of constant predictions)."""
META_KEYS = ("task", "config", "config_sha256", "overrides", "date", "machine")
"""Keys every sidecar JSON must have."""


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def machine_info() -> dict[str, Any]:
    """The machine and software of this process: CPU model, logical and physical cores, GPUs,
    torch, transformers and Python versions, platform (:func:`top.measure.latency.environment_info`)."""
    import torch

    from top.measure.latency import environment_info

    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    env = environment_info(cores, torch.get_num_threads())
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    keep = ("cpu_model", "logical_cpus", "physical_cores", "torch_version", "transformers_version", "python_version", "platform")
    return {**{key: env[key] for key in keep}, "cores_available": len(cores), "gpus": gpus}


# ---- summarise ------------------------------------------------------------------------------

RUN_KEY = ("method", "setting", "seed")
"""The columns that name one run of a task."""
Run = tuple[str, str, int]
"""(method, setting, seed) of one run of a task."""


def as_run(run: Sequence[Any]) -> Run:
    """``(method, setting, seed)`` typed as :data:`Run` (a seed read as float or numpy int, a
    setting read as a number, compare equal to the same run written by hand)."""
    method, setting, seed = run
    return str(method), str(setting), int(seed)


def run_keys(frame: pd.DataFrame) -> list[Run]:
    """Each row's (method, setting, seed), typed as :data:`Run` however the CSV read them."""
    return [as_run(run) for run in frame[list(RUN_KEY)].itertuples(index=False)]


def summary_frame(
    results: pd.DataFrame, task: str, steps: Mapping[tuple[str, str], int], expected_runs: Sequence[tuple[str, str, int]]
) -> pd.DataFrame:
    """``task``'s rows of a workflow ``results.csv`` (``results``), cut to
    :data:`SUMMARY_COLUMNS`, with ``train_steps`` from ``steps`` ((method, setting) -> optimiser
    steps).

    Raises:
        ValueError: if a column is missing or a run of ``expected_runs`` ((method, setting,
            seed) triples) has no row: the task is not finished.
    """
    missing = [c for c in REQUIRED + ("score",) if c not in results.columns]
    if missing:
        raise ValueError(f"results.csv lacks columns {missing}")
    rows = results[results["task"] == task].copy()
    have = set(run_keys(rows))
    absent = [f"{m}/{s}/seed{seed}" for m, s, seed in expected_runs if as_run((m, s, seed)) not in have]
    if absent:
        raise ValueError(f"task {task} is not finished: no result for {', '.join(absent)}")
    expected = {as_run(run) for run in expected_runs}
    rows = rows[[run in expected for run in run_keys(rows)]]
    rows["train_steps"] = [steps.get((m, s), math.nan) for m, s in zip(rows["method"], rows["setting"])]
    for column in SUMMARY_COLUMNS:
        if column not in rows.columns:
            rows[column] = math.nan
    rows = rows[list(SUMMARY_COLUMNS)]
    order = rows["method"].map(method_rank)
    return rows.assign(_order=order).sort_values(["_order", "setting", "seed"], kind="stable").drop(columns="_order").reset_index(drop=True)


def write_summary(out_dir: str | Path, task: str, frame: pd.DataFrame, meta: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``<task>.csv`` and ``<task>.json`` under ``out_dir``, each atomically; the JSON
    first, so a CSV never stands without its sidecar."""
    out_dir = Path(out_dir)
    missing = [key for key in META_KEYS if key not in meta]
    if missing:
        raise ValueError(f"summary metadata of {task} lacks {missing}")
    csv_path, json_path = out_dir / f"{task}.csv", out_dir / f"{task}.json"
    atomic_write_text(json_path, json_text(dict(meta), indent=2) + "\n")
    atomic_write_text(csv_path, frame.to_csv(index=False, float_format="%.6g"))
    log.info("wrote %s and %s (%d runs)", csv_path, json_path, len(frame))
    return csv_path, json_path


def is_summarised(out_dir: str | Path, task: str) -> bool:
    """Whether ``task`` has both its summary files under ``out_dir``."""
    return (Path(out_dir) / f"{task}.csv").is_file() and (Path(out_dir) / f"{task}.json").is_file()


def provenance(
    config_path: str | Path | Sequence[str | Path],
    overrides: Sequence[str] = (),
    *,
    machine: Mapping[str, Any] | None = None,
    date: str | None = None,
    root: str | Path | None = None,
) -> dict[str, Any]:
    """Where a committed result comes from: the configuration file (relative to ``root`` when
    inside it) and its SHA-256, the command-line overrides, the date (UTC) and the machine
    (:func:`machine_info` unless given). Several files (merged in order, as Snakemake merges
    several ``--configfile``) are named joined by `` + ``, with the SHA-256 of their SHA-256s."""
    paths = [Path(config_path)] if isinstance(config_path, (str, Path)) else [Path(p) for p in config_path]

    def shown(path: Path) -> str:
        if root is not None and path.resolve().is_relative_to(Path(root).resolve()):
            return str(path.resolve().relative_to(Path(root).resolve()))
        return str(path)

    hashes = [file_sha256(path) for path in paths]
    return {
        "config": " + ".join(shown(path) for path in paths),
        "config_sha256": hashes[0] if len(hashes) == 1 else hashlib.sha256("\n".join(hashes).encode()).hexdigest(),
        "overrides": list(overrides),
        "date": date or datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": dict(machine) if machine is not None else machine_info(),
    }


def summary_meta(
    task: str,
    config_path: str | Path | Sequence[str | Path],
    overrides: Sequence[str],
    *,
    train_rows: int | None,
    expected_teacher: Mapping[str, Any] | None,
    machine: Mapping[str, Any],
    runs_csv: str | Path,
    date: str | None = None,
    root: str | Path | None = None,
) -> dict[str, Any]:
    """The sidecar of a task's summary (module docstring): :func:`provenance` with the task,
    the file its rows came from (``runs_csv``: the run ledger), training rows and expected
    teacher level."""
    return {
        "task": task,
        **provenance(config_path, overrides, machine=machine, date=date, root=root),
        "runs_csv": str(runs_csv),
        "train_rows": train_rows,
        "expected_teacher": dict(expected_teacher) if expected_teacher else None,
    }


# ---- progress -------------------------------------------------------------------------------

RUN_OUTPUTS = ("eval/{run}/metrics.json", "flops/{run}/flops.json", "latency/{run}/latency.json")
"""A run is finished when the workflow has written these under its ``results_dir`` (``{run}``:
the run's :data:`top.report.outputs.RUN_DIR`)."""


def run_outputs(results_dir: str | Path, task: str, method: str, setting: str, seed: int) -> list[Path]:
    """The files (:data:`RUN_OUTPUTS`) that make one run finished, under ``results_dir``."""
    run = RUN_DIR.format(task=task, method=method, setting=setting, seed=seed)
    return [Path(results_dir) / pattern.format(run=run) for pattern in RUN_OUTPUTS]


def run_finished(results_dir: str | Path, task: str, method: str, setting: str, seed: int) -> bool:
    return all(path.is_file() for path in run_outputs(results_dir, task, method, setting, seed))


def progress_frame(
    results_dir: str | Path,
    task: str,
    expected_runs: Sequence[tuple[str, str, int]],
    states: Mapping[tuple[str, str, int], str] | None = None,
) -> pd.DataFrame:
    """How far ``task``'s runs have got: one row per (method, seed) with the settings
    ``recorded`` in the run ledger (``states``: :func:`top.report.ledger.run_states`), those
    ``finished`` under ``results_dir`` but not recorded, the ``expected`` ones, and a ``missing``
    column naming the settings still to run (with the ledger's reason where its row is stale).

    Args:
        results_dir: the task's workflow ``results_dir``.
        expected_runs: the (method, setting, seed) triples the configuration asks for.
    """
    states = states or {}
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for method, setting, seed in expected_runs:
        row = rows.setdefault(
            (method, int(seed)),
            {"task": task, "method": method, "seed": int(seed), "recorded": 0, "finished": 0, "expected": 0, "missing": []},
        )
        row["expected"] += 1
        state = states.get((method, setting, int(seed)), "missing")
        if state == "recorded":
            row["recorded"] += 1
        elif run_finished(results_dir, task, method, setting, seed):
            row["finished"] += 1
        else:
            row["missing"].append(setting if state == "missing" else f"{setting} ({state})")
    frame = pd.DataFrame(list(rows.values()), columns=["task", "method", "seed", "recorded", "finished", "expected", "missing"])
    frame["missing"] = [", ".join(settings) for settings in frame["missing"]]
    return frame


# ---- load ------------------------------------------------------------------------------------


@dataclass
class Summaries:
    """Every task summary of a folder: the rows of all tasks and each task's sidecar."""

    frame: pd.DataFrame
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def tasks(self) -> list[str]:
        return sorted(self.meta, key=lambda task: list(TASK_LABELS).index(task) if task in TASK_LABELS else len(TASK_LABELS))

    @property
    def ablations(self) -> dict[str, Mapping[str, Any]]:
        """task -> the configuration's ``ablations`` its summary was made with."""
        return {task: meta.get("ablations") or {} for task, meta in self.meta.items()}


@dataclass
class Provisional:
    """A task not finished yet: its runs recorded so far under the current configuration (rows
    as a summary's, :data:`SUMMARY_COLUMNS`) and how many runs the configuration asks for."""

    frame: pd.DataFrame
    expected: int
    expected_teacher: Mapping[str, Any] | None = None
    ablations: Mapping[str, Any] = field(default_factory=dict)
    cpus: Mapping[int, Sequence[str]] = field(default_factory=dict)
    """seed -> the CPU models its recorded runs were made on"""
    seeds: int | None = None
    """how many seeds the configuration asks for (the comparison's verdicts wait for them all)"""

    def note(self) -> str:
        seeds = sorted({int(seed) for seed in self.frame["seed"]})
        return f"provisional: {len(self.frame)} of {self.expected} runs, seed{'s' if len(seeds) != 1 else ''} {', '.join(map(str, seeds))}"


def load_summaries(folder: str | Path) -> Summaries:
    """Read every ``<task>.csv`` of ``folder`` with its ``<task>.json``.

    Raises:
        ValueError: naming the file (and row) of a summary without its sidecar, with missing
            columns or keys, with a row of another task or without a required value.
    """
    folder = Path(folder)
    frames: dict[str, pd.DataFrame] = {}
    meta: dict[str, dict[str, Any]] = {}
    for csv_path in sorted(folder.glob("*.csv")):
        task = csv_path.stem
        json_path = csv_path.with_suffix(".json")
        if not json_path.is_file():
            raise ValueError(f"{csv_path}: no sidecar {json_path.name} (summaries are written by benchmarks/reproduction.py --summarise)")
        try:
            sidecar = json.loads(json_path.read_text())
        except ValueError as error:
            raise ValueError(f"{json_path}: not valid JSON: {error}") from None
        missing = [key for key in META_KEYS if key not in sidecar]
        if missing:
            raise ValueError(f"{json_path}: missing keys {missing}")
        frame = pd.read_csv(csv_path)
        absent = [column for column in SUMMARY_COLUMNS if column not in frame.columns]
        if absent:
            raise ValueError(f"{csv_path}: missing columns {absent}")
        for index, row in frame.iterrows():
            line = index + 2  # header is line 1
            if row["task"] != task:
                raise ValueError(f"{csv_path}, line {line}: task {row['task']!r} in the summary of {task!r}")
            empty = [column for column in REQUIRED if pd.isna(row[column])]
            if empty:
                raise ValueError(f"{csv_path}, line {line}: no value for {empty}")
        frames[task] = frame
        meta[task] = sidecar
    summaries = Summaries(pd.DataFrame(columns=list(SUMMARY_COLUMNS)), meta)
    if frames:  # in the tables' task order, not the files'
        summaries.frame = pd.concat([frames[task] for task in summaries.tasks], ignore_index=True)
    return summaries
