"""SQuAD token diagnostics (top/analysis/squad_tokens.py, benchmarks/squad_diagnostics.py) on a
tiny random BERT and tiny SQuAD-format files: golden shares with a selector that drops one
word, and a whole run (teacher, ToP with the question protected, evaluation) diagnosed from its
model folder."""

from __future__ import annotations

import json
import logging
import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from snakemake.utils import validate
from transformers import AutoTokenizer, BertForQuestionAnswering

from tests.conftest import TINY_QA, tiny_config, tiny_squad_config, write_tiny_model, write_tiny_squad
from top.analysis.squad_tokens import (
    GROUPS,
    answer_groups,
    answer_ranking,
    final_layer_agreement,
    gold_spans,
    layer_shares,
    squad_token_diagnostics,
    surviving_windows,
    token_roles,
    trace_survival,
    trace_token_scores,
)
from top.encoder import PrunableModel
from top.evaluate import predict
from top.pruning.base import KeepDecision, TokenSelector
from top.tasks.base import QATask
from top.tasks.settings import QASettings, TaskConfig

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = str(ROOT / "workflow/schemas/config.schema.yaml")


class DropWord(TokenSelector):
    """Drops every token whose id is ``token_id`` (reads the batch's ids, set by a hook)."""

    needs_attention_probs = False

    def __init__(self, token_id: int):
        super().__init__()
        self.token_id = token_id
        self.ids: torch.Tensor | None = None

    def forward(self, ctx):
        ids = self.ids.to(ctx.positions.device).gather(1, ctx.positions)
        return KeepDecision(hard=ctx.alive & (ids != self.token_id))


def qa_task(squad_dir: Path, protect: bool = False) -> QATask:
    settings = QASettings(n_best_size=20, max_answer_length=30, null_threshold=0.0, protect_question=protect, **TINY_QA)
    return QATask(TaskConfig(data_source="local", glue_dir=None, squad_dir=str(squad_dir), qa=settings), "squad")


def test_golden_shares_groups_and_head_inputs_when_one_word_is_dropped(tmp_path):
    folder = write_tiny_model(tmp_path / "model", layers=3)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    model = PrunableModel(BertForQuestionAnswering(tiny_config(vocab_size=tokenizer.vocab_size, num_hidden_layers=3)).eval())
    fun = tokenizer.convert_tokens_to_ids("fun")
    selector = DropWord(fun)
    model.set_selectors({1: selector})  # dropped before layer 2 and at the end
    model.register_forward_pre_hook(lambda module, args, kwargs: setattr(selector, "ids", kwargs["input_ids"]), with_kwargs=True)
    task = qa_task(write_tiny_squad(tmp_path / "squad"))
    dataset = task.dev_features("validation", tokenizer, None)
    rows = task.dev_rows("validation", None)
    assert len(rows) == 12 and len(dataset) > 12  # several windows per question

    # the expectation, counted from the tokens: "fun" occurs in the context only inside the
    # answer "good fun" (fillers are the, a, movie, ... awful), and once in its question
    expected_features = {"fun": 0, "plot": 0}
    fun_context = fun_question = contexts = 0
    for ids, offsets in zip(dataset["input_ids"], dataset["offset_mapping"]):
        context = [i for i, offset in enumerate(offsets) if offset != [-1, -1]]
        contexts += len(context)
        fun_context += sum(ids[i] == fun for i in context)
        fun_question += sum(ids[i] == fun for i in range(len(ids)) if i not in context)
        for word in ("fun", "plot"):
            last = [i for i in context if ids[i] == tokenizer.convert_tokens_to_ids(word)]
            expected_features[word] += bool(last and last[0] - 1 in context)  # the whole two-token answer
    answer_features = expected_features["fun"] + expected_features["plot"]

    survival = trace_survival(model, dataset, task.collate(tokenizer), batch_size=5)
    spans = gold_spans(rows, dataset)
    assert sum(bool(s) for s in spans) == answer_features and all(last == first + 1 for s in spans for first, last in s)
    questions, context_masks = token_roles(dataset, tokenizer.all_special_ids)
    assert all(int(q.sum()) == 4 for q in questions)  # "which fun was it"
    shares = layer_shares(survival.alive, spans, questions, context_masks)
    assert len(shares) == 4  # entering layers 0, 1, 2, then after the last
    for entry in shares[:2]:
        assert entry["answer_tokens_dropped"] == entry["question_tokens_dropped"] == entry["context_tokens_dropped"] == 0
    for entry in shares[2:]:
        assert entry["answer_tokens_dropped"] == pytest.approx(expected_features["fun"] / (2 * answer_features))
        assert entry["answer_features_broken"] == pytest.approx(expected_features["fun"] / answer_features)
        assert entry["question_tokens_dropped"] == pytest.approx(fun_question / (4 * len(dataset)))
        assert entry["context_tokens_dropped"] == pytest.approx(fun_context / contexts)
    groups = answer_groups(rows, dataset, spans, survival.alive)
    assert {qid: group for qid, group in groups.items()} == {
        row["id"]: ("answer_dropped" if "fun" in row["question"] else "answer_kept") for row in rows
    }

    # the span head's inputs at dropped positions: carry (evaluated), zero (bias), exclude
    preds = predict(model, dataset, task.collate(tokenizer), batch_size=5)
    np.testing.assert_allclose(survival.logits["carry"], preds.logits, rtol=1e-5, atol=1e-5)
    bias = model.hf.qa_outputs.bias.detach().numpy()
    for f, alive in enumerate(survival.alive):
        dropped = ~alive[-1] & alive[0]
        np.testing.assert_allclose(survival.logits["zero"][f, : alive.shape[1]][dropped], np.broadcast_to(bias, (int(dropped.sum()), 2)), rtol=1e-6)
        np.testing.assert_allclose(
            survival.logits["zero"][f, : alive.shape[1]][alive[-1]], survival.logits["carry"][f, : alive.shape[1]][alive[-1]], rtol=1e-5, atol=1e-6
        )
    windows = surviving_windows(dataset.select_columns(["example_id", "offset_mapping"]).to_list(), survival.alive)
    assert (
        sum(offset == [-1, -1] for w in windows for offset in w["offset_mapping"])
        == sum(sum(offset == [-1, -1] for offset in offsets) for offsets in dataset["offset_mapping"]) + fun_context
    )

    result = squad_token_diagnostics(model, task, tokenizer, batch_size=5)
    assert result["groups"] == {"answer_kept": 6, "answer_dropped": 6, "answer_outside": 0, "unanswerable": 0}
    assert result["num_layers"] == 3 and result["questions"] == 12 and result["features"] == len(dataset)
    assert result["summary"]["answer_tokens_dropped_before_last_layer"] == pytest.approx(expected_features["fun"] / (2 * answer_features))
    assert result["summary"]["answer_dropped_questions"] == 0.5
    assert result["scores"]["carry"]["all"] == {
        "questions": 12,
        **{k: v for k, v in task.score("validation", dataset, preds.logits, None, None).items() if k != "total"},
    }
    # excluded positions start or end no answer (a span may still run across one)
    assert result["predicted_spans"]["exclude"]["start_or_end_dropped"] == 0.0
    assert sum(result["scores"]["zero"][group]["questions"] for group in GROUPS) == 12
    assert set(result["dropped_states"]) == {"carry", "zero", "exclude"}
    assert result["reference_ranking"] is None  # no reference, no ranking of one
    # the model's own scores with every token kept, ranked against the answers per layer
    dense_scores = trace_token_scores(model, dataset, task.collate(tokenizer), batch_size=5)
    assert result["ranking"] == answer_ranking(dense_scores, spans, context_masks)
    assert result["summary"]["answer_auc_by_layer"] == [entry["answer_auc"] for entry in result["ranking"]]
    # the dropping layer's own states: a pass each, the same groups
    more = squad_token_diagnostics(model, task, tokenizer, batch_size=5, states=("carry", "carry_attention", "carry_layer"))
    assert set(more["scores"]) == {"carry", "carry_attention", "carry_layer"} and more["groups"] == result["groups"]
    assert more["scores"]["carry"] == result["scores"]["carry"]
    assert "f1_answer_dropped_carry_layer" in more["summary"]
    with pytest.raises(ValueError, match="states must be a non-empty selection"):
        squad_token_diagnostics(model, task, tokenizer, states=("stale",))


def squad_config(tmp_path: Path) -> dict:
    top = {"target_sparsity": 0.3, "epochs": 1, "lagrangian_warmup_epochs": 0.5, "bin_num": 4, "flops_lengths": "validation"}
    methods = {"dense": {"settings": {"default": {}}}, "top": {"settings": {"t30": top}}}
    cfg = tiny_squad_config(tmp_path, methods, qa={**TINY_QA, "protect_question": True}, eval={"batch_size": 16})
    validate(cfg, SCHEMA)
    return cfg


def test_a_protected_top_run_is_diagnosed_from_its_model_folder(tmp_path, monkeypatch, caplog):
    from top.pipeline import count_flops, evaluate_run, finetune_teacher, train_method

    cfg = squad_config(tmp_path)
    teacher, run = tmp_path / "results/teachers/squad/seed3", tmp_path / "results/models/squad/top/t30/seed3"
    finetune_teacher(cfg, "squad", 3, teacher)
    with caplog.at_level(logging.INFO, logger="top.pruning.top.method"):
        train_method(cfg, "squad", "top", "t30", 3, teacher, run)
    record = json.loads((run / "pruning.json").read_text())
    assert record["decisions"]["protected_tokens"] is True
    metrics = evaluate_run(cfg, "squad", run, tmp_path / "metrics.json", tmp_path / "lengths.npz", {})
    flops = count_flops(run, tmp_path / "lengths.npz", tmp_path / "flops.json", {})
    # the calibration met the target on the dev features' lengths and protected counts: the
    # evaluated model (the same features, the question protected) has exactly those FLOPs
    calibrated = re.search(r"ToP calibration: deterministic sparsity [\d.]+ -> ([\d.]+)", caplog.text)
    assert calibrated is not None
    assert flops["achieved_sparsity"] == pytest.approx(float(calibrated.group(1)), abs=1e-4)

    out = tmp_path / "diagnostics.json"
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump({k: v for k, v in cfg.items()}))
    argv = ["squad_diagnostics.py", "--config", str(config_file), "--model", str(run), "--reference", str(teacher), "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(ROOT / "benchmarks/squad_diagnostics.py"), run_name="__main__")
    result = json.loads(out.read_text())  # strict JSON
    assert result["method"] == "top" and result["task"] == "squad" and result["protected_tokens"] is True
    assert result["decisions"] == record["decisions"]  # the kept rank bins, as exported
    assert result["num_layers"] == 4 and len(result["layers"]) == 4
    for entry in (*result["layers"], result["after_last_layer"]):
        assert entry["question_tokens_dropped"] == 0.0  # protected
    assert result["layers"][0]["context_tokens_dropped"] == 0.0 and result["after_last_layer"]["context_tokens_dropped"] > 0
    assert result["scores"]["carry"]["all"]["f1"] == pytest.approx(metrics["splits"]["validation"]["f1"])
    assert result["scores"]["reference"]["all"]["questions"] == 12
    assert sum(result["groups"].values()) == 12
    np.testing.assert_allclose(result["mean_tokens_kept"], np.load(tmp_path / "lengths.npz")["lengths_kept"].mean(axis=0))
    # the teacher's dense token scores ranked against the answers, one entry per layer
    ranking = result["reference_ranking"]
    assert [entry["layer"] for entry in ranking] == [0, 1, 2, 3] and all(entry["features"] > 0 for entry in ranking)
    assert all(0.0 <= entry["answer_auc"] <= 1.0 and set(entry["answer_kept"]) == {"0.25", "0.5"} for entry in ranking)
    assert result["summary"]["reference_answer_auc_by_layer"] == [entry["answer_auc"] for entry in ranking]
    assert len(result["ranking"]) == 4 and result["ranking"] != ranking  # the student's own, not the teacher's
    agreement = result["agreement"]
    assert [entry["layer"] for entry in agreement] == [0, 1, 2, 3] and all(-1.0 <= entry["spearman"] <= 1.0 for entry in agreement)
    assert result["summary"]["final_layer_spearman_by_layer"] == [entry["spearman"] for entry in agreement]

    # --ranking-only: the same token-score pass alone
    monkeypatch.setattr(sys, "argv", [*argv[:-1], str(tmp_path / "ranking.json"), "--ranking-only"])
    runpy.run_path(str(ROOT / "benchmarks/squad_diagnostics.py"), run_name="__main__")
    alone = json.loads((tmp_path / "ranking.json").read_text())
    assert "scores" not in alone and alone["questions"] == 12
    assert {key: alone[key] for key in ("ranking", "reference_ranking", "agreement")} == {
        key: result[key] for key in ("ranking", "reference_ranking", "agreement")
    }
    # the teacher against itself: its last layer orders every token as the reference's
    argv = ["squad_diagnostics.py", "--config", str(config_file), "--model", str(teacher), "--reference", str(teacher), "--ranking-only"]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(tmp_path / "self.json")])
    runpy.run_path(str(ROOT / "benchmarks/squad_diagnostics.py"), run_name="__main__")
    itself = json.loads((tmp_path / "self.json").read_text())
    assert itself["ranking"] == itself["reference_ranking"]
    assert itself["agreement"][-1]["spearman"] == pytest.approx(1.0) and itself["agreement"][-1]["top_spearman"] == pytest.approx(1.0)
    assert itself["agreement"][0]["spearman"] < 1.0


def test_answer_ranking_counts_answer_tokens_among_the_best_scored_candidates():
    # feature a: context at 1..4, answer 2..3; feature b: context at 1..3, answer at 2;
    # feature c holds no answer and feature d's answer is its whole context: neither counts
    candidates = [np.array([0, 1, 1, 1, 1, 0], bool), np.array([0, 1, 1, 1, 0], bool), np.array([0, 1, 1, 0], bool), np.array([0, 1, 1, 0], bool)]
    spans = [[(2, 3)], [(2, 2)], [], [(1, 2)]]
    a = np.array([[0, 1, 5, 4, 2, 9], [0, 5, 1, 2, 4, 9], [0, 3, 3, 3, 3, 9]], np.float32)  # layers: best, worst, ties
    b = np.array([[0, 1, 7, 2, 9], [0, 2, 0, 1, 9], [0, 1, 1, 1, 9]], np.float32)
    other = np.zeros((3, 4), np.float32)
    ranking = answer_ranking([a, b, other, other], spans, candidates, keep_ratios=(0.25, 0.5))
    assert [entry["features"] for entry in ranking] == [2, 2, 2]
    # best: every answer token above every other context token; kept: a 1 of 2 at 1 slot, 2 at
    # 2; b (ceil(0.75) = 1, ceil(1.5) = 2 slots) 1 of 1 either way
    assert ranking[0]["answer_auc"] == 1.0
    assert ranking[0]["answer_kept"] == {"0.25": pytest.approx(2 / 3), "0.5": 1.0}
    assert ranking[1]["answer_auc"] == 0.0 and ranking[1]["answer_kept"] == {"0.25": 0.0, "0.5": 0.0}
    # ties count half in the AUC and keep the earlier token: a keeps 1 then 1, 2; b keeps 1 then 1, 2
    assert ranking[2]["answer_auc"] == 0.5
    assert ranking[2]["answer_kept"] == {"0.25": 0.0, "0.5": pytest.approx(2 / 3)}
    assert answer_ranking([other], [[]], [candidates[2]])[0] == {
        "layer": 0,
        "answer_auc": None,
        "answer_kept": {"0.25": None, "0.5": None},
        "features": 0,
    }


def test_final_layer_agreement_ranks_each_layer_against_the_reference_last_layer():
    # feature a: 5 candidates at 1..5, the reference orders them 1 > 2 > ... > 5; layers: the
    # same order, the reverse, constant. feature b has 2 candidates (too few to count);
    # feature c's reference scores are constant (no rank correlation), its own fall 0 > 1 > 2 > 3.
    candidates = [np.array([0, 1, 1, 1, 1, 1, 0], bool), np.array([0, 1, 1, 0], bool), np.array([1, 1, 1, 1], bool)]
    reference = [np.array([9, 5, 4, 3, 2, 1, 9], np.float32), np.array([0, 2, 1, 0], np.float32), np.ones(4, np.float32)]
    a = np.array([[0, 9, 8, 7, 6, 5, 0], [0, 1, 2, 3, 4, 5, 0], [0, 3, 3, 3, 3, 3, 0]], np.float32)
    b = np.zeros((3, 4), np.float32)
    c = np.tile(np.array([4, 3, 2, 1], np.float32), (3, 1))
    agreement = final_layer_agreement([a, b, c], reference, candidates, top=3, keep_ratios=(0.25, 0.5))
    assert [entry["features"] for entry in agreement] == [2, 2, 2]
    assert [entry["spearman_features"] for entry in agreement] == [1, 1, 0]
    assert agreement[0]["spearman"] == pytest.approx(1.0) and agreement[0]["top_spearman"] == pytest.approx(1.0)
    assert agreement[1]["spearman"] == pytest.approx(-1.0) and agreement[1]["top_spearman"] == pytest.approx(-1.0)
    assert agreement[2]["spearman"] is None and agreement[2]["top_spearman"] is None
    # the reference's top 3: a's tokens 1, 2, 3; c's first three (equal scores: the earlier first).
    # Kept among the layer's best ceil(0.25 n) and ceil(0.5 n): a 2 and 3 of 3 (same order), 0 and
    # 1 (reversed), 2 and 3 (constant: the earlier first); c 1 and 2 of 3 in every layer
    assert agreement[0]["top_kept"] == {"0.25": pytest.approx(3 / 6), "0.5": pytest.approx(5 / 6)}
    assert agreement[1]["top_kept"] == {"0.25": pytest.approx(1 / 6), "0.5": pytest.approx(3 / 6)}
    assert agreement[2]["top_kept"] == agreement[0]["top_kept"]
    # a list shorter than `top` is ranked whole
    whole = final_layer_agreement([a], reference[:1], candidates[:1], top=20)[0]
    assert whole["top_spearman"] == pytest.approx(whole["spearman"]) == pytest.approx(1.0)


def test_token_scores_are_each_layers_attention_received_whatever_the_batch(tmp_path):
    folder = write_tiny_model(tmp_path / "model", layers=3)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    hf = BertForQuestionAnswering(tiny_config(vocab_size=tokenizer.vocab_size, num_hidden_layers=3)).eval()
    task = qa_task(write_tiny_squad(tmp_path / "squad"))
    dataset = task.dev_features("validation", tokenizer, None)
    scores = trace_token_scores(PrunableModel(hf), dataset, task.collate(tokenizer), batch_size=4)
    assert len(scores) == len(dataset)
    for index in (0, len(dataset) - 1):
        feature = dataset[index]
        ids = torch.tensor([feature["input_ids"]])
        with torch.no_grad():
            attentions = hf(input_ids=ids, token_type_ids=torch.tensor([feature["token_type_ids"]]), output_attentions=True).attentions
        # attention each key receives, averaged over heads and queries
        expected = np.stack([layer[0].mean(dim=0).mean(dim=0).numpy() for layer in attentions])
        assert scores[index].shape == (3, len(feature["input_ids"]))
        np.testing.assert_allclose(scores[index], expected, rtol=1e-4, atol=1e-6)
