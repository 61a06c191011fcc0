"""Two passes of the reproduction compared run by run.

Two run ledgers (:mod:`top.report.ledger`) of the same task, written under configurations that
differ in one thing (``config/reproduction.yaml`` in fp32 and the overlay
``config/reproduction_bf16.yaml``), hold runs of the same method, setting and seed. Pairing
them row by row measures what that one thing changes, with each run's own seed noise paired
out: the difference of the dev score and of the FLOPs reduction per run, then per method and
over every pair.

Rows are taken as recorded, except that a row whose teacher is not its seed's newest recorded
teacher is left out (it is stale in its own ledger, :func:`top.report.ledger.run_states`);
whether a row's settings still match its configuration is not checked here
(``benchmarks/reproduction.py --status`` does that).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from top.report.labels import KEYS, TASK_LABELS, method_label, method_rank
from top.report.ledger import newest_teachers

PAIR_KEY = tuple(KEYS)
PAIR_COLUMNS = [*PAIR_KEY, "score_a", "score_b", "difference", "flops_a", "flops_b", "flops_ratio"]
"""The columns of :func:`paired_runs`."""


def current_rows(ledger: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``ledger`` whose teacher is their seed's newest recorded teacher."""
    if ledger.empty:
        return ledger
    newest = newest_teachers(ledger)
    keep = [newest[int(seed)] == sha for seed, sha in zip(ledger["seed"], ledger["teacher_sha256"])]
    return ledger[keep]


def paired_runs(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """The runs recorded in both ledgers ``a`` and ``b`` (current rows only), one row per
    (task, method, setting, seed): ``score_a``, ``score_b``, ``difference`` (b − a),
    ``flops_a``, ``flops_b``, ``flops_ratio`` (b / a), sorted by task, method, setting and seed."""
    columns = ["score", "flops_reduction"]
    left = current_rows(a)[[*PAIR_KEY, *columns]]
    right = current_rows(b)[[*PAIR_KEY, *columns]]
    pairs = left.merge(right, on=list(PAIR_KEY), suffixes=("_a", "_b"))
    pairs = pairs.rename(columns={"flops_reduction_a": "flops_a", "flops_reduction_b": "flops_b"})
    pairs["difference"] = pairs["score_b"] - pairs["score_a"]
    pairs["flops_ratio"] = pairs["flops_b"] / pairs["flops_a"]
    pairs["rank"] = pairs["method"].map(method_rank)
    pairs = pairs.sort_values(["task", "rank", "method", "setting", "seed"]).drop(columns="rank")
    return pairs[PAIR_COLUMNS].reset_index(drop=True)


def paired_summary(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per task and method, and per task over every method (method ``all``): the number of
    pairs and the score difference's mean, sample std (NaN for one pair), min and max."""
    if pairs.empty:
        return pd.DataFrame(columns=["task", "method", "pairs", "mean", "std", "min", "max"])
    both = pd.concat([pairs, pairs.assign(method="all")], ignore_index=True)
    stats = both.groupby(["task", "method"], sort=False)["difference"].agg(["count", "mean", "std", "min", "max"])
    return stats.rename(columns={"count": "pairs"}).reset_index()


def _signed(value: float) -> str:
    return "–" if pd.isna(value) else f"{value:+.1f}"


def paired_markdown(pairs: pd.DataFrame, labels: Sequence[str] = ("a", "b")) -> str:
    """The pairs as Markdown: the summary per method, then every pair. ``labels``: the names of
    the two passes (``a`` and ``b``), e.g. ``("fp32", "bf16")``."""
    a, b = labels
    if pairs.empty:
        return f"No run is recorded in both the {a} and the {b} ledger yet.\n"
    lines = [
        f"Score difference {b} − {a} (dev score x100), paired by task, method, setting and seed:",
        "",
        "| task | method | pairs | mean | std | min | max |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in paired_summary(pairs).itertuples():
        name = "every method" if row.method == "all" else method_label(row.method)
        lines.append(
            f"| {TASK_LABELS.get(row.task, row.task)} | {name} | {row.pairs} | {_signed(row.mean)} | "
            f"{'–' if pd.isna(row.std) else f'{row.std:.1f}'} | {_signed(row.min)} | {_signed(row.max)} |"
        )
    lines += [
        "",
        f"| task | method | setting | seed | {a} | {b} | {b} − {a} | FLOPs reduction {a} | FLOPs reduction {b} |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in pairs.itertuples():
        lines.append(
            f"| {TASK_LABELS.get(row.task, row.task)} | {method_label(row.method)} | {row.setting} | {row.seed} | {row.score_a:.1f} | "
            f"{row.score_b:.1f} | {_signed(row.difference)} | {row.flops_a:.2f}x | {row.flops_b:.2f}x |"
        )
    return "\n".join(lines) + "\n"
