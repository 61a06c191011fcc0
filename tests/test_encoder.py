"""The prunable encoder: equal to stock transformers when nothing is pruned, and mask mode equal
to gather mode for the same hard decisions."""

from __future__ import annotations

import pytest
import torch
from transformers import BertForQuestionAnswering, RobertaConfig, RobertaForSequenceClassification

from tests.conftest import random_batch, tiny_config
from top.encoder import PrunableModel
from top.pruning.base import KeepDecision, TokenSelector
from top.pruning.topk import TopKSelector


class FixedSelector(TokenSelector):
    """Drops given original positions (independent of scores), so both modes see the same."""

    def __init__(self, drop: dict[int, list[int]]):
        super().__init__()
        self.drop = drop

    def forward(self, ctx):
        hard = ctx.alive.clone()
        for row, positions in self.drop.items():
            hard[row] &= ~torch.isin(ctx.positions[row], torch.tensor(positions))
        return KeepDecision(hard=hard)


class SoftHalf(TokenSelector):
    def forward(self, ctx):
        return KeepDecision(hard=ctx.alive, soft=torch.full(ctx.alive.shape, 0.5))


def test_keep_all_equals_stock_bert(tiny_model):
    batch = random_batch()
    stock = tiny_model.hf(**batch).logits
    for mode in ("mask", "gather"):
        ours = tiny_model(**batch, mode=mode)
        torch.testing.assert_close(ours.logits, stock, rtol=0, atol=1e-6)
        assert ours.lengths_in.tolist() == [[12] * 3, [9] * 3, [6] * 3]


def test_keep_all_equals_stock_roberta():
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=80,
        num_labels=3,
        pad_token_id=1,
        attn_implementation="eager",
    )
    hf = RobertaForSequenceClassification(config).eval()
    batch = random_batch()
    batch["input_ids"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, 1)
    batch.pop("token_type_ids")
    torch.testing.assert_close(PrunableModel(hf)(**batch).logits, hf(**batch).logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "selectors",
    [
        {0: FixedSelector({0: [3, 5, 7], 1: [1, 2]}), 2: FixedSelector({0: [9, 10], 2: [4]})},
        {0: TopKSelector(0.7), 1: TopKSelector(0.5), 2: TopKSelector(0.3)},
    ],
)
def test_gather_equals_mask_for_same_decisions(tiny_model, selectors):
    tiny_model.set_selectors(selectors)
    batch = random_batch()
    masked = tiny_model(**batch, mode="mask")
    gathered = tiny_model(**batch, mode="gather")
    torch.testing.assert_close(gathered.logits, masked.logits, rtol=0, atol=1e-5)
    assert torch.equal(gathered.lengths_kept, masked.lengths_kept)
    for a, b in zip(masked.kept, gathered.kept):
        assert torch.equal(a, b)
    assert (masked.lengths_kept < masked.lengths_in).any()


def test_gather_batch_equals_examples_one_at_a_time(tiny_model):
    tiny_model.set_selectors({0: TopKSelector(0.6), 2: TopKSelector(0.4)})
    batch = random_batch()
    together = tiny_model(**batch, mode="gather")
    for row in range(3):
        n = int(batch["attention_mask"][row].sum())
        alone = tiny_model(**{k: v[row : row + 1, :n] for k, v in batch.items()}, mode="gather")
        torch.testing.assert_close(alone.logits[0], together.logits[row], rtol=0, atol=1e-5)
        assert alone.lengths_kept[0].tolist() == together.lengths_kept[row].tolist()


def test_cls_always_kept_and_decisions_cascade(tiny_model):
    # layer 0 drops [CLS] and position 4; layer 1 tries to keep everything again
    class DropClsAnd4(TokenSelector):
        def forward(self, ctx):
            hard = ctx.alive.clone()
            hard[:, 0] = False
            hard &= ctx.positions != 4
            return KeepDecision(hard=hard)

    class KeepAll(TokenSelector):
        def forward(self, ctx):
            return KeepDecision(hard=torch.ones_like(ctx.alive))

    tiny_model.set_selectors({0: DropClsAnd4(), 1: KeepAll()})
    batch = random_batch()
    for mode in ("mask", "gather"):
        out = tiny_model(**batch, mode=mode)
        for kept in out.kept:
            assert kept[:, 0].all()
            assert not kept[:, 4].any()
        padding = batch["attention_mask"] == 0
        assert not out.kept[1][padding].any()
        assert out.lengths_kept[:, 1].tolist() == (batch["attention_mask"].sum(1) - 1).tolist()


def test_soft_mask_scales_layer_output_in_mask_mode_only(tiny_model):
    batch = random_batch()
    plain = tiny_model(**batch, mode="mask")
    tiny_model.set_selectors({2: SoftHalf()})
    soft = tiny_model(**batch, mode="mask")
    alive = batch["attention_mask"].bool()
    alive[:, 0] = False  # [CLS] is never scaled
    torch.testing.assert_close(soft.hidden[alive], 0.5 * plain.hidden[alive])
    torch.testing.assert_close(soft.hidden[:, 0], plain.hidden[:, 0])
    torch.testing.assert_close(tiny_model(**batch, mode="gather").logits, plain.logits, rtol=0, atol=1e-6)


class SoftHalfBeforeFFN(TokenSelector):
    """Halves every token before the feed-forward block; keeps the attention sublayer's output."""

    def forward(self, ctx):
        self.seen = ctx.hidden.detach().clone()
        return KeepDecision(hard=ctx.alive, soft=torch.full(ctx.alive.shape, 0.5), soft_on="ffn_input")


def test_soft_mask_on_the_feed_forward_input(tiny_model):
    """``soft_on="ffn_input"`` scales the attention sublayer's output, which is the feed-forward
    block's input and residual; that is not the same as scaling the layer output."""
    batch = random_batch()
    last = tiny_model.layers[2]
    plain = tiny_model(**batch, mode="mask")
    selector = SoftHalfBeforeFFN()
    tiny_model.set_selectors({2: selector})
    with torch.no_grad():
        soft = tiny_model(**batch, mode="mask")
        h = selector.seen  # [B, n, d] attention sublayer output of layer 2
        halved = last.output(last.intermediate(0.5 * h), 0.5 * h)
        untouched = last.output(last.intermediate(h), h)
    alive = batch["attention_mask"].bool()
    others = alive.clone()
    others[:, 0] = False  # [CLS] is never scaled
    torch.testing.assert_close(soft.hidden[others], halved[others], rtol=0, atol=1e-5)
    torch.testing.assert_close(soft.hidden[:, 0], untouched[:, 0], rtol=0, atol=1e-5)
    torch.testing.assert_close(soft.hidden[:, 0], plain.hidden[:, 0], rtol=0, atol=1e-5)
    # the placements differ: LayerNorm after the residual renormalises the scaled vector
    assert not torch.allclose(soft.hidden[others], 0.5 * plain.hidden[others], atol=1e-2)
    # gather mode ignores soft masks, and mask and gather still agree on the hard decisions
    with torch.no_grad():
        torch.testing.assert_close(tiny_model(**batch, mode="gather").logits, plain.logits, rtol=0, atol=1e-6)


def test_unknown_soft_placement_raises(tiny_model):
    class Misplaced(TokenSelector):
        def forward(self, ctx):
            return KeepDecision(hard=ctx.alive, soft=torch.ones(ctx.alive.shape), soft_on="attention")

    tiny_model.set_selectors({1: Misplaced()})
    with pytest.raises(ValueError, match="soft_on"):
        tiny_model(**random_batch(), mode="mask")


def test_dropped_tokens_carry_their_last_state_to_a_qa_head():
    torch.manual_seed(0)
    hf = BertForQuestionAnswering(tiny_config()).eval()
    batch = random_batch()
    reference = PrunableModel(hf)
    model = PrunableModel(hf, {1: FixedSelector({0: [2, 3], 1: [5]})})
    masked, gathered = model(**batch, mode="mask"), model(**batch, mode="gather")
    torch.testing.assert_close(gathered.logits, masked.logits, rtol=0, atol=1e-5)
    assert gathered.logits.shape == (3, 12, 2)
    # A token dropped at layer 1 keeps the state it had after layer 1's attention + FFN was skipped,
    # i.e. its output of layer 0: compare with a model that stops after layer 0.
    one_layer = PrunableModel(hf)
    layers = one_layer.hf.base_model.encoder.layer
    kept_layers = torch.nn.ModuleList(layers[:1])
    one_layer.hf.base_model.encoder.layer = kept_layers
    after_layer0 = one_layer(**batch).hidden
    one_layer.hf.base_model.encoder.layer = layers
    torch.testing.assert_close(gathered.hidden[0, 2], after_layer0[0, 2], rtol=0, atol=1e-5)
    torch.testing.assert_close(gathered.hidden[1, 5], after_layer0[1, 5], rtol=0, atol=1e-5)
    assert not torch.allclose(reference(**batch).hidden[0, 2], gathered.hidden[0, 2])


def test_selector_layer_out_of_range(tiny_model):
    with pytest.raises(ValueError, match="layers 0..2"):
        tiny_model.set_selectors({3: TopKSelector(0.5)})


def test_record_false_gives_same_logits(tiny_model):
    tiny_model.set_selectors({0: TopKSelector(0.5)})
    batch = random_batch()
    full = tiny_model(**batch, mode="gather")
    fast = tiny_model(**batch, mode="gather", record=False)
    torch.testing.assert_close(fast.logits, full.logits, rtol=0, atol=0)
    assert fast.kept == []


def test_protected_tokens_survive_every_selector_in_both_modes():
    torch.manual_seed(0)
    drop = {0: [1, 2, 6], 1: [3, 7], 2: [2, 4, 5]}  # question positions 1..4 and context ones
    model = PrunableModel(BertForQuestionAnswering(tiny_config()).eval(), {1: FixedSelector(drop)})
    batch = random_batch(batch=3, length=12)
    protect = torch.zeros_like(batch["attention_mask"])
    protect[:, :5] = 1  # [CLS] + a 4-token "question"
    protect = protect * batch["attention_mask"]
    with torch.no_grad():
        free = model(**batch, mode="gather")
        masked = model(**batch, mode="mask", protect_mask=protect)
        gathered = model(**batch, mode="gather", protect_mask=protect)
    for out in (masked, gathered):
        assert out.kept[1][:, :5].all() and out.kept[2][:, :5].all()
    assert (free.lengths_kept[:, 1] < gathered.lengths_kept[:, 1]).all()  # the question was saved
    assert not gathered.kept[1][0, 6] and not gathered.kept[2][2, 5]  # context tokens still dropped
    assert torch.equal(masked.lengths_kept, gathered.lengths_kept)
    real = batch["attention_mask"].bool()
    assert torch.allclose(masked.logits[real], gathered.logits[real], atol=1e-5)
