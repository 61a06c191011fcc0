"""The teacher's signals: only what a method asks for, independent of padding, and the same
whether computed per step or once per example (the cache)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import BertForQuestionAnswering, BertForSequenceClassification

from tests.conftest import collate_pad0, tiny_config
from top.batching import INDEX_KEY, IndexedDataset, with_index
from top.encoder import PrunableModel
from top.pruning.base import attention_token_scores
from top.pruning.top import ToP
from top.teacher import TeacherCache, TeacherRunner
from top.train import TrainSettings, run_stages

SIGNALS = ("logits", "final_token_scores")


def rows(n: int, seed: int = 0, low: int = 4, high: int = 30) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = int(torch.randint(low, high, (1,), generator=g))
        ids = torch.randint(8, 64, (length,), generator=g)
        ids[0] = 1
        label = i % 2
        if label:
            ids[int(torch.randint(1, length, (1,), generator=g))] = 7
        types = [0] * (length // 2) + [1] * (length - length // 2)
        out.append({"input_ids": ids.tolist(), "attention_mask": [1] * length, "token_type_ids": types, "labels": label})
    return out


def teacher(head=BertForSequenceClassification, seed=0) -> PrunableModel:
    torch.manual_seed(seed)
    return PrunableModel(head(tiny_config(num_hidden_layers=4)).eval())


def batch_of(data, indices):
    return with_index(collate_pad0)(IndexedDataset(data).__getitems__(list(indices)))


def test_the_runner_keeps_only_the_last_layers_scores():
    model, data = teacher(), rows(6)
    batch = batch_of(data, range(6))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    out = TeacherRunner(model, SIGNALS)(inputs)
    with torch.no_grad():
        full = model(**inputs, mode="mask", output_attentions=True)
    # the runner's layers use SDPA where no probabilities are read, the reference call eager
    # attention everywhere: the same values up to float rounding
    torch.testing.assert_close(out.logits, full.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        out.final_token_scores, attention_token_scores(full.attentions[-1], inputs["attention_mask"].bool()), rtol=1e-5, atol=1e-6
    )
    assert TeacherRunner(model, ("logits",))(inputs).final_token_scores is None
    assert TeacherRunner(model, ("final_token_scores",))(inputs).logits is None
    with pytest.raises(ValueError, match="unknown teacher signals"):
        TeacherRunner(model, ("attentions",))
    assert not model.hf.training and not model.selectors  # eval mode; no selector installed on the teacher


@pytest.mark.parametrize("head", [BertForSequenceClassification, BertForQuestionAnswering])
def test_padding_does_not_change_the_teachers_outputs(head):
    """The premise of the cache: an example's signals alone equal its signals in a padded batch."""
    model, data = teacher(head), rows(8, seed=1)
    runner = TeacherRunner(model, SIGNALS)
    batch = batch_of(data, range(8))
    together = runner({k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
    assert batch["input_ids"].shape[1] > min(len(r["input_ids"]) for r in data)  # some rows are padded
    for row, example in enumerate(data):
        n = len(example["input_ids"])
        alone = runner({k: torch.tensor([example[k]]) for k in ("input_ids", "attention_mask", "token_type_ids")})
        torch.testing.assert_close(together.final_token_scores[row, :n], alone.final_token_scores[0], rtol=1e-5, atol=1e-6)
        assert torch.isneginf(together.final_token_scores[row, n:]).all()
        logits = together.logits[row, :n] if head is BertForQuestionAnswering else together.logits[row]
        torch.testing.assert_close(logits, alone.logits[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("head", [BertForSequenceClassification, BertForQuestionAnswering])
def test_the_cache_gives_each_batch_what_the_teacher_gives_it(head):
    model, data = teacher(head), rows(29, seed=2)
    runner = TeacherRunner(model, SIGNALS)
    calls = {"n": 0}
    original = runner.__call__

    class Counting:
        signals = runner.signals

        def __call__(self, inputs):
            calls["n"] += 1
            return original(inputs)

    cache = TeacherCache(Counting(), data, collate_pad0, batch_size=8, device=torch.device("cpu"))
    assert calls["n"] == math.ceil(29 / 8)
    total = sum(len(r["input_ids"]) for r in data)
    assert cache.final_token_scores.shape == (total,)  # each example at its own length, nothing else
    for indices in ([3, 17, 0, 28], [5], list(range(29))):
        batch = batch_of(data, indices)
        cached = cache(batch)
        direct = runner({k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
        mask = batch["attention_mask"].bool()
        torch.testing.assert_close(cached.final_token_scores, direct.final_token_scores, rtol=1e-5, atol=1e-6)
        if head is BertForQuestionAnswering:
            torch.testing.assert_close(cached.logits[mask], direct.logits[mask], rtol=1e-5, atol=1e-5)
            assert (cached.logits[~mask] == 0).all()
        else:
            torch.testing.assert_close(cached.logits, direct.logits, rtol=1e-5, atol=1e-5)
        assert cache(batch, ("logits",)).final_token_scores is None


def test_the_cache_refuses_a_batch_that_is_not_its_training_set():
    model, data = teacher(), rows(10)
    cache = TeacherCache(TeacherRunner(model, ("logits",)), data, collate_pad0, batch_size=4, device=torch.device("cpu"))
    other = batch_of(rows(10, seed=9), range(4))
    with pytest.raises(ValueError, match="not the cached training set"):
        cache(other)
    with pytest.raises(ValueError, match="holds \\['logits'\\]"):
        cache(batch_of(data, range(4)), ("final_token_scores",))
    batch = batch_of(data, range(4))
    del batch[INDEX_KEY]
    with pytest.raises(KeyError):
        cache(batch)


TOP = {
    "target_sparsity": 0.4,
    "bin_num": 4,
    "prune_layers": [1, 2],
    "rank_distill_layers": [1],
    "epochs": 2,
    "lagrangian_warmup_epochs": 1,
    "reg_learning_rate": 0.5,
    "lambda_learning_rate": 0.5,
    "rank_distill_weight": 0.5,
    "finetune_epochs": 1,
}


def _train_top(cache: bool, monkeypatch):
    calls = {"n": 0}
    original = TeacherRunner.__call__

    def counting(self, inputs):
        calls["n"] += 1
        return original(self, inputs)

    monkeypatch.setattr(TeacherRunner, "__call__", counting)
    model = teacher(seed=3)
    model.train()
    frozen = copy.deepcopy(model).eval()
    method = ToP(model.config, TOP)
    settings = TrainSettings(batch_size=8, learning_rate=1e-3, warmup_ratio=0.0, log_every=1, seed=0, teacher_cache=cache)
    history = run_stages(model, method, rows(40, seed=4), settings, collate=collate_pad0, teacher=frozen)
    return model, method, history, calls["n"]


def test_top_trains_the_same_with_and_without_the_cache(monkeypatch):
    """A few ToP steps (prune with logit and ranking distillation, then finetune), same seed:
    the cached signals give the per-step teacher's results up to rounding, with one teacher
    pass over the data instead of one per step."""
    cached_model, cached_method, cached, cached_calls = _train_top(True, monkeypatch)
    plain_model, plain_method, plain, plain_calls = _train_top(False, monkeypatch)
    steps = len(plain)
    assert steps == 15 and plain_calls == steps  # 5 batches x (2 prune + 1 finetune epochs)
    assert cached_calls == 5  # the cache's pass over the 40 examples, once for both stages
    assert [r["stage"] for r in cached] == [r["stage"] for r in plain]
    assert any(r.get("rank_loss", 0) > 0 for r in plain) and any(r.get("distill_loss", 0) > 0 for r in plain)
    for a, b in zip(cached, plain):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], float):
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    for (name, a), b in zip(cached_model.state_dict().items(), plain_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    for a, b in zip(cached_method.module.state_dict().values(), plain_method.module.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
