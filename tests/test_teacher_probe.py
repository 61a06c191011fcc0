"""Teacher probes (top/report/teacher_probe.py, benchmarks/teacher_probe.py): the overlay the
workflow trains with, the per-epoch record, the table against the expected level, and one tiny
probe through the workflow's teacher rule."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from tests.conftest import write_tiny_model, write_tiny_sst2
from top.config import ConfigError, merge_layers, task_settings_of, validate_config
from top.report.teacher_probe import merge_probes, probe_config, probe_frame, probe_markdown, probe_name, probe_overlay, probe_record

ROOT = Path(__file__).resolve().parents[1]


def test_the_overlay_sets_only_the_tasks_teacher_over_the_reproduction(tmp_path):
    base = yaml.safe_load((ROOT / "config/reproduction.yaml").read_text())
    cfg = merge_layers(base, probe_overlay("cola", 1e-4, 12), {"glue_dir": str(tmp_path)})
    validate(cfg, str(ROOT / "workflow/schemas/config.schema.yaml"))
    validate_config(cfg)
    assert cfg["task_settings"]["cola"]["teacher"] == {"epochs": 12, "learning_rate": 1e-4}
    # the rest of the task's settings and the other tasks' teachers are untouched
    assert cfg["task_settings"]["cola"]["expected_teacher"] == base["task_settings"]["cola"]["expected_teacher"]
    assert cfg["task_settings"]["mrpc"]["teacher"] == base["task_settings"]["mrpc"]["teacher"]
    assert cfg["task_settings"]["cola"]["methods"] == base["task_settings"]["cola"]["methods"]
    assert task_settings_of(cfg, "cola", "top") == task_settings_of(base, "cola", "top")
    assert probe_name(1e-4, 12) == "lr0.0001_ep12" and probe_name(5e-5, 10) == "lr5e-05_ep10"


def test_a_probe_may_recheck_a_task_that_does_not_run(tmp_path):
    """CoLA is under not_reproducible; its probe's configuration, with tasks=[cola] as the probe
    runs it, passes the checks that refuse a task both run and not reproducible."""
    base = yaml.safe_load((ROOT / "config/reproduction.yaml").read_text())
    assert "cola" in base["not_reproducible"] and "cola" not in base["tasks"]
    cfg = {**probe_config(base, "cola", 2e-5, 10), "tasks": ["cola"], "glue_dir": str(tmp_path)}
    validate_config(cfg)
    assert "cola" not in cfg["not_reproducible"] and base["not_reproducible"]["cola"]  # the base is left as it was
    assert cfg["task_settings"]["cola"]["teacher"] == {"epochs": 10, "learning_rate": 2e-5}
    with pytest.raises(ConfigError, match="not_reproducible.cola: the task is also in tasks"):
        validate_config({**base, "tasks": ["cola"], "glue_dir": str(tmp_path)})


@pytest.mark.parametrize("rate, epochs", [(0.0, 10), (-1e-5, 10), (math.nan, 10), (1e-4, 0), (1e-4, 2.5)])
def test_a_bad_probe_is_refused(rate, epochs):
    with pytest.raises(ValueError, match="learning rate|epochs"):
        probe_overlay("cola", rate, epochs)


def teacher_record(folder: Path, scores: list[float | None], kept: int, rate: float = 5e-5, metric: str = "matthews_correlation") -> Path:
    """A teacher's pruning.json as top.teacher writes it (the fields a probe reads)."""
    history = [
        {"stage": "finetune", "epoch": epoch, "epochs": len(scores), "split": "validation", "metric": metric, "score": score}
        for epoch, score in enumerate(scores, start=1)
    ]
    payload = {
        "method": "dense",
        "config": {"task": "cola", "seed": 42, "teacher": {"learning_rate": rate, "epochs": len(scores), "batch_size": 32}, "train_examples": 8551},
        "selection": {"metric": metric, "selected_epoch": kept, "score": scores[kept - 1], "history": history[::-1]},
    }
    folder.mkdir(parents=True)
    (folder / "pruning.json").write_text(json.dumps(payload))
    return folder


def test_a_probe_reads_every_epochs_dev_score_in_order_and_the_kept_one(tmp_path):
    record = probe_record(teacher_record(tmp_path / "t", [0.0, 0.21, 0.30, 0.26], kept=3))
    assert record["dev_scores"] == [0.0, 0.21, 0.30, 0.26]
    assert (record["selected_epoch"], record["selected_score"], record["epochs"], record["learning_rate"]) == (3, 0.30, 4, 5e-5)
    assert record["train_examples"] == 8551
    with pytest.raises(FileNotFoundError, match="did the probe finish"):
        probe_record(tmp_path / "missing")
    # a record without the training rows says so rather than claiming none
    unsized = teacher_record(tmp_path / "u", [0.2, 0.3], kept=2)
    payload = json.loads((unsized / "pruning.json").read_text())
    del payload["config"]["train_examples"]
    (unsized / "pruning.json").write_text(json.dumps(payload))
    assert probe_record(unsized)["train_examples"] is None


def test_the_table_gives_the_gap_to_the_expected_level_in_points(tmp_path):
    slow = {**probe_record(teacher_record(tmp_path / "a", [0.1, 0.25, 0.30], kept=3, rate=2e-5)), "seed": 42}
    fast = {**probe_record(teacher_record(tmp_path / "b", [0.3, 0.40, None], kept=2, rate=1e-4)), "seed": 42}
    expected = {"metric": "matthews_correlation", "score": 47.5, "source": "a paper"}
    frame = probe_frame([fast, slow], expected, scale=100.0)
    assert list(frame["learning_rate"]) == [2e-5, 1e-4]
    assert frame["kept_score"].tolist() == pytest.approx([30.0, 40.0])
    assert frame["gap"].tolist() == pytest.approx([-17.5, -7.5])
    assert math.isnan(frame["last_score"].iloc[1])  # an undefined correlation stays undefined
    assert frame["mean_last3"].tolist() == pytest.approx([(10 + 25 + 30) / 3, 35.0])
    table = probe_markdown(frame)
    assert frame["reached"].tolist() == [False, False]
    assert probe_frame([fast], expected, scale=100.0, tolerance=8.0)["reached"].tolist() == [True]
    assert "| 42 | 0.0001 | 3 | matthews_correlation | 2 | 40.0 | — | 35.0 | 47.5 | -7.5 | no |" in table
    # an expected level in another metric is not compared
    other = probe_frame([fast], {"metric": "accuracy", "score": 80.0}, scale=100.0)
    assert math.isnan(other["gap"].iloc[0]) and math.isnan(other["expected"].iloc[0]) and other["reached"].iloc[0] is None
    assert "| — |\n" in probe_markdown(other)


def test_a_new_probe_replaces_the_same_one_and_keeps_the_others():
    earlier = [
        {"seed": 42, "learning_rate": 5e-5, "epochs": 10, "selected_score": 0.1},
        {"seed": 42, "learning_rate": 1e-4, "epochs": 10, "selected_score": 0.2},
    ]
    new = [
        {"seed": 42, "learning_rate": 1e-4, "epochs": 10, "selected_score": 0.3},
        {"seed": 43, "learning_rate": 1e-4, "epochs": 10, "selected_score": 0.4},
    ]
    merged = merge_probes(earlier, new)
    assert sorted((r["seed"], r["learning_rate"], r["selected_score"]) for r in merged) == [(42, 5e-5, 0.1), (42, 1e-4, 0.3), (43, 1e-4, 0.4)]


@pytest.mark.slow
def test_a_tiny_probe_trains_through_the_workflow_and_writes_its_record(tmp_path):
    config = {
        "model": str(write_tiny_model(tmp_path / "model")),
        "data_source": "local",
        "tasks": ["sst2"],
        "seeds": [3],
        "device": "cpu",
        "teacher": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3},
        "train": {"batch_size": 8, "learning_rate": 1e-3},
        "methods": {"dense": {"settings": {"default": {}}}},
        "task_settings": {"sst2": {"expected_teacher": {"metric": "accuracy", "score": 90.0, "source": "test"}}},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    glue_dir = write_tiny_sst2(tmp_path / "glue")
    command = [sys.executable, str(ROOT / "benchmarks/teacher_probe.py"), "--task", "sst2", "--learning-rates", "1e-3", "3e-3"]
    command += ["--epochs", "2", "--seed", "3", "--config", str(path), "--glue-dir", str(glue_dir)]
    command += ["--results-root", str(tmp_path / "results"), "--out", str(tmp_path / "out")]
    # The probes share the repository's .snakemake folder with any other Snakemake instance there:
    # the lock of a (pretend) other instance must outlive them, as theirs must outlive each other.
    other_lock = ROOT / ".snakemake/locks" / f"{os.getpid()}.output.lock"
    other_lock.parent.mkdir(parents=True, exist_ok=True)
    other_lock.write_text(f"{tmp_path}/another-instance-output\n")
    try:
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert other_lock.is_file(), "a probe removed another Snakemake instance's lock"
    finally:
        other_lock.unlink(missing_ok=True)
    assert result.returncode == 0, result.stderr[-4000:]
    payload = json.loads((tmp_path / "out/teacher_probe_sst2.json").read_text())
    assert sorted((p["learning_rate"], p["epochs"], p["seed"]) for p in payload["probes"]) == [(1e-3, 2, 3), (3e-3, 2, 3)]
    assert all(len(p["dev_scores"]) == 2 and p["metric"] == "accuracy" and p["machine"]["cpu_model"] for p in payload["probes"])
    assert payload["expected_teacher"]["score"] == 90.0
    assert "| 3 | 0.003 | 2 | accuracy |" in (tmp_path / "out/teacher_probe_sst2.md").read_text()
    # a second call finds both probes finished and trains nothing
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stderr.count("finished before, kept") == 2
