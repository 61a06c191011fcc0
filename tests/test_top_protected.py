"""ToP with protected tokens (SQuAD's ``qa.protect_question``, GLUE's
``glue.protect_separators``): the question, [CLS] and the separators are kept in every layer,
are no rank-bin candidates, and the FLOPs constraint counts them as kept. Tiny random BERTs on
the CPU."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from transformers import BertForQuestionAnswering, BertForSequenceClassification

from tests.test_top import BIG, make_batch, set_gates, tiny_config
from top.encoder import PrunableModel
from top.measure.flops import example_flops
from top.pipeline import _token_counts
from top.pruning.base import StepContext
from top.pruning.ranking import ranking_distillation_loss
from top.pruning.top import ToP
from top.pruning.top.gates import bin_keep_values, rank_bins
from top.pruning.top.selectors import protected_counts
from top.teacher import TeacherRunner

pytestmark = pytest.mark.usefixtures("one_thread")

LENGTHS = [33, 17, 25]
QUESTION = [4, 3, 9]  # protected leading tokens ([CLS] included); the last real token is protected too


def protect_mask(lengths=LENGTHS, leading=QUESTION) -> torch.Tensor:
    """[CLS] + a question at the start, and the final separator, of each row."""
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for row, (n, q) in enumerate(zip(lengths, leading)):
        mask[row, :q] = 1
        mask[row, n - 1] = 1
    return mask


def build(head: str = "classification", seed: int = 1) -> tuple[PrunableModel, ToP]:
    torch.manual_seed(seed)
    hf = BertForQuestionAnswering(tiny_config(layers=4)) if head == "qa" else BertForSequenceClassification(tiny_config(layers=4))
    model = PrunableModel(hf.eval())
    method = ToP(model.config, {"bin_num": 4, "prune_layers": [1, 2], "log_alpha_range": None, "target_sparsity": 0.2})
    set_gates(method, 1, [1, 1, 1, 0])
    set_gates(method, 2, [1, 0, 1, 0])
    return model, method


def test_rank_bins_leave_protected_slots_out():
    scores = torch.tensor([[0.0, 0.1, 0.9, 0.5, 0.7, 0.2, 0.3, 0.8, 0.4]])
    alive = torch.ones(1, 9, dtype=torch.bool)
    protected = torch.zeros(1, 9, dtype=torch.bool)
    protected[0, [2, 7]] = True  # the two best-scoring tokens
    bins = rank_bins(scores, alive, 4, protected)
    # 6 candidates (slots 1, 3, 4, 5, 6, 8), ranked 4, 3, 8, 6, 5, 1 -> bins floor(r * 4 / 6)
    assert {slot: int(bins[0, slot]) for slot in (4, 3, 8, 6, 5, 1)} == {4: 0, 3: 0, 8: 1, 6: 2, 5: 2, 1: 3}
    assert bins[0, 0] == bins[0, 2] == bins[0, 7] == 4
    keep = bin_keep_values(scores, alive, torch.tensor([1.0, 0.0, 0.0, 0.0]), protected)
    assert keep[0].tolist() == [1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0]


@pytest.mark.parametrize("head", ["classification", "qa"])
def test_protected_tokens_survive_and_the_expected_flops_are_exact(head):
    model, method = build(head)
    batch = make_batch(LENGTHS, seed=3)
    protect = protect_mask()
    model.set_selectors(method.selectors("prune"))
    model.eval()
    with torch.no_grad():
        masked = model(**batch, mode="mask", protect_mask=protect)
        gathered = model(**batch, mode="gather", protect_mask=protect)
        plain = model(**batch, mode="gather")
    # candidates a = n - p per row; kept = p + the kept bins' occupancy (hand-counted):
    # 33 (p 5): a 28 -> bins 7,7,7,7, keep 21 -> 26; a 21 -> 6,5,5,5, keep 11 -> 16
    # 17 (p 4): a 13 -> 4,3,3,3, keep 10 -> 14; a 10 -> 3,2,3,2, keep 6 -> 10
    # 25 (p 10): a 15 -> 4,4,4,3, keep 12 -> 22; a 12 -> 3,3,3,3, keep 6 -> 16
    assert gathered.lengths_kept[:, 1].tolist() == [26, 14, 22]
    assert gathered.lengths_kept[:, 2].tolist() == [16, 10, 16]
    assert torch.equal(masked.lengths_kept, gathered.lengths_kept)
    real_positions = batch["attention_mask"].bool() if head == "qa" else slice(None)
    torch.testing.assert_close(masked.logits[real_positions], gathered.logits[real_positions], atol=1e-5, rtol=1e-5)
    for out in (masked, gathered):
        for kept in out.kept:
            assert kept[protect.bool()].all()  # never dropped
    # without protection the same gates drop some of those tokens (the test can fail)
    assert not all(bool(kept[protect.bool()].all()) for kept in plain.kept)

    real = example_flops(model.config, head, gathered.lengths_in.numpy(), gathered.lengths_kept.numpy())
    hard, dense = method.expected_flops(batch["attention_mask"], head, deterministic=True, protect_mask=protect)
    assert np.array_equal(hard.numpy(), real)  # exact
    counts = protected_counts(batch["attention_mask"], protect)
    assert counts.tolist() == [5, 4, 10]
    by_lengths, _ = method.expected_flops_at_lengths(batch["attention_mask"].sum(1), head, deterministic=True, protected=counts)
    assert np.array_equal(by_lengths.numpy(), real)
    soft, _ = method.expected_flops(batch["attention_mask"], head, protect_mask=protect)  # P(z > 0) = 1 - 1e-6 or 1e-6
    assert np.allclose(soft.detach().numpy(), real, rtol=1e-4) and soft.requires_grad
    unprotected, _ = method.expected_flops(batch["attention_mask"], head, deterministic=True)
    assert (unprotected < hard).all()  # protection keeps more tokens: more FLOPs


def test_exported_selectors_reproduce_the_protected_decisions_and_refuse_other_inputs():
    model, method = build("qa")
    batch = make_batch(LENGTHS, seed=3)
    protect = protect_mask()
    lengths = batch["attention_mask"].sum(1)
    method.prepare({"train": lengths, "validation": lengths, "train_protected": protected_counts(batch["attention_mask"], protect),
                    "validation_protected": protected_counts(batch["attention_mask"], protect)}, "qa")  # fmt: skip
    model.set_selectors(method.selectors("prune"))
    model.eval()
    with torch.no_grad():
        trained = model(**batch, mode="gather", protect_mask=protect)
    exported = json.loads(json.dumps(method.export()))
    assert exported["protected_tokens"] is True
    inference = PrunableModel(model.hf, ToP.inference_selectors(exported, model.config)).eval()
    with torch.no_grad():
        rebuilt = inference(**batch, mode="gather", protect_mask=protect)
        single = inference(**{k: v[:1, :33] for k, v in batch.items()}, mode="gather", protect_mask=protect[:1, :33])  # batch 1
    assert torch.equal(rebuilt.lengths_kept, trained.lengths_kept)
    for a, b in zip(rebuilt.kept, trained.kept):
        assert torch.equal(a, b)
    assert single.lengths_kept[0].tolist() == trained.lengths_kept[0].tolist()
    with pytest.raises(ValueError, match=r"trained with protected tokens but is run without a protect_mask.*glue.protect_separators: true"):
        inference(**batch, mode="gather")
    unprotected = ToP.inference_selectors({**exported, "protected_tokens": False}, model.config)
    with pytest.raises(ValueError, match=r"trained without protected tokens but is run with a protect_mask.*glue.protect_separators: false"):
        PrunableModel(model.hf, unprotected)(**batch, mode="gather", protect_mask=protect)


def test_prepare_constraint_and_calibration_count_protected_tokens_as_kept():
    model, method = build("qa")
    batch = make_batch(LENGTHS, seed=3)
    protect = protect_mask()
    mask = batch["attention_mask"]
    lengths, counts = mask.sum(1), protected_counts(mask, protect)
    assert method.max_sparsity(lengths.double(), "qa", counts.double()) < method.max_sparsity(lengths.double(), "qa")
    with pytest.raises(ValueError, match="train_protected must hold"):
        method.prepare({"train": lengths, "validation": lengths, "train_protected": lengths + 1}, "qa")

    settings = {"bin_num": 4, "prune_layers": [1, 2], "target_sparsity": 0.25, "log_alpha_range": None, "flops_lengths": "validation"}
    method = ToP(model.config, {**settings, "rank_distill_weight": 0.0, "logit_distill_weight": 0.0})
    for layer in (1, 2):
        with torch.no_grad():
            method.module.layers[str(layer)].bins.log_alpha.copy_(torch.linspace(BIG, -BIG, 4))  # two bins of four kept
            method.module.layers[str(layer)].layer.log_alpha.fill_(BIG)
    method.prepare({"train": lengths, "validation": lengths, "train_protected": counts, "validation_protected": counts}, "qa")
    assert torch.equal(method.constraint_protected, counts.double()) and method.protected_tokens

    model.set_selectors(method.selectors("prune"))
    model.train()
    student = model(**batch, mode="mask", protect_mask=protect)
    step = StepContext(student, None, {**batch, "protect_mask": protect}, torch.zeros(()), step=5, total_steps=10)
    _, logs = method.extra_loss("prune", step)
    expected = method.sparsity(*method.expected_flops_at_lengths(lengths, "qa", protected=counts))
    assert logs["expected_sparsity"] == pytest.approx(float(expected.detach()))
    naive = method.sparsity(*method.expected_flops_at_lengths(lengths, "qa"))
    assert abs(float(naive.detach()) - logs["expected_sparsity"]) > 1e-6  # it does count them differently
    with pytest.raises(ValueError, match=r"prepared with protected token counts, but the training batch has no protect_mask"):
        method.extra_loss("prune", StepContext(student, None, batch, torch.zeros(()), step=0, total_steps=10))

    # calibration on the protected counts: the gather model then lands on exactly what it computed
    achieved = method.calibrate(lengths.double(), "qa", counts.double())
    assert abs(achieved - 0.25) < 0.1
    model.eval()
    with torch.no_grad():
        out = model(**batch, mode="gather", protect_mask=protect)
    real = example_flops(model.config, "qa", out.lengths_in.numpy(), out.lengths_kept.numpy())
    dense = example_flops(model.config, "qa", *(np.repeat(lengths.numpy()[:, None], 4, axis=1),) * 2)
    assert 1 - real.sum() / dense.sum() == pytest.approx(achieved, abs=1e-12)


def test_batch_lengths_take_the_protected_counts_from_the_batch():
    model, _ = build("qa")
    settings = {"bin_num": 4, "prune_layers": [1, 2], "rank_distill_weight": 0.0, "logit_distill_weight": 0.0, "target_sparsity": 0.2}
    method = ToP(model.config, settings)
    batch = make_batch(LENGTHS, seed=3)
    protect = protect_mask()
    lengths = batch["attention_mask"].sum(1)
    method.prepare({"train": lengths, "validation": lengths, "train_protected": protected_counts(batch["attention_mask"], protect)}, "qa")
    assert method.constraint_lengths is None and method.protected_tokens
    model.set_selectors(method.selectors("prune"))
    model.train()
    student = model(**batch, mode="mask", protect_mask=protect)
    _, logs = method.extra_loss("prune", StepContext(student, None, {**batch, "protect_mask": protect}, torch.zeros(()), step=0, total_steps=4))
    expected = method.sparsity(*method.expected_flops(batch["attention_mask"], "qa", protect_mask=protect))
    assert logs["expected_sparsity"] == pytest.approx(float(expected.detach()))
    unprepared = ToP(model.config, settings)
    with pytest.raises(ValueError, match=r"prepared without protected token counts, but the training batch has protect_mask"):
        unprepared.extra_loss("prune", StepContext(student, None, {**batch, "protect_mask": protect}, torch.zeros(()), step=0, total_steps=4))


def test_rank_loss_ranks_only_the_unprotected_tokens():
    model, method = build("qa")
    method = ToP(model.config, {"bin_num": 4, "prune_layers": [1], "rank_distill_layers": [1, 2], "rank_topk": 20})
    set_gates(method, 1, [1, 1, 0, 0])
    teacher = copy.deepcopy(model)
    batch = make_batch(LENGTHS, seed=6)
    protect = protect_mask()
    model.set_selectors(method.selectors("prune"))
    model.eval()
    with torch.no_grad():
        student = model(**batch, mode="mask", protect_mask=protect)
    t_out = TeacherRunner(teacher, ("final_token_scores",))(batch)
    total = float(method.rank_loss(student, t_out, batch["attention_mask"], protect))
    expected = ranked_protected = 0.0
    for layer in (1, 2):
        decision = student.decisions[layer]
        assert torch.equal(decision.aux["protected"], protect.bool())  # mask mode: the original layout
        every = decision.aux["alive"].clone()
        every[:, 0] = False
        target = t_out.final_token_scores.gather(1, decision.aux["positions"])
        args = (decision.aux["scores"], target)
        expected += float(ranking_distillation_loss(*args, every & ~protect.bool(), topk=20, list_length=33 - 5))
        ranked_protected += float(ranking_distillation_loss(*args, every, topk=20, list_length=33 - 1))
    assert total == pytest.approx(expected, rel=1e-6)
    assert abs(total - ranked_protected) > 1e-6  # the test can fail


def test_pipeline_token_counts_add_the_protected_counts_only_when_the_task_protects():
    train = {"input_ids": [[2, 5, 6, 3, 7, 8, 3], [2, 5, 3, 9, 3]], "protect_mask": [[1, 1, 1, 1, 0, 0, 1], [1, 1, 1, 0, 1]]}
    dev = {"input_ids": [[2, 5, 3, 9, 9, 9, 3]], "protect_mask": [[1, 1, 1, 0, 0, 0, 1]]}
    counts = _token_counts(train, dev, protects_tokens=True)
    assert counts["train"].tolist() == [7, 5] and counts["validation"].tolist() == [7]
    assert counts["train_protected"].tolist() == [5, 4] and counts["validation_protected"].tolist() == [4]
    assert set(_token_counts(train, dev)) == {"train", "validation"}


def test_a_glue_run_with_protected_separators_never_drops_them(tmp_path):
    """Trained, exported and evaluated through the pipeline with ``glue.protect_separators``,
    ToP keeps [CLS] and [SEP] in every layer of every dev example and drops other tokens."""
    from tests.conftest import write_tiny_sst2, write_tiny_sst2_config
    from top.analysis.token_survival import dropped_by_role, token_roles, trace_kept
    from top.models import load_run
    from top.pipeline import evaluate_run, finetune_teacher, train_method
    from top.tasks.base import get_task
    from top.tasks.settings import TaskConfig

    glue = write_tiny_sst2(tmp_path / "glue", train_rows=32, dev_rows=16)
    top = {"s25": {"target_sparsity": 0.25, "prune_layers": [0], "epochs": 2, "lagrangian_warmup_epochs": 1, "bin_num": 4}}
    cfg = write_tiny_sst2_config(tmp_path, glue, {"top": {"settings": top}}, glue={"protect_separators": True})
    finetune_teacher(cfg, "sst2", 3, tmp_path / "teacher")
    train_method(cfg, "sst2", "top", "s25", 3, tmp_path / "teacher", tmp_path / "run")
    metrics = evaluate_run(cfg, "sst2", tmp_path / "run", tmp_path / "metrics.json", tmp_path / "lengths.npz", {})
    assert metrics["decisions"]["protected_tokens"] is True
    spec = get_task(TaskConfig.from_config(cfg), "sst2")
    model, tokenizer, _ = load_run(tmp_path / "run")
    dataset = spec.dev_features("validation", tokenizer, None)
    alive, _ = trace_kept(model, dataset, spec.collate(tokenizer))
    layers = dropped_by_role(alive, token_roles(dataset, tokenizer))
    assert all(layer["roles"]["[SEP]"]["dropped"] == 0.0 for layer in layers)
    assert all(mask[:, 0].all() for mask in alive)  # [CLS]
    assert layers[-1]["roles"]["words A"]["dropped"] > 0  # it prunes the rest
