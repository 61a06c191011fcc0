"""The reproduction's run ledger: every finished run of a task, recorded as soon as it has
finished, in a small committed file, so that a reproduction longer than one working session
accumulates across sessions and machines whose ``results/`` do not survive.

``<out>/runs/<task>.csv`` (``benchmarks/reproduction/runs/`` for the GLUE tasks) holds one row
per (method, setting, seed): the columns of a task summary
(:data:`top.report.reproduction.SUMMARY_COLUMNS`) and

- ``run_sha256``: the SHA-256 of everything the configuration gives the run (:func:`run_sha256`:
  the teacher's settings, the method's merged settings, the training, evaluation and latency
  settings, the training rows). A row whose hash differs from the current configuration's is
  *stale*: the run is redone. Changing one method's settings leaves the other methods' rows valid.
- ``teacher_sha256``: the SHA-256 of the teacher's weights (:func:`weights_sha256`) the run
  started from. Every method of a task and seed must start from the same teacher; a teacher
  fine-tuned again (a new session has no ``results/``) must come out bit-identical for earlier rows
  to stay valid; it does at a fixed thread count on the same CPU model (tests/test_reliability.py),
  not across thread counts nor across CPU models (README, "Reproduction"). Rows of a seed whose
  teacher differs from the seed's newest recorded teacher are stale too;
  :func:`seeds_from_other_cpus` names the seeds a run on this machine would make stale.
- ``date``, ``cpu_model``, ``torch_version``, ``transformers_version``: when and where it ran.

The task's summary (``<task>.csv`` and ``<task>.json``, :mod:`top.report.reproduction`) is
written from the ledger once every run the configuration asks for has a current row.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import logging
import numbers
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from top.config import resolve_run, teacher_settings
from top.files import atomic_write_text
from top.report.labels import method_rank
from top.report.outputs import TEACHER_DIR
from top.report.reproduction import RUN_KEY, SUMMARY_COLUMNS, Run, as_run, run_finished, run_keys, run_outputs, summary_frame
from top.report.tables import collect
from top.tasks import is_qa_task

log = logging.getLogger(__name__)

PROVENANCE_COLUMNS = ("run_sha256", "teacher_sha256", "date", "cpu_model", "torch_version", "transformers_version")
"""The ledger's columns beside a summary's."""
FLOAT_FORMAT = "%.6g"
"""How the ledger writes its floats."""


def ledger_path(folder: str | Path, task: str) -> Path:
    """``<folder>/runs/<task>.csv``."""
    return Path(folder) / "runs" / f"{task}.csv"


def run_sha256(cfg: Mapping[str, Any], task: str, method: str, setting: str, seed: int, train_rows: int | None) -> str:
    """SHA-256 of the settings one run's result depends on: the model, the device, the task and
    its training rows, the seed, the teacher's fine-tune, evaluation and latency settings, a QA
    task's ``qa`` settings (windows, protected question), a GLUE task's protected separators
    (``glue.protect_separators``, only when on), and (except for the ``dense`` row,
    which is the teacher) the method's merged settings and its training settings
    (:func:`top.config.resolve_run`). Paths, threads and the other tasks' settings are left out."""
    resolved = resolve_run(cfg, task, method, setting, seed)
    payload: dict[str, Any] = {
        "model": cfg["model"],
        "device": cfg.get("device"),
        "qa": cfg.get("qa") if is_qa_task(task) else None,
        "task": task,
        "train_rows": train_rows,
        "seed": int(seed),
        "teacher": teacher_settings(cfg, task),
        "eval": cfg.get("eval"),
        "latency": cfg.get("latency"),
        "method": method,
    }
    if method != "dense":
        payload |= {"setting": setting, "train": resolved["train"], "method_settings": resolved["method_settings"]}
    if not is_qa_task(task) and (cfg.get("glue") or {}).get("protect_separators"):
        # only when on: runs recorded before the option existed keep their hashes
        payload["glue"] = {"protect_separators": True}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def weights_sha256(folder: str | Path) -> str:
    """SHA-256 over a saved model's weight files (``*.safetensors``, ``*.bin``) in name order.

    Raises:
        FileNotFoundError: naming ``folder`` if it holds no weight file.
    """
    files = sorted(p for p in Path(folder).iterdir() if p.suffix in (".safetensors", ".bin")) if Path(folder).is_dir() else []
    if not files:
        raise FileNotFoundError(f"{folder}: no weight file (*.safetensors, *.bin) to fingerprint the teacher")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def read_ledger(folder: str | Path, task: str) -> pd.DataFrame:
    """``task``'s ledger (empty if it has none yet).

    Raises:
        ValueError: naming the file (and line) of a ledger with missing columns, a row of
            another task or a run recorded twice.
    """
    path = ledger_path(folder, task)
    columns = list(SUMMARY_COLUMNS) + list(PROVENANCE_COLUMNS)
    if not path.is_file():
        return pd.DataFrame(columns=columns)
    frame = pd.read_csv(path)
    absent = [column for column in columns if column not in frame.columns]
    if absent:
        raise ValueError(f"{path}: missing columns {absent}")
    for index, row in frame.iterrows():
        if row["task"] != task:
            raise ValueError(f"{path}, line {index + 2}: task {row['task']!r} in the ledger of {task!r}")
    twice = frame[frame.duplicated(list(RUN_KEY), keep=False)]
    if len(twice):
        first = twice.iloc[0]
        raise ValueError(f"{path}: {first['method']}/{first['setting']}/seed{first['seed']} is recorded more than once")
    return frame


def newest_teachers(ledger: pd.DataFrame) -> dict[int, str]:
    """Per seed, the teacher fingerprint of the most recently recorded row."""
    if ledger.empty:
        return {}
    newest = ledger.sort_values("date", kind="stable").groupby("seed").tail(1)
    return {int(seed): str(sha) for seed, sha in zip(newest["seed"], newest["teacher_sha256"])}


def seed_cpus(ledger: pd.DataFrame, runs: Iterable[Run]) -> dict[int, list[str]]:
    """Per seed, the CPU models that ``runs``' rows were made on, sorted (seeds in order)."""
    wanted = {as_run(run) for run in runs}
    cpus: dict[int, set[str]] = {}
    for run, model in zip(run_keys(ledger), ledger["cpu_model"]):
        if run in wanted and isinstance(model, str):
            cpus.setdefault(run[2], set()).add(model)
    return {seed: sorted(models) for seed, models in sorted(cpus.items())}


def seeds_from_other_cpus(ledger: pd.DataFrame, seeds: Iterable[int], cpu_model: str) -> dict[int, list[str]]:
    """The seeds among ``seeds`` whose current rows (those from the seed's newest teacher) were
    made on a CPU model other than ``cpu_model``: seed -> those CPU models, sorted. The seed's
    teacher fine-tuned again on this CPU will not come out bit-identical, so running the seed
    here redoes those rows. Only the model names are compared: two CPUs sold under one name can
    still give different teachers, which the teacher's fingerprint catches once a row is recorded."""
    teachers = newest_teachers(ledger)
    current = [run for run, sha in zip(run_keys(ledger), ledger["teacher_sha256"]) if sha == teachers[run[2]]]
    cpus = seed_cpus(ledger, current)
    others = {int(seed): [model for model in cpus.get(int(seed), []) if model != cpu_model] for seed in seeds}
    return {seed: models for seed, models in others.items() if models}


def run_states(ledger: pd.DataFrame, expected: Sequence[Run], hashes: Mapping[Run, str]) -> dict[Run, str]:
    """Each expected run's state in the ledger: ``recorded`` (a current row), ``stale settings``
    (its row's ``run_sha256`` is not ``hashes[run]``), ``stale teacher`` (its row started from
    another teacher than its seed's newest) or ``missing``."""
    teachers = newest_teachers(ledger)
    rows = dict(zip(run_keys(ledger), ledger.itertuples(index=False)))
    states = {}
    for run in expected:
        row = rows.get(as_run(run))
        if row is None:
            states[run] = "missing"
        elif row.run_sha256 != hashes[run]:
            states[run] = "stale settings"
        elif row.teacher_sha256 != teachers[int(run[2])]:
            states[run] = "stale teacher"
        else:
            states[run] = "recorded"
    return states


def record_runs(
    results_dir: str | Path,
    task: str,
    folder: str | Path,
    expected: Sequence[Run],
    hashes: Mapping[Run, str],
    steps: Mapping[tuple[str, str], int],
    machine: Mapping[str, Any],
    date: str | None = None,
) -> pd.DataFrame:
    """Record every run of ``expected`` that has finished under ``results_dir`` (its metrics,
    FLOPs and latency files exist) into ``task``'s ledger under ``folder``, replacing an earlier
    row of the same run unless nothing but the date would change (then the row stays as it was);
    the ledger is rewritten atomically. Returns the rows recorded now.

    Args:
        hashes: each run's :func:`run_sha256` under the current configuration.
        steps: (method, setting) -> optimiser steps over all the run's stages (:mod:`top.budget`).
        machine: :func:`top.report.reproduction.machine_info` of the machine that ran them.
    """
    finished = [run for run in expected if run_finished(results_dir, task, *run)]
    ledger = read_ledger(folder, task)
    if not finished:
        log.info("%s: no finished run to record under %s", task, results_dir)
        return ledger.iloc[0:0]
    outputs = [run_outputs(results_dir, task, *run) for run in finished]
    with tempfile.TemporaryDirectory() as tmp:
        results = collect(*([str(o[i]) for o in outputs] for i in range(3)), Path(tmp) / "results.csv")
    rows = summary_frame(results, task, steps, finished)
    teachers = {seed: weights_sha256(Path(results_dir) / TEACHER_DIR.format(task=task, seed=seed)) for seed in {run[2] for run in finished}}
    rows["run_sha256"] = [hashes[run] for run in run_keys(rows)]
    rows["teacher_sha256"] = [teachers[int(seed)] for seed in rows["seed"]]
    rows["date"] = date or datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    for column in ("cpu_model", "torch_version", "transformers_version"):
        rows[column] = machine.get(column)
    for seed, sha in teachers.items():
        earlier = ledger[(ledger["seed"] == seed) & (ledger["teacher_sha256"] != sha)]
        if len(earlier):
            names = ", ".join(f"{m}/{s}" for m, s in zip(earlier["method"], earlier["setting"]))
            log.warning(
                "%s seed %s: the teacher differs from the one earlier rows started from (%s); those rows are stale and will be run again",
                task,
                seed,
                names,
            )
    rows = _keep_unchanged_rows(rows, ledger)
    now = set(run_keys(rows))
    kept = ledger[[run not in now for run in run_keys(ledger)]]
    merged = pd.concat([frame for frame in (kept, rows) if len(frame)], ignore_index=True)
    merged = merged[list(SUMMARY_COLUMNS) + list(PROVENANCE_COLUMNS)]
    merged = merged.assign(_order=merged["method"].map(method_rank)).sort_values(["_order", "setting", "seed"], kind="stable").drop(columns="_order")
    atomic_write_text(ledger_path(folder, task), merged.to_csv(index=False, float_format=FLOAT_FORMAT))
    log.info("%s: recorded %d run(s) in %s (%d in all)", task, len(rows), ledger_path(folder, task), len(merged))
    return rows


def _keep_unchanged_rows(rows: pd.DataFrame, ledger: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with each row that the ledger already holds unchanged (every column as the ledger
    writes it, the date aside) replaced by the ledger's row, so that recording the same finished
    run again keeps the date it was first recorded on."""
    if ledger.empty:
        return rows
    columns = [column for column in list(SUMMARY_COLUMNS) + list(PROVENANCE_COLUMNS) if column != "date"]
    written = pd.read_csv(io.StringIO(rows[list(SUMMARY_COLUMNS) + list(PROVENANCE_COLUMNS)].to_csv(index=False, float_format=FLOAT_FORMAT)))
    earlier = dict(zip(run_keys(ledger), (row for _, row in ledger.iterrows())))
    dates = []
    for run, (_, new), date in zip(run_keys(written), written.iterrows(), rows["date"]):
        old = earlier.get(run)
        same = old is not None and all(_same_cell(new[column], old[column]) for column in columns)
        dates.append(old["date"] if same else date)
    return rows.assign(date=dates)


def _same_cell(a: Any, b: Any) -> bool:
    """Two ledger cells as read back from CSV are equal (both missing counts as equal)."""
    if pd.isna(a) or pd.isna(b):
        return bool(pd.isna(a) and pd.isna(b))
    if isinstance(a, numbers.Number) and isinstance(b, numbers.Number):
        return float(a) == float(b)  # an integer column read as float where another row is empty
    return str(a) == str(b)


def ledger_summary_rows(ledger: pd.DataFrame, states: Mapping[Run, str]) -> pd.DataFrame:
    """The ledger's rows of the runs that are ``recorded`` in ``states``.

    Raises:
        ValueError: naming the runs that are not, with their state.
    """
    other = [f"{m}/{s}/seed{seed} ({state})" for (m, s, seed), state in states.items() if state != "recorded"]
    if other:
        raise ValueError(f"not every run is recorded: {', '.join(other)}")
    keys = {as_run(run) for run in states}
    keep = [run in keys for run in run_keys(ledger)]
    return ledger[keep].reset_index(drop=True)
