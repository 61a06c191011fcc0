"""The prunable encoder: equal to stock transformers when nothing is pruned, and mask mode equal
to gather mode for the same hard decisions."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import BertForQuestionAnswering, BertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification

from tests.conftest import padded_batch, random_batch, tiny_config
from top import encoder
from top.encoder import PrunableModel
from top.pruning.base import KeepDecision, TokenSelector, attention_token_scores
from top.pruning.topk import TopKSelector


class FixedSelector(TokenSelector):
    """Drops given original positions (independent of scores), so both modes see the same."""

    def __init__(self, drop: dict[int, list[int]]):
        super().__init__()
        self.drop = drop

    def forward(self, ctx):
        hard = ctx.alive.clone()
        for row, positions in self.drop.items():
            if row < hard.shape[0]:
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


@pytest.mark.parametrize("mode", ["mask", "gather"])
def test_dropped_positions_carry_the_state_the_carry_option_names(mode):
    """A position dropped at layer 1 carries, at the output: its state entering layer 1 (the
    default), layer 1's attention-sublayer output, or layer 1's output; the stock model computes
    all three for it, since nothing is dropped before layer 1."""
    torch.manual_seed(0)
    drop = {0: [2, 6], 1: [3], 2: [1, 4]}
    model = PrunableModel(BertForQuestionAnswering(tiny_config()).eval(), {1: FixedSelector(drop)})
    batch = random_batch(batch=3, length=12)
    with torch.no_grad():
        stock = model.hf(**batch, output_hidden_states=True).hidden_states  # embeddings, then each layer's output
        additive = (1.0 - batch["attention_mask"][:, None, None, :].float()) * torch.finfo(torch.float32).min  # eager attention's key mask
        attended = model.layers[1].attention(stock[1], attention_mask=additive)[0]
        outs = {carry: model(**batch, mode=mode, carry=carry) for carry in ("entering", "attention", "layer")}
    expected = {"entering": stock[1], "attention": attended, "layer": stock[2]}
    for carry, out in outs.items():
        for row, positions in drop.items():
            for position in positions:
                assert not out.kept[-1][row, position]
                torch.testing.assert_close(out.hidden[row, position], expected[carry][row, position], rtol=1e-5, atol=1e-5)
        assert torch.equal(out.lengths_kept, outs["entering"].lengths_kept)  # the same decisions
        kept = out.kept[-1]
        torch.testing.assert_close(out.hidden[kept], outs["entering"].hidden[kept], rtol=0, atol=0)  # survivors unchanged
    assert not torch.allclose(outs["layer"].hidden[0, 2], outs["entering"].hidden[0, 2])
    with pytest.raises(ValueError, match="carry must be one of"):
        model(**batch, carry="final")


# --------------------------------------------------------------------------- attention paths


class FirstK(TokenSelector):
    """Keeps the first ``k`` slots (no scores read): a model run at fixed per-layer lengths."""

    needs_attention_probs = False

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, ctx):
        slots = torch.arange(ctx.alive.shape[1])
        return KeepDecision(hard=(slots < self.k).expand_as(ctx.alive) & ctx.alive)


class Spy(TokenSelector):
    """Records what it was shown; keeps everything."""

    def __init__(self, needs_probs: bool):
        super().__init__()
        self.needs_attention_probs = needs_probs
        self.seen = []

    def forward(self, ctx):
        self.seen.append(ctx)
        return None


class OpCounter(TorchDispatchMode):
    """Counts the aten ops a forward calls (by overload packet name)."""

    def __init__(self):
        super().__init__()
        self.counts = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def count_sdpa_calls(monkeypatch) -> list[int]:
    calls = [0]
    original = encoder.F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(encoder.F, "scaled_dot_product_attention", counting)
    return calls


def sdpa_model(selectors=None, qa=False, attention="sdpa"):
    torch.manual_seed(0)
    config = tiny_config(num_hidden_layers=4, attn_implementation="sdpa")
    hf = (BertForQuestionAnswering if qa else BertForSequenceClassification)(config).eval()
    return PrunableModel(hf, selectors, attention=attention)


SELECTOR_SETS = {
    "none": lambda: {},
    "topk": lambda: {1: TopKSelector(0.7), 2: TopKSelector(0.5), 3: TopKSelector(0.3)},
    "probs": lambda: {0: FixedSelector({0: [3, 5, 7], 1: [1, 2]}), 2: TopKSelector(0.5)},
}


@pytest.mark.parametrize("name", SELECTOR_SETS)
@pytest.mark.parametrize("batch_size", [1, 3])
def test_sdpa_and_eager_attention_agree_in_gather_mode(name, batch_size):
    batch = {k: v[:batch_size] for k, v in random_batch().items()}
    fast, eager = sdpa_model(SELECTOR_SETS[name]()), sdpa_model(SELECTOR_SETS[name](), attention="eager")
    with torch.inference_mode():
        for record in (True, False):
            a = fast(**batch, mode="gather", record=record)
            b = eager(**batch, mode="gather", record=record)
            torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=1e-5)
            torch.testing.assert_close(a.hidden, b.hidden, rtol=0, atol=1e-5)
            assert torch.equal(a.lengths_in, b.lengths_in) and torch.equal(a.lengths_kept, b.lengths_kept)
        masked = fast(**batch, mode="mask")
    torch.testing.assert_close(masked.logits, b.logits, rtol=0, atol=1e-5)
    if name != "none":
        assert (b.lengths_kept < b.lengths_in).any()


def test_sdpa_runs_where_no_probabilities_are_needed(monkeypatch):
    calls = count_sdpa_calls(monkeypatch)
    batch = random_batch()
    with torch.inference_mode():
        sdpa_model()(**batch, mode="gather")
        assert calls[0] == 4  # every layer
        calls[0] = 0
        sdpa_model(SELECTOR_SETS["probs"]())(**batch, mode="gather")
        assert calls[0] == 2  # layers 1 and 3 (layer 0 reads probabilities, layer 2 scores them)
        calls[0] = 0
        sdpa_model(SELECTOR_SETS["topk"]())(**batch, mode="gather", output_attentions=True)
        sdpa_model(attention="eager")(**batch, mode="gather")
        assert calls[0] == 0


def test_training_with_attention_dropout_stays_eager(monkeypatch):
    calls = count_sdpa_calls(monkeypatch)
    torch.manual_seed(0)
    hf = BertForSequenceClassification(tiny_config(attention_probs_dropout_prob=0.1))
    model = PrunableModel(hf, {1: TopKSelector(0.5)})
    reference = PrunableModel(hf, {1: TopKSelector(0.5)}, attention="eager")
    model.train()
    torch.manual_seed(1)
    out = model(**random_batch(), mode="mask")
    torch.manual_seed(1)
    same = reference(**random_batch(), mode="mask")
    assert torch.equal(out.logits, same.logits)  # the same dropout draws as the eager implementation
    out.logits.sum().backward()
    assert calls[0] == 0
    model.eval()
    model(**random_batch(), mode="mask")
    assert calls[0] == 2  # layers 0 and 2; layer 1 scores tokens


def test_selector_sees_only_what_it_declares():
    wants, skips = Spy(needs_probs=True), Spy(needs_probs=False)
    batch = random_batch()
    with torch.inference_mode():
        sdpa_model({1: wants, 2: skips})(**batch, mode="gather")
        reference = sdpa_model(attention="eager")(**batch, mode="gather", output_attentions=True)
    (seen_wants,), (seen_skips,) = wants.seen, skips.seen
    assert seen_wants.attention_probs.shape == (3, 4, 12, 12) and seen_wants.token_scores is None
    torch.testing.assert_close(seen_wants.attention_probs, reference.attentions[1], rtol=0, atol=1e-6)
    assert seen_skips.attention_probs is None
    alive = batch["attention_mask"].bool()
    expected = attention_token_scores(reference.attentions[2], alive)
    torch.testing.assert_close(seen_skips.attention_token_scores(), expected, rtol=0, atol=1e-6)
    assert torch.isinf(seen_skips.token_scores[~alive]).all()


@pytest.mark.parametrize("length", [12, 40])
def test_token_scores_without_probabilities_equal_attention_token_scores(length, monkeypatch):
    # 40 tokens and a tiny tile budget: the heads go one group at a time
    monkeypatch.setattr(encoder, "SCORE_TILE_BYTES", 4 * length * length)
    skips = Spy(needs_probs=False)
    batch = padded_batch(lengths=(length, length - 5), seed=1)
    with torch.inference_mode():
        sdpa_model({1: skips})(**batch, mode="gather")
        single = {k: v[:1] for k, v in batch.items()}
        sdpa_model({1: skips})(**single, mode="gather")
        reference = sdpa_model(attention="eager")(**batch, mode="gather", output_attentions=True)
    alive = batch["attention_mask"].bool()
    expected = attention_token_scores(reference.attentions[1], alive)
    torch.testing.assert_close(skips.seen[0].token_scores, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(skips.seen[1].token_scores, expected[:1], rtol=0, atol=1e-6)


def test_output_attentions_still_returns_every_layers_probabilities():
    batch = random_batch()
    model = sdpa_model(SELECTOR_SETS["topk"]())
    out = model(**batch, mode="mask", output_attentions=True)
    reference = sdpa_model(SELECTOR_SETS["topk"](), attention="eager")(**batch, mode="mask", output_attentions=True)
    assert len(out.attentions) == 4
    for a, b in zip(out.attentions, reference.attentions):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_batch1_gather_path_has_one_sync_per_pruning_layer_and_no_masking():
    model = sdpa_model(SELECTOR_SETS["topk"]())
    batch = {k: v[:1] for k, v in random_batch().items()}
    counter = OpCounter()
    with torch.inference_mode(), counter:
        model(**batch, mode="gather", record=False)
    # alive.all() once per forward, then one per pruning layer (top-k's keep count: the next shapes)
    assert sum(counter.counts[op] for op in ("is_nonzero", "item", "_local_scalar_dense", "nonzero")) == 1 + 3
    assert counter.counts["nonzero"] == 0 and counter.counts["scatter"] == 0  # top-k's fast path: no mask
    assert counter.counts["masked_fill"] == 0 and counter.counts["masked_fill_"] == 0
    assert counter.counts["index_put"] == 0 and counter.counts["index_put_"] == 0  # no recording
    assert counter.counts["topk"] == 0


def test_selectors_without_a_fast_path_gather_through_their_mask():
    model = sdpa_model({0: FixedSelector({0: [3, 5, 7]}), 2: FixedSelector({0: [9, 10]})})
    batch = {k: v[:1] for k, v in random_batch().items()}
    counter = OpCounter()
    with torch.inference_mode(), counter:
        out = model(**batch, mode="gather", record=False)
    assert counter.counts["nonzero"] == 2 and out.lengths_kept[0].tolist() == [9, 9, 7, 7]
    assert all(decision is not None for decision in (out.decisions[0], out.decisions[2]))


def test_fast_path_and_mask_path_keep_the_same_tokens():
    # batch 1 takes top-k's fast path in gather mode, never in mask mode or with protected tokens
    model = sdpa_model({0: TopKSelector(0.8), 1: TopKSelector(0.6), 3: TopKSelector(0.3)})
    for seed in range(4):
        batch = {k: v[:1] for k, v in random_batch(seed=seed).items()}
        with torch.inference_mode():
            fast = model(**batch, mode="gather")
            masked = model(**batch, mode="mask")
            protected = model(**batch, mode="gather", protect_mask=torch.zeros_like(batch["attention_mask"]))
        assert fast.decisions[0] is None and protected.decisions[0] is not None
        for out in (masked, protected):
            torch.testing.assert_close(fast.logits, out.logits, rtol=0, atol=1e-5)
            assert torch.equal(fast.lengths_kept, out.lengths_kept)
            for a, b in zip(fast.kept, out.kept):
                assert torch.equal(a, b)


def test_forward_at_lengths_equals_a_model_keeping_the_first_tokens():
    batch = {k: v[:1] for k, v in random_batch().items()}
    kept = [12, 9, 5, 2]
    for qa in (False, True):
        first = sdpa_model({layer: FirstK(k) for layer, k in enumerate(kept)}, qa=qa)
        with torch.inference_mode():
            out = first(**batch, mode="gather")
            ideal = first.forward_at_lengths(batch["input_ids"], batch["token_type_ids"], [12, *kept[:-1]], kept)
        assert out.lengths_kept[0].tolist() == kept
        torch.testing.assert_close(ideal, out.logits, rtol=0, atol=1e-5)


def test_forward_at_lengths_refuses_what_it_cannot_time():
    batch = random_batch()
    model = sdpa_model()
    with pytest.raises(ValueError, match="batch 1"):
        model.forward_at_lengths(batch["input_ids"], None, [12] * 4, [12] * 4)
    one = batch["input_ids"][:1]
    with pytest.raises(ValueError, match="cascade"):
        model.forward_at_lengths(one, None, [12, 9, 9, 9], [10, 9, 9, 9])
    with pytest.raises(ValueError, match=r"\[1, lengths_in\]"):
        model.forward_at_lengths(one, None, [12, 13, 13, 13], [13, 13, 13, 13])
    eager_hf = PrunableModel(BertForSequenceClassification(tiny_config()).eval())
    with pytest.raises(ValueError, match="attn_implementation='sdpa'"):
        eager_hf.forward_at_lengths(one, None, [12, 12, 12], [12, 12, 12])


def test_attention_setting_is_checked():
    with pytest.raises(ValueError, match="'sdpa' or 'eager'"):
        sdpa_model(attention="flash")
