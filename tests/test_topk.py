"""The static top-k baseline: schedule validation, exact keep counts, export round trip."""

from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import random_batch, tiny_config
from top.pruning.base import LayerContext, attention_token_scores
from top.pruning.registry import build_method, method_class
from top.pruning.topk import TopK, TopKSelector


def test_keeps_ceil_ratio_of_input_length(tiny_model):
    method = TopK(tiny_model.config, {"keep_ratios": [1.0, 0.5, 0.25]})
    tiny_model.set_selectors(method.selectors("finetune"))
    batch = random_batch()
    out = tiny_model(**batch, mode="gather")
    lengths = batch["attention_mask"].sum(1).tolist()
    assert out.lengths_kept.tolist() == [[n, math.ceil(0.5 * n), math.ceil(0.25 * n)] for n in lengths]


def test_keeps_the_most_attended_tokens(tiny_model):
    tiny_model.set_selectors(TopK(tiny_model.config, {"keep_ratios": [0.5, 0.5, 0.5]}).selectors("finetune"))
    batch = {k: v[:1] for k, v in random_batch().items()}
    out = tiny_model(**batch, mode="mask", output_attentions=True)
    scores = attention_token_scores(out.attentions[0], batch["attention_mask"].bool())[0]
    scores[0] = float("inf")
    expected = torch.zeros(12, dtype=torch.bool)
    expected[scores.topk(6).indices] = True
    assert torch.equal(out.kept[0][0], expected)


@pytest.mark.parametrize(
    "ratios, message",
    [
        ([1.0, 0.5], "2 entries, the model has 3 layers"),
        ([1.0, 0.5, 0.7], "must not increase"),
        ([1.0, 0.0, 0.0], "outside"),
        ([1.2, 1.0, 1.0], "outside"),
    ],
)
def test_bad_schedules_are_rejected(ratios, message):
    with pytest.raises(ValueError, match=message):
        TopK(tiny_config(), {"keep_ratios": ratios})


def test_export_round_trip_gives_same_predictions(tiny_model):
    method = build_method("topk", tiny_model.config, {"keep_ratios": [0.9, 0.6, 0.3]})
    batch = random_batch()
    tiny_model.set_selectors(method.selectors("finetune"))
    before = tiny_model(**batch, mode="gather")
    tiny_model.set_selectors(method_class("topk").inference_selectors(method.export(), tiny_model.config))
    after = tiny_model(**batch, mode="gather")
    assert torch.equal(before.logits, after.logits)
    assert method.stages() == []
    assert [s.name for s in TopK(tiny_model.config, {"keep_ratios": [1, 1, 1], "finetune_epochs": 1}).stages()] == ["finetune"]


def test_registry_rejects_unknown_method():
    with pytest.raises(KeyError, match="known methods: dense, ltp, power_bert, top, topk"):
        method_class("spattn")


@pytest.mark.parametrize("ratio", [0.05, 0.3, 0.5, 0.99, 1.0])
@pytest.mark.parametrize("input_length", [9, 12, 40])
def test_fast_path_keeps_the_slots_forward_keeps(ratio, input_length):
    """TopKSelector.kept_slots (batch 1, every slot alive) against forward's decision, with tied
    scores (equal scores keep the earlier slot in both) and with fewer slots left than the input
    had (k clamped to them)."""
    selector = TopKSelector(ratio)
    generator = torch.Generator().manual_seed(input_length)
    for n in (12, 7):
        scores = torch.randint(0, 4, (1, n), generator=generator).float()  # many ties
        alive = torch.ones(1, n, dtype=torch.bool)
        ctx = LayerContext(
            1, None, torch.zeros(1, n, 8), alive, torch.arange(n)[None], torch.tensor([input_length]), token_scores=scores, all_alive=True
        )
        hard = selector(ctx).hard.clone()
        hard[:, 0] = True  # the encoder's rule
        assert selector.kept_slots(ctx).tolist() == hard[0].nonzero()[:, 0].tolist()
        slow = LayerContext(1, None, torch.zeros(1, n, 8), alive, torch.arange(n)[None], torch.tensor([input_length]), token_scores=scores)
        assert torch.equal(selector(slow).hard, selector(ctx).hard)  # all_alive changes nothing
