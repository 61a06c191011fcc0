"""Teacher probes: does a task's teacher learn the task, and at which learning rate?

The reproduction (``config/reproduction.yaml``) compares methods that all start from one
fine-tuned teacher per task and seed, so a teacher that has not learnt the task makes every
comparison on it meaningless. A probe fine-tunes the teacher at several learning rates (and, if
asked, epoch counts), each through the workflow's own ``teacher`` rule with
``task_settings.<task>.teacher`` replaced (:func:`probe_overlay`, :func:`probe_config`), and reads the dev score of every epoch
from the teacher's ``pruning.json`` (:func:`probe_record`), so that the probe trains exactly as the
reproduction does. :func:`probe_frame` puts the probes beside the configuration's
``expected_teacher`` level (a published dev score of a comparable model) and says whether each
reached it: a kept dev score at most ``tolerance`` points below it (:data:`TOLERANCE`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from top.config import merge_layers
from top.report.outputs import TEACHER_DIR

TOLERANCE = 5.0
"""Points a teacher may stay below the expected level and count as having learnt the task: about
two binomial standard errors of accuracy at RTE's published 68.8 on its 277 dev pairs
(2 x 2.8), the smallest dev set of the reproduction's tasks; larger dev sets measure closer."""


def probe_name(learning_rate: float, epochs: int) -> str:
    """The folder name of one probe, e.g. ``lr0.0001_ep10``."""
    return f"lr{learning_rate:g}_ep{epochs}"


def probe_overlay(task: str, learning_rate: float, epochs: int) -> dict[str, Any]:
    """The configuration layer that sets ``task``'s teacher learning rate and epochs, merged over
    the reproduction's configuration (``task_settings.<task>.teacher``)."""
    if not (learning_rate > 0 and math.isfinite(learning_rate)):
        raise ValueError(f"a probe's learning rate must be a positive number, not {learning_rate!r}")
    if int(epochs) != epochs or epochs < 1:
        raise ValueError(f"a probe's epochs must be a positive whole number, not {epochs!r}")
    return {"task_settings": {task: {"teacher": {"learning_rate": float(learning_rate), "epochs": int(epochs)}}}}


def probe_config(cfg: Mapping[str, Any], task: str, learning_rate: float, epochs: int) -> dict[str, Any]:
    """The whole configuration one probe trains with: ``cfg`` with the task's teacher rate and
    epochs (:func:`probe_overlay`), and the task taken off ``not_reproducible``, so that a probe
    may re-check a task that does not run (the workflow refuses a task that is in both)."""
    merged = merge_layers(cfg, probe_overlay(task, learning_rate, epochs))
    merged["not_reproducible"] = {name: why for name, why in (merged.get("not_reproducible") or {}).items() if name != task}
    return merged


def teacher_folder(results_dir: str | Path, task: str, seed: int) -> Path:
    """The teacher's folder under one probe's ``results_dir`` (the workflow's layout)."""
    return Path(results_dir) / TEACHER_DIR.format(task=task, seed=seed)


def probe_record(teacher_dir: str | Path) -> dict[str, Any]:
    """One finished probe: its learning rate, epochs and batch size, the training rows (None where
    the record lacks them), the dev score after every epoch (the teacher's selection history), the
    epoch kept and its score.

    Raises:
        FileNotFoundError: if the teacher's ``pruning.json`` is absent (the probe did not finish).
        ValueError: if the file holds no per-epoch dev scores.
    """
    path = Path(teacher_dir) / "pruning.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no teacher record (did the probe finish?)")
    payload = json.loads(path.read_text())
    selection = payload.get("selection") or {}
    history = [entry for entry in selection.get("history") or [] if entry.get("split") == "validation"]
    if not history:
        raise ValueError(f"{path}: the teacher's selection holds no per-epoch dev scores")
    teacher = payload["config"]["teacher"]
    return {
        "learning_rate": float(teacher["learning_rate"]),
        "epochs": int(teacher["epochs"]),
        "batch_size": int(teacher["batch_size"]),
        "train_examples": None if payload["config"].get("train_examples") is None else int(payload["config"]["train_examples"]),
        "metric": selection["metric"],
        "dev_scores": [entry["score"] for entry in sorted(history, key=lambda entry: entry["epoch"])],
        "selected_epoch": int(selection["selected_epoch"]),
        "selected_score": selection["score"],
    }


def probe_frame(records: Sequence[Mapping[str, Any]], expected: Mapping[str, Any] | None, scale: float, tolerance: float = TOLERANCE) -> pd.DataFrame:
    """One row per probe, by seed, learning rate and epochs: the kept epoch, its dev score, the
    last epoch's and the mean of the last three, in points (``scale`` × the task's metric: 100 for
    GLUE), the gap to the expected teacher level (``expected_teacher.score``, already in points)
    where one is configured and names the same metric, and whether the kept score reached it
    (``reached``: the gap is at least ``-tolerance``; None without a level to compare with)."""
    rows = []
    for record in records:
        scores = [math.nan if score is None else score * scale for score in record["dev_scores"]]
        row = {
            "seed": record.get("seed"),
            "learning_rate": record["learning_rate"],
            "epochs": record["epochs"],
            "metric": record["metric"],
            "kept_epoch": record["selected_epoch"],
            "kept_score": record["selected_score"] * scale if record["selected_score"] is not None else math.nan,
            "last_score": scores[-1],
            "mean_last3": float(pd.Series(scores[-3:]).mean()),
        }
        same_metric = expected is not None and expected.get("metric") == record["metric"]
        row["expected"] = float(expected["score"]) if same_metric else math.nan
        row["gap"] = row["kept_score"] - row["expected"] if same_metric else math.nan
        row["reached"] = bool(row["gap"] >= -tolerance) if same_metric else None
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["seed", "learning_rate", "epochs"], kind="stable").reset_index(drop=True)


def probe_markdown(frame: pd.DataFrame, tolerance: float = TOLERANCE) -> str:
    """``frame`` (:func:`probe_frame`) as a Markdown table, scores to one decimal, with the rule
    for ``reached`` under it."""
    lines = [
        "| seed | learning rate | epochs | metric | kept epoch | kept dev score | last epoch | mean of last 3 | expected | gap | reached |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]

    def fmt(x: float) -> str:
        return "—" if pd.isna(x) else f"{x:.1f}"

    def reached(value: bool | None) -> str:
        return "—" if value is None or pd.isna(value) else ("yes" if value else "no")

    for row in frame.itertuples(index=False):
        lines.append(
            f"| {'—' if pd.isna(row.seed) else int(row.seed)} | {row.learning_rate:g} | {row.epochs} | {row.metric} | {row.kept_epoch} | {fmt(row.kept_score)} | "
            f"{fmt(row.last_score)} | {fmt(row.mean_last3)} | {fmt(row.expected)} | {fmt(row.gap)} | {reached(row.reached)} |"
        )
    lines += ["", f"Reached: the kept dev score is at most {tolerance:g} points below the expected level."]
    return "\n".join(lines) + "\n"


def merge_probes(earlier: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``earlier`` probe records (a committed probe file) with ``new`` ones, a new record
    replacing an earlier one of the same seed, learning rate and epochs."""

    def key(record: Mapping[str, Any]) -> tuple:
        return record.get("seed"), record["learning_rate"], record["epochs"]

    merged = {key(record): dict(record) for record in earlier}
    merged.update({key(record): dict(record) for record in new})
    return list(merged.values())
