"""The numbers the papers report, read from a data file (``config/paper_results.yaml``).

The file has two keys. ``sources`` maps a short id to where the numbers were read (citation,
address, table, model, split, notes). (``label`` is the short name tables show; the optional ``flops_baseline`` says what a source's
FLOPs reductions divide by: ``real_length``, the dense model at the same real input lengths as
this harness, or ``other``, e.g. a fixed padded length, which makes them incomparable with
ours; missing means ``other``.) ``results`` lists one row per reported number set:
``{source, task, method, metric, score, flops_reduction, latency_speedup}`` with scores on the
0-100 scale, reductions and speedups as ratios (dense / pruned) and ``null`` for what the source
does not give. Numbers live only in that file, never in code.

Where several rows report the same task, method and metric, the first one in the file is the
one tables put beside ours (file order is priority).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import yaml

from top.tasks import task_names

COLUMNS = ["source", "task", "method", "metric", "score", "flops_reduction", "latency_speedup", "note"]
TASKS = task_names()
METRICS = {"accuracy", "f1", "matthews_correlation", "pearson", "spearmanr", "exact_match"}
_SOURCE_KEYS = {"label", "citation", "url", "where", "model", "split"}
_FROM_SOURCE = ["model", "split", "flops_comparable"]
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class PaperResultsError(ValueError):
    """A malformed paper-results file; the message names the file and the row or key."""


def _number(value, where: str, positive: bool) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PaperResultsError(f"{where}: expected a number or null, got {value!r}")
    if positive and value <= 0:
        raise PaperResultsError(f"{where}: must be > 0 (a ratio dense / pruned), got {value!r}")
    return float(value)


def load_paper_results(path: str | Path) -> tuple[pd.DataFrame, dict[str, dict]]:
    """Read and check the file; return ``(results, sources)``.

    ``results`` has the columns of :data:`COLUMNS` plus ``model``, ``split`` and
    ``flops_comparable`` (from the row's source), in file order; missing numbers are NaN. Raises :class:`PaperResultsError` naming
    the file and the offending row (``results[i]``) or source.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise PaperResultsError(f"{path}: file not found") from None
    except yaml.YAMLError as error:
        raise PaperResultsError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("sources"), dict) or not isinstance(data.get("results"), list):
        raise PaperResultsError(f"{path}: expected a mapping with 'sources' (a mapping) and 'results' (a list)")
    sources = data["sources"]
    for name, source in sources.items():
        missing = _SOURCE_KEYS - set(source or {})
        if missing:
            raise PaperResultsError(f"{path}: sources.{name}: missing {sorted(missing)}")
        if source.get("flops_baseline", "other") not in ("real_length", "other"):
            raise PaperResultsError(f"{path}: sources.{name}.flops_baseline: expected real_length or other, got {source['flops_baseline']!r}")

    rows = []
    for i, row in enumerate(data["results"]):
        where = f"{path}: results[{i}]"
        if not isinstance(row, dict):
            raise PaperResultsError(f"{where}: expected a mapping, got {row!r}")
        unknown = set(row) - set(COLUMNS) - {"derived"}
        if unknown:
            raise PaperResultsError(f"{where}: unknown keys {sorted(unknown)}; known: {COLUMNS + ['derived']}")
        for key in ("source", "task", "method", "metric"):
            if not isinstance(row.get(key), str):
                raise PaperResultsError(f"{where}: '{key}' is required (a string)")
        if row["source"] not in sources:
            raise PaperResultsError(f"{where}: unknown source {row['source']!r}; defined: {sorted(sources)}")
        if row["task"] not in TASKS:
            raise PaperResultsError(f"{where}: unknown task {row['task']!r}; allowed: {', '.join(TASKS)}")
        if row["metric"] not in METRICS:
            raise PaperResultsError(f"{where}: unknown metric {row['metric']!r}; allowed: {', '.join(sorted(METRICS))}")
        if not _NAME.match(row["method"]):
            raise PaperResultsError(f"{where}: method {row['method']!r} must be a lowercase snake_case name")
        score = _number(row.get("score"), f"{where}.score", positive=False)
        if not math.isnan(score) and not 0 <= score <= 100:
            raise PaperResultsError(f"{where}.score: expected the 0-100 scale, got {score}")
        source = sources[row["source"]]
        rows.append(
            {
                "source": row["source"],
                "task": row["task"],
                "method": row["method"],
                "metric": row["metric"],
                "score": score,
                "flops_reduction": _number(row.get("flops_reduction"), f"{where}.flops_reduction", positive=True),
                "latency_speedup": _number(row.get("latency_speedup"), f"{where}.latency_speedup", positive=True),
                "note": row.get("note") or row.get("derived") or "",
                "model": source["model"],
                "split": source["split"],
                "flops_comparable": source.get("flops_baseline", "other") == "real_length",
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS + _FROM_SOURCE), sources


def same_model(configured: str | None, reported: str) -> bool:
    """Whether a configured model (hub name, local folder) is the checkpoint a paper names,
    e.g. ``google-bert/bert-base-uncased`` and ``bert-base-uncased``."""
    return configured is not None and configured.rstrip("/").split("/")[-1].lower() == reported.strip().lower()


def comparable(configured: str | None, reported_model: str, reported_split: str) -> bool:
    """Whether a paper's number can be subtracted from ours: same checkpoint, dev split."""
    return reported_split == "dev" and same_model(configured, reported_model)


def empty_paper_results() -> pd.DataFrame:
    """A results frame with no rows (tables without paper numbers)."""
    return pd.DataFrame(columns=COLUMNS + _FROM_SOURCE).astype(
        {"score": float, "flops_reduction": float, "latency_speedup": float, "flops_comparable": bool}
    )
