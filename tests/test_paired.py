"""Two reproduction passes paired run by run (top/report/paired.py, benchmarks/paired_ledgers.py)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from top.report.ledger import PROVENANCE_COLUMNS, read_ledger
from top.report.paired import current_rows, paired_markdown, paired_runs, paired_summary
from top.report.reproduction import SUMMARY_COLUMNS

ROOT = Path(__file__).resolve().parents[1]


def ledger(rows: list[tuple], task: str = "mrpc") -> pd.DataFrame:
    """A ledger frame with every column; rows: (method, setting, seed, score, flops, teacher, date)."""
    records = []
    for method, setting, seed, score, flops, teacher, date in rows:
        record = {column: None for column in (*SUMMARY_COLUMNS, *PROVENANCE_COLUMNS)}
        record |= {"task": task, "method": method, "setting": setting, "seed": seed, "metric": "f1"}
        record |= {"score": score, "flops_reduction": flops, "teacher_sha256": teacher, "date": date}
        records.append(record)
    return pd.DataFrame.from_records(records, columns=[*SUMMARY_COLUMNS, *PROVENANCE_COLUMNS])


FP32 = [
    ("top", "s50", 42, 85.0, 2.0, "t42", "2026-12-06T10:00"),
    ("dense", "default", 42, 87.0, 1.0, "t42", "2026-12-06T09:00"),
    ("topk", "r2.3", 42, 84.0, 2.3, "t42", "2026-12-06T11:00"),
    ("top", "s50", 43, 84.0, 2.0, "t43", "2026-12-06T12:00"),
    ("topk", "r2.3", 44, 80.0, 2.3, "t44", "2026-12-06T13:00"),  # nothing to pair with
]
BF16 = [
    ("dense", "default", 42, 86.5, 1.0, "b42", "2026-12-01T09:00"),
    ("top", "s50", 42, 84.0, 2.0, "b42", "2026-12-01T10:00"),
    ("topk", "r2.3", 42, 85.0, 2.32, "b42", "2026-12-01T11:00"),
    ("top", "s50", 43, 83.0, 2.0, "old", "2026-12-01T12:00"),  # stale: seed 43's newest teacher is "b43"
    ("dense", "default", 43, 85.5, 1.0, "b43", "2026-12-02T09:00"),
]


def test_runs_pair_by_task_method_setting_and_seed_with_stale_rows_left_out():
    pairs = paired_runs(ledger(FP32), ledger(BF16))
    # dense first and ToP last, as every table; seed 43's bf16 ToP row is stale, seed 44 has no partner
    assert list(zip(pairs["method"], pairs["seed"])) == [("dense", 42), ("topk", 42), ("top", 42)]
    assert pairs["difference"].tolist() == pytest.approx([-0.5, 1.0, -1.0])
    assert pairs["flops_ratio"].tolist() == pytest.approx([1.0, 2.32 / 2.3, 1.0])
    assert len(current_rows(ledger(BF16))) == 4


def test_the_summary_gives_each_method_and_every_method_together():
    summary = paired_summary(paired_runs(ledger(FP32), ledger(BF16))).set_index("method")
    assert summary.loc["all", "pairs"] == 3
    assert summary.loc["all", "mean"] == pytest.approx(-0.5 / 3)
    assert summary.loc["all", "std"] == pytest.approx(pd.Series([-0.5, 1.0, -1.0]).std())
    assert (summary.loc["all", "min"], summary.loc["all", "max"]) == (-1.0, 1.0)
    assert summary.loc["top", "pairs"] == 1 and math.isnan(summary.loc["top", "std"])


def test_markdown_names_the_passes_and_shows_every_pair():
    text = paired_markdown(paired_runs(ledger(FP32), ledger(BF16)), ("fp32", "bf16"))
    assert "Score difference bf16 − fp32" in text
    assert "| MRPC | every method | 3 | -0.2 | 1.0 | -1.0 | +1.0 |" in text
    assert "| MRPC | ToP | 1 | -1.0 | – | -1.0 | -1.0 |" in text
    assert "| MRPC | Top-k (static) | r2.3 | 42 | 84.0 | 85.0 | +1.0 | 2.30x | 2.32x |" in text
    assert paired_markdown(paired_runs(ledger([]), ledger(BF16)), ("fp32", "bf16")).startswith("No run is recorded in both")


def test_the_script_pairs_the_ledgers_two_folders_share(tmp_path):
    for folder, rows in (("fp32", FP32), ("bf16", BF16)):
        (tmp_path / folder / "runs").mkdir(parents=True)
        ledger(rows).to_csv(tmp_path / folder / "runs/mrpc.csv", index=False)
        assert len(read_ledger(tmp_path / folder, "mrpc")) == len(rows)
    ledger(BF16[:1], task="stsb").to_csv(tmp_path / "bf16/runs/stsb.csv", index=False)  # only in one folder
    out = tmp_path / "paired.md"
    command = [sys.executable, str(ROOT / "benchmarks/paired_ledgers.py"), "--a", str(tmp_path / "fp32"), "--b", str(tmp_path / "bf16")]
    command += ["--labels", "fp32", "bf16", "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    text = out.read_text()
    assert text.startswith("# Paired runs: bf16 against fp32") and "| MRPC | every method | 3 |" in text
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["tasks"] == ["mrpc"] and len(record["pairs"]) == 3
    assert record["pairs"][0] | {"difference": None} == {
        "task": "mrpc",
        "method": "dense",
        "setting": "default",
        "seed": 42,
        "score_a": 87.0,
        "score_b": 86.5,
        "difference": None,
        "flops_a": 1.0,
        "flops_b": 1.0,
        "flops_ratio": 1.0,
    }
    # a folder that does not exist is an error that names it
    bad = subprocess.run([*command[:3], str(tmp_path / "missing"), *command[4:]], capture_output=True, text=True)
    assert bad.returncode != 0 and "missing: no such folder" in bad.stderr
