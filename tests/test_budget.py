"""Training budgets (top/budget.py): optimiser steps per method setting counted from the
configuration, the same count the training loop runs, the check that refuses unequal budgets
(at workflow start, top/preflight.py), and config/reproduction.yaml passing it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate
from transformers import BertConfig

from tests.conftest import tiny_config, write_tiny_model, write_tiny_sst2
from top.budget import (
    Throughput,
    batches_per_epoch,
    budget_spread,
    check_budgets,
    estimate_task,
    run_budget,
    stage_steps,
    task_budgets,
    teacher_budget,
)
from top.config import ablation_scales
from top.preflight import PreflightError, run_preflight

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = str(ROOT / "workflow/schemas/config.schema.yaml")
# Training rows of the GLUE tasks (the nyu-mll/glue dataset card; the local files have the same)
GLUE_TRAIN_ROWS = {"cola": 8551, "sst2": 67349, "mrpc": 3668, "stsb": 5749, "rte": 2490}
MINILM = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)


def config(**changes) -> dict:
    cfg = {
        "model": "unused",
        "tasks": ["mrpc"],
        "methods": {
            "dense": {"settings": {"default": {}}},
            "topk": {"common": {"finetune_epochs": 2}, "settings": {"a": {"keep_ratios": [0.9, 0.5, 0.4]}}},
            "ltp": {"common": {"soft_epochs": 1.5, "hard_epochs": 1}, "settings": {"l": {"reg_lambda": 0.1}}},
            "power_bert": {"common": {"search_epochs": 1, "retrain_epochs": 2}, "settings": {"p": {}}},
            "top": {"common": {"epochs": 2, "lagrangian_warmup_epochs": 1, "finetune_epochs": 1}, "settings": {"t": {}}},
        },
        "train": {"batch_size": 32},
    }
    cfg.update(changes)
    validate(cfg, SCHEMA)
    return cfg


def test_stage_steps_counts_short_last_batches_and_fractional_epochs():
    assert batches_per_epoch(100, 32) == 4 and batches_per_epoch(96, 32) == 3
    assert stage_steps(2, 4) == 8
    assert stage_steps(1.5, 4) == 6 and stage_steps(0.3, 4) == 2  # ceil(1.2)
    assert stage_steps(0.01, 4) == 1  # at least one step
    with pytest.raises(ValueError, match="rows and batch_size must be positive"):
        batches_per_epoch(0, 32)


def test_each_method_sums_its_own_stages():
    cfg = config()
    steps = {(b.method, b.setting): b for b in task_budgets(cfg, "mrpc", 100, tiny_config())}
    assert "dense" not in {method for method, _ in steps}  # the teacher trains, not a method
    topk, ltp, power, top = steps["topk", "a"], steps["ltp", "l"], steps["power_bert", "p"], steps["top", "t"]
    assert [(s.name, s.steps) for s in topk.stages] == [("finetune", 8)]
    assert [(s.name, s.steps) for s in ltp.stages] == [("soft", 6), ("hard", 4)]
    assert [(s.name, s.steps) for s in power.stages] == [("search", 4), ("retrain", 8)]
    assert [(s.name, s.steps) for s in top.stages] == [("prune", 8), ("finetune", 4)]
    assert (topk.total_steps, ltp.total_steps, power.total_steps, top.total_steps) == (8, 10, 12, 12)
    assert ltp.describe() == "soft 1.5 epochs + hard 1 epochs = 10 steps (batch 32, 100 rows)"


def test_batch_size_and_train_limit_resolve_per_task_and_method():
    cfg = config(task_settings={"mrpc": {"train": {"train_limit": 64}, "methods": {"ltp": {"train": {"batch_size": 16}}}}})
    ltp = run_budget(cfg, "mrpc", "ltp", "l", 100, tiny_config())
    assert ltp.rows == 64 and {s.batch_size for s in ltp.stages} == {16}
    assert ltp.total_steps == stage_steps(1.5, 4) + stage_steps(1, 4)
    topk = run_budget(cfg, "mrpc", "topk", "a", 100, tiny_config())
    assert topk.rows == 64 and topk.total_steps == 2 * 2  # batch 32
    assert run_budget(cfg, "mrpc", "topk", "a", 40, tiny_config()).rows == 40  # fewer rows than the limit


def test_teacher_budget_uses_the_task_teacher_settings():
    cfg = config(teacher={"epochs": 3, "batch_size": 10}, task_settings={"mrpc": {"teacher": {"epochs": 5}}})
    teacher = teacher_budget(cfg, "mrpc", 95)
    assert (teacher.method, teacher.total_steps, teacher.rows) == ("dense", 5 * 10, 95)


def test_unequal_budgets_are_refused_naming_the_settings():
    budgets = task_budgets(config(), "mrpc", 100, tiny_config())
    assert budget_spread(budgets) == pytest.approx((12 - 8) / 12)
    (problem,) = check_budgets(budgets, tolerance=0.1)
    assert problem.startswith("task mrpc: training budgets differ by 33.3% (budget_tolerance 10%); largest power_bert/p:")
    assert "topk/a: finetune 2 epochs = 8 steps (batch 32, 100 rows)" in problem
    assert "ltp/l: soft 1.5 epochs + hard 1 epochs = 10 steps" in problem
    assert "top/t" not in problem  # 12 steps, as the largest
    assert check_budgets(budgets, tolerance=0.34) == []


def test_a_method_without_training_stages_has_no_budget():
    cfg = config()
    cfg["methods"]["topk"]["common"]["finetune_epochs"] = 0
    budgets = [b for b in task_budgets(cfg, "mrpc", 100, tiny_config()) if b.method in ("topk", "top")]
    assert [b.total_steps for b in budgets] == [0, 12]
    (problem,) = check_budgets(budgets, tolerance=0.5)
    assert "topk/a: no training stage = 0 steps" in problem


def test_estimate_counts_top_prune_at_its_own_rate():
    cfg = config(seeds=[1, 2], teacher={"epochs": 1, "batch_size": 32})
    rate = Throughput(dense=32.0, top_prune=16.0, source="test")
    est = estimate_task(cfg, "mrpc", 64, tiny_config(), rate, overhead_s_per_run=36.0)
    # 2 batches of 32 per epoch; teacher 1 epoch: 64 ex / 32 = 2 s
    assert est.teacher_h == pytest.approx(2 / 3600)
    # topk 4 steps, ltp 3 + 2, power 2 + 4, top prune 4 (at 16/s) + finetune 2: every step is 32 examples
    dense_steps, prune_steps = 4 + 5 + 6 + 2, 4
    assert est.methods_h == pytest.approx((dense_steps * 32 / 32 + prune_steps * 32 / 16) / 3600)
    assert est.runs_per_seed == 5 and est.overhead_h == pytest.approx(5 * 36 / 3600)
    assert est.total_h == pytest.approx(2 * est.per_seed_h)


def test_an_ablation_is_held_to_its_budget_scale():
    """A setting twice as long is allowed as an ablation with budget_scale 2, and only so."""
    cfg = config()
    cfg["methods"]["top"]["settings"]["long"] = {"epochs": 4, "lagrangian_warmup_epochs": 2, "finetune_epochs": 2}
    cfg["methods"]["topk"]["common"]["finetune_epochs"] = 3  # 12 steps, as power_bert and top
    cfg["methods"]["ltp"]["common"].update(soft_epochs=2, hard_epochs=1)
    budgets = task_budgets(cfg, "mrpc", 100, tiny_config())
    (problem,) = check_budgets(budgets, tolerance=0.02)
    assert "largest top/long: prune 4 epochs" in problem
    assert check_budgets(budgets, tolerance=0.02, scales={("top", "long"): 2.0}) == []
    (problem,) = check_budgets(budgets, tolerance=0.02, scales={("top", "long"): 1.5})
    assert "largest top/long:" in problem and "(budget_scale 1.5)" in problem


def test_reproduction_config_gives_every_method_the_same_steps():
    cfg = yaml.safe_load((ROOT / "config/reproduction.yaml").read_text())
    validate(cfg, SCHEMA)
    assert cfg["budget_tolerance"] == 0.02
    methods = {m for m in cfg["methods"] if m != "dense"}
    assert methods == {"topk", "ltp", "power_bert", "top"}
    scales = ablation_scales(cfg)
    for task in cfg["tasks"]:
        budgets = task_budgets(cfg, task, GLUE_TRAIN_ROWS[task], MINILM)
        assert check_budgets(budgets, cfg["budget_tolerance"], scales) == []
        assert len({b.total_steps / scales.get((b.method, b.setting), 1.0) for b in budgets}) == 1, task
        curve = [b for b in budgets if (b.method, b.setting) not in scales]
        assert len(curve) >= 3 * len(methods)  # at least three settings per method
        assert all({s.batch_size for s in b.stages} == {32} for b in budgets)


def test_training_runs_the_counted_steps():
    """The loop's stage length is stage_steps(epochs, batches per epoch): 40 rows in batches of
    16 (a short last batch) for 1.5 epochs are 5 steps."""
    from tests.test_train import collate0, make_model, toy_data
    from top.pruning.dense import Finetune
    from top.train import TrainSettings, run_stages

    model = make_model()
    settings = TrainSettings(batch_size=16, learning_rate=1e-4, seed=0, log_every=1)
    history = run_stages(model, Finetune(model.config, 1.5), toy_data(40), settings, collate=collate0)
    steps = [record["step"] for record in history]
    assert steps == list(range(5)) and stage_steps(1.5, batches_per_epoch(40, 16)) == 5


# ---- at workflow start ---------------------------------------------------------------------


def preflight_config(tmp_path: Path, tolerance) -> dict:
    cfg = {
        "model": str(write_tiny_model(tmp_path / "model")),
        "data_source": "local",
        "glue_dir": str(write_tiny_sst2(tmp_path / "glue")),  # 48 training rows: 2 batches of 32
        "tasks": ["sst2"],
        "device": "cpu",
        "results_dir": str(tmp_path / "results"),
        "budget_tolerance": tolerance,
        "methods": {
            "dense": {"settings": {"default": {}}},
            "topk": {"common": {"finetune_epochs": 2}, "settings": {"a": {"keep_ratios": [0.9, 0.5]}}},
            "ltp": {"common": {"soft_epochs": 2, "hard_epochs": 1}, "settings": {"b": {}}},
        },
    }
    validate(cfg, SCHEMA)
    return cfg


def test_preflight_refuses_unequal_budgets_with_the_data_row_counts(tmp_path):
    cfg = preflight_config(tmp_path, 0.02)
    with pytest.raises(PreflightError) as error:
        run_preflight(cfg, cache_file=None)
    message = str(error.value)
    assert "task sst2: training budgets differ by 33.3% (budget_tolerance 2%); largest ltp/b: soft 2 epochs + hard 1 epochs = 6 steps" in message
    assert "topk/a: finetune 2 epochs = 4 steps (batch 32, 48 rows)" in message


def test_preflight_passes_equal_budgets_and_skips_the_check_without_a_tolerance(tmp_path):
    cfg = preflight_config(tmp_path, 0.02)
    cfg["methods"]["topk"]["common"]["finetune_epochs"] = 3
    report = run_preflight(cfg, cache_file=None)
    assert "training budgets" in report.checked
    unchecked = preflight_config(tmp_path, None)
    assert "training budgets" not in run_preflight(unchecked, cache_file=None).checked


def test_preflight_notes_tasks_whose_rows_it_cannot_count(tmp_path):
    cfg = preflight_config(tmp_path, 0.02)
    cfg["methods"]["topk"]["common"]["finetune_epochs"] = 3
    cfg["data_source"] = "hub"
    cfg["glue_dir"] = None
    from top.preflight import PreflightReport, _VerdictCache, check_training_budgets

    report = PreflightReport()
    assert check_training_budgets(cfg, _VerdictCache(None), report) == []
    assert any("training budgets not checked for sst2" in note for note in report.notes)
