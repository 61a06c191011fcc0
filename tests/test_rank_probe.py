"""The ranking-distillation probe (top/analysis/rank_probe.py) on a tiny random BERT and tiny
SQuAD-format files: the ranking loss alone teaches the layer the teacher's order; the probe
leaves the teacher untouched and measures before training and after every epoch."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import AutoTokenizer, BertForQuestionAnswering

from tests.conftest import TINY_QA, tiny_config, write_tiny_model, write_tiny_squad
from top.analysis.rank_probe import DROPS, ProbeSettings, RandomKeep, probe_ranking_distillation
from top.encoder import PrunableModel
from top.pruning.base import LayerContext
from top.pruning.topk import TopKSelector
from top.tasks.base import QATask
from top.tasks.settings import QASettings, TaskConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("probe")
    folder = write_tiny_model(tmp_path / "model", layers=3)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    teacher = PrunableModel(BertForQuestionAnswering(tiny_config(vocab_size=tokenizer.vocab_size, num_hidden_layers=3)).eval())
    settings = QASettings(n_best_size=20, max_answer_length=30, null_threshold=0.0, protect_question=False, **TINY_QA)
    task = QATask(TaskConfig(data_source="local", glue_dir=None, squad_dir=str(write_tiny_squad(tmp_path / "squad")), qa=settings), "squad")
    return teacher, task.train_features(tokenizer, None, 0), task.collate(tokenizer)


def test_the_ranking_loss_alone_teaches_the_layer_the_teachers_last_layer_order(setup):
    teacher, train, collate = setup
    before = {name: p.detach().clone() for name, p in teacher.hf.named_parameters()}
    # measured on the training features themselves: what the loss was shown
    settings = ProbeSettings(layer=1, epochs=4, batch_size=8, learning_rate=1e-2, task_loss=False)
    curve = probe_ranking_distillation(teacher, train, train, collate, settings)
    assert [entry["epoch"] for entry in curve] == [0, 1, 2, 3, 4]
    per_epoch = -(-len(train) // 8)
    assert [entry["steps"] for entry in curve] == [0, per_epoch, 2 * per_epoch, 3 * per_epoch, 4 * per_epoch]
    assert curve[0]["loss"] is None and all(entry["loss"] == entry["rank_loss"] for entry in curve[1:])
    assert curve[-1]["spearman"] > curve[0]["spearman"] + 0.3
    assert curve[-1]["top_spearman"] > curve[0]["top_spearman"]
    assert curve[-1]["rank_loss"] < curve[1]["rank_loss"]
    # the teacher is the same model afterwards
    assert all(torch.equal(p, before[name]) for name, p in teacher.hf.named_parameters())


def test_with_the_task_loss_the_whole_model_trains_and_a_zero_weight_is_the_task_alone(setup):
    teacher, train, collate = setup
    settings = ProbeSettings(layer=1, epochs=1, batch_size=8, learning_rate=1e-3, task_loss=True, rank_weight=0.0)
    curve = probe_ranking_distillation(teacher, train, train, collate, settings)
    assert len(curve) == 2 and curve[1]["rank_loss"] > 0 and curve[1]["loss"] != curve[1]["rank_loss"]
    with pytest.raises(ValueError, match="below the teacher's last"):
        probe_ranking_distillation(teacher, train, train, collate, ProbeSettings(layer=2))


def test_distillation_under_a_pruning_schedule_trains_the_whole_model_and_measures_every_token(setup):
    teacher, train, collate = setup
    before = {name: p.detach().clone() for name, p in teacher.hf.named_parameters()}
    curves = {}
    for drop in DROPS:
        torch.manual_seed(0)
        settings = ProbeSettings(
            layer=1, epochs=1, batch_size=8, learning_rate=1e-3, rank_weight=0.0, distill_weight=1.0, keep_ratios=(1.0, 0.5, 0.3), drop=drop
        )
        curves[drop] = probe_ranking_distillation(teacher, train, train, collate, settings)
    for curve in curves.values():
        # before training the student is the teacher; the loss is the distillation alone (rank weight 0)
        assert curve[0]["spearman"] == curves["scores"][0]["spearman"]
        assert curve[1]["loss"] > 0 and curve[1]["loss"] != curve[1]["rank_loss"] and curve[1]["features"] == len(train)
    assert curves["scores"][1]["spearman"] != curves["random"][1]["spearman"]
    assert all(torch.equal(p, before[name]) for name, p in teacher.hf.named_parameters())
    with pytest.raises(ValueError, match="keep_ratios has 2 entries"):
        probe_ranking_distillation(teacher, train, train, collate, ProbeSettings(layer=1, distill_weight=1.0, keep_ratios=(1.0, 0.5)))
    with pytest.raises(ValueError, match="drop 'worst'"):
        ProbeSettings(drop="worst")


def test_random_keep_keeps_as_many_tokens_as_top_k_chosen_at_random():
    torch.manual_seed(0)
    alive = torch.ones(64, 20, dtype=torch.bool)
    alive[:, 15:] = False  # padding
    ctx = LayerContext(
        layer=1,
        attention_probs=None,
        hidden=torch.zeros(64, 20, 4),
        alive=alive,
        positions=torch.arange(20).expand(64, 20),
        input_lengths=torch.full((64,), 15),
        token_scores=torch.linspace(1, 0, 20).expand(64, 20).clone(),
    )
    top = TopKSelector(0.4)(ctx).hard
    random = RandomKeep(0.4)(ctx).hard
    assert (random.sum(dim=1) == top.sum(dim=1)).all() and (top.sum(dim=1) == 6).all()
    assert random[:, 0].all() and not (random & ~alive).any()
    # top-k keeps the first six slots (the best scores) every time; random keeps each other alive
    # slot about 5 times in 14
    assert (top[:, :6]).all()
    share = random[:, 1:15].float().mean(dim=0)
    assert share.min() > 0.15 and share.max() < 0.6


def test_the_script_writes_each_condition_and_resumes_without_running_it_again(tmp_path, monkeypatch, caplog):
    import json
    import runpy
    import sys
    from pathlib import Path

    import yaml
    from snakemake.utils import validate

    from tests.conftest import tiny_squad_config
    from top.pipeline import finetune_teacher

    root = Path(__file__).resolve().parents[1]
    methods = {"dense": {"settings": {"default": {}}}, "topk": {"settings": {"keep2x": {"keep_ratios": [1.0, 0.6, 0.5, 0.4]}}}}
    cfg = tiny_squad_config(tmp_path, methods, eval={"batch_size": 16})
    validate(cfg, str(root / "workflow/schemas/config.schema.yaml"))  # fills the schema's defaults
    teacher = tmp_path / "teacher"
    finetune_teacher(cfg, "squad", 3, teacher)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "probe.json"
    argv = ["rank_probe.py", "--config", str(config_file), "--teacher", str(teacher), "--train-limit", "20", "--dev-limit", "6"]
    argv += ["--epochs", "1", "--batch-size", "8", "--out", str(out)]

    def run(*conditions: str) -> dict:
        monkeypatch.setattr(sys, "argv", [*argv, "--conditions", *conditions])
        runpy.run_path(str(root / "benchmarks/rank_probe.py"), run_name="__main__")
        return json.loads(out.read_text())

    first = run("rank")
    assert list(first["runs"]) == ["rank"] and first["task"] == "squad" and first["train_features"] > 0
    assert [entry["epoch"] for entry in first["runs"]["rank"]["curve"]] == [0, 1]
    with caplog.at_level(logging.INFO, logger="rank_probe"):
        second = run("rank", "task")
    assert "rank: already in" in caplog.text
    assert second["runs"]["rank"] == first["runs"]["rank"] and second["runs"]["task"]["settings"]["rank_weight"] == 0.0
    # a record written before the probe had a setting counts that setting at its default
    for key in ("distill_weight", "keep_ratios", "drop"):
        del second["runs"]["task"]["settings"][key]
    out.write_text(json.dumps(second))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rank_probe"):
        third = run("task", "distill+random")
    assert "task: already in" in caplog.text
    assert third["runs"]["distill+random"]["settings"]["keep_ratios"] == [1.0, 0.6, 0.5, 0.4]
    assert third["runs"]["distill+random"]["settings"]["drop"] == "random"
    # a pruned condition needs a top-k setting with keep ratios
    monkeypatch.setattr(sys, "argv", [*argv, "--conditions", "distill+topk", "--keep-setting", "keep9x"])
    with pytest.raises(SystemExit):
        runpy.run_path(str(root / "benchmarks/rank_probe.py"), run_name="__main__")
