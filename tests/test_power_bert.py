"""PoWER-BERT (baselines/power_bert.py) on a tiny random BERT: search gradients, retention
derivation, export round trip, modes, [CLS]."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from baselines.power_bert import (
    PoWERBERT,
    PoWERBERTSettings,
    derive_retention,
    power_bert_scores,
    validate_retention,
)
from tests.conftest import collate_pad0, step_context, toy_rows
from tests.conftest import padded_batch as batch
from tests.test_method_schedule import spy_on_method_optimizers
from top import train
from top.encoder import PrunableModel
from top.pruning.registry import build_method

LAYERS = 4


def tiny_config(layers: int = LAYERS, heads: int = 4) -> BertConfig:
    return BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=48,
        max_position_embeddings=64,
        num_labels=2,
        initializer_range=0.2,  # peaky attention: with 0.02 every token scores about the same
        attn_implementation="eager",
    )


def tiny_model(seed: int = 0, **config) -> PrunableModel:
    torch.manual_seed(seed)
    return PrunableModel(BertForSequenceClassification(tiny_config(**config)).eval())


def test_settings_defaults_and_validation():
    method = build_method("power_bert", tiny_config(), {"reg_lambda": 1e-3})
    assert isinstance(method, PoWERBERT)
    assert method.resolved == PoWERBERTSettings(reg_lambda=1e-3)
    assert [s.name for s in method.stages()] == ["search", "retrain"]
    assert method.store.weights.shape == (LAYERS, 63)  # ranks 1..63; [CLS] has no weight
    with pytest.raises(ValueError, match="unknown settings"):
        PoWERBERT(tiny_config(), {"lambda": 1e-3})
    with pytest.raises(ValueError, match="retention_rule"):
        PoWERBERT(tiny_config(), {"retention_rule": "median"})


def test_score_is_attention_received_from_others_heads_averaged():
    model = tiny_model()
    inputs = batch((9, 6), width=12)
    with torch.no_grad():
        out = model(**inputs, output_attentions=True)
    alive = inputs["attention_mask"].bool()
    probs = out.attentions[0]
    scores = power_bert_scores(probs, alive)
    for b in range(2):
        n = int(alive[b].sum())
        p = probs[b, :, :n, :n].mean(0)  # heads averaged; queries x keys
        expected = p.sum(0) - p.diagonal()
        torch.testing.assert_close(scores[b, :n], expected)
        assert torch.all(torch.isinf(scores[b, n:]))
    # padding does not change it
    short = {k: v[:, :9] for k, v in inputs.items()}
    with torch.no_grad():
        again = model(**short, output_attentions=True)
    torch.testing.assert_close(power_bert_scores(again.attentions[0], alive[:, :9]), scores[:, :9], atol=1e-5, rtol=1e-5)


def test_search_stage_gives_gradients_to_retention_weights():
    model = tiny_model()
    method = PoWERBERT(tiny_config(), {"reg_lambda": 0.0})
    with torch.no_grad():  # distinct weights, to check which token gets which
        method.store.weights.copy_(torch.linspace(1.0, 0.5, 63).expand(LAYERS, 63))
    model.set_selectors(method.selectors("search"))
    model.train()
    inputs = batch()
    out = model(**inputs, mode="mask")
    alive = inputs["attention_mask"].bool()
    for layer, decision in enumerate(out.decisions):
        assert torch.equal(decision.hard, alive)  # nothing removed in the search
        ranks = decision.aux["ranks"]
        assert torch.all(ranks[:, 0] == 0)  # [CLS] ranks first ...
        assert torch.all(decision.soft[:, 0] == 1.0)  # ... with weight 1
        row = torch.cat([torch.ones(1), method.store.weights[layer].detach()])
        torch.testing.assert_close(decision.soft[alive], row[ranks[alive]])
        assert torch.all(decision.soft[~alive] == 0)
        # rank order follows the score among the non-[CLS] alive tokens
        for b in range(alive.shape[0]):
            n = int(alive[b].sum())
            s = decision.aux["scores"][b, 1:n]
            r = ranks[b, 1:n]
            assert torch.equal(r.argsort(), s.argsort(descending=True, stable=True))
    task = torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 1]))
    extra, _ = method.extra_loss("search", step_context(out, task))
    (task + extra).backward()
    grad = method.store.weights.grad
    longest = int(alive.sum(1).max())
    assert grad is not None
    for layer in range(LAYERS - 1):
        assert torch.all(grad[layer, : longest - 1] != 0), layer  # every used rank gets task gradient
    # ranks no input reached get none; nor does the last layer of a classifier, whose head reads
    # [CLS] only (so the L1 penalty alone drives its weights, and its count, down to [CLS])
    assert torch.all(grad[:, longest - 1 :] == 0)
    assert torch.all(grad[LAYERS - 1] == 0)
    assert int(method.store.max_seen) == longest
    groups = method.parameter_groups("search")
    assert len(groups) == 1 and groups[0]["params"][0] is method.store.weights
    assert groups[0]["lr"] == method.resolved.retention_lr
    assert (groups[0]["schedule"], groups[0]["warmup_ratio"]) == ("linear", 0.1)
    assert method.parameter_groups("retrain") == []


def test_retention_lr_scale_multiplies_the_retention_learning_rate():
    method = PoWERBERT(tiny_config(), {"retention_lr": 2e-3, "retention_lr_scale": 10, "max_length": 6})
    [group] = method.parameter_groups("search")
    assert group["lr"] == pytest.approx(2e-2)
    with pytest.raises(ValueError, match="retention_lr_scale must be >= 0"):
        PoWERBERT(tiny_config(), {"retention_lr_scale": -1})


def reference_forward(model: PrunableModel, inputs, weights: torch.Tensor, before_ffn: bool) -> torch.Tensor:
    """The search-stage forward written out layer by layer: the token of rank ``j`` is scaled by
    ``weights[l, j]`` ([CLS] by 1) either after the attention sublayer's LayerNorm, before the
    feed-forward block (the reference's ``Soft_Extract``, model/model.py ``_wrap_layer``), or on
    the layer's output. Returns the logits."""
    alive = inputs["attention_mask"].bool()
    x = model.hf.base_model.embeddings(input_ids=inputs["input_ids"], token_type_ids=inputs["token_type_ids"])
    for index, layer in enumerate(model.layers):
        context, probs = PrunableModel._self_attention(layer, x, alive[:, None, None, :], eager=True)
        h = layer.attention.output(context, x)
        ranks = power_bert_scores(probs, alive).masked_fill(~alive, float("-inf"))
        ranks[:, 0] = float("inf")
        ranks = ranks.argsort(dim=1, descending=True, stable=True).argsort(dim=1)
        scale = torch.cat([torch.ones(1), weights[index]])[ranks] * alive
        scale[:, 0] = 1.0
        if before_ffn:
            h = h * scale[..., None]
            x = layer.output(layer.intermediate(h), h)
        else:
            x = layer.output(layer.intermediate(h), h) * scale[..., None]
    return model._head(x)


def test_soft_extract_scales_the_feed_forward_input_as_the_reference():
    """The reference applies Soft-Extract to the attention sublayer's normalised output, which is
    the feed-forward block's input and residual. Scaling the layer output instead is not
    equivalent (the feed-forward residual's LayerNorm renormalises the scaled vector)."""
    model = tiny_model()
    method = PoWERBERT(tiny_config())
    with torch.no_grad():
        method.store.weights.copy_(torch.linspace(1.0, 0.1, 63).expand(LAYERS, 63))
    model.set_selectors(method.selectors("search"))
    inputs = batch()
    with torch.no_grad():
        out = model(**inputs, mode="mask")
        reference = reference_forward(model, inputs, method.store.weights, before_ffn=True)
        after = reference_forward(model, inputs, method.store.weights, before_ffn=False)
    assert all(decision.soft_on == "ffn_input" for decision in out.decisions)
    torch.testing.assert_close(out.logits, reference, rtol=0, atol=1e-5)
    assert not torch.allclose(reference, after, atol=1e-3)


def test_l1_penalty_is_layer_weighted():
    method = PoWERBERT(tiny_config(), {"reg_lambda": 0.01, "max_length": 6})
    with torch.no_grad():
        method.store.weights.copy_(torch.tensor([[1.0, 0.5, 0.0, 0.0, 0.7]] * LAYERS))
        method.store.max_seen.fill_(5)  # inputs of up to 5 tokens: ranks 1..4 reached, rank 5 not
    loss, _ = method.extra_loss("search", step_context(None, torch.tensor(0.0)))
    assert float(loss.detach()) == pytest.approx(0.01 * (1 + 2 + 3 + 4) * 1.5)
    loss.backward()
    torch.testing.assert_close(method.store.weights.grad[:, 0], 0.01 * torch.arange(1.0, LAYERS + 1))
    assert torch.all(method.store.weights.grad[:, 4] == 0)
    assert method.extra_loss("retrain", step_context(None, torch.tensor(0.0))) == (None, {})
    scaled = PoWERBERT(tiny_config(), {"reg_lambda": 0.01, "reg_lambda_scale": 3.0, "max_length": 6})
    with torch.no_grad():
        scaled.store.weights.copy_(torch.tensor([[1.0, 0.5, 0.0, 0.0, 0.7]] * LAYERS))
        scaled.store.max_seen.fill_(5)
    loss, _ = scaled.extra_loss("search", step_context(None, torch.tensor(0.0)))
    assert float(loss.detach()) == pytest.approx(0.03 * (1 + 2 + 3 + 4) * 1.5)


def test_retention_derivation_is_non_increasing():
    weights = torch.zeros(LAYERS, 10)
    weights[0, :5] = 1.0
    weights[0, 5] = 0.2  # mass 5.2 -> 1 + 5
    weights[1, :7] = 0.95  # mass 6.65 -> 1 + 6 = 7, capped at 6 (running minimum)
    weights[2, :3] = 1.0  # mass 3.0 -> 4
    weights[3, :4] = 0.9  # mass 3.6 -> 4
    weights[3, 8:] = 1.0  # ranks no input reached do not count
    counts = derive_retention(weights, used_ranks=8, rule="mass")
    assert counts == [6, 6, 4, 4]
    assert all(a >= b for a, b in zip(counts, counts[1:]))
    assert derive_retention(weights, used_ranks=8, rule="count", count_threshold=0.5) == [6, 6, 4, 4]
    assert derive_retention(weights, used_ranks=8, rule="count", count_threshold=0.95) == [6, 1, 1, 1]


def test_on_stage_end_derives_stores_and_exports_the_retention():
    model = tiny_model()
    method = PoWERBERT(tiny_config())
    model.set_selectors(method.selectors("search"))
    with torch.no_grad():
        model(**batch(), mode="mask")  # records the longest input (14)
        method.store.weights[:, :] = 0.0
        method.store.weights[0, :9] = 1.0
        method.store.weights[1, :10] = 1.0  # would increase: capped
        method.store.weights[2, :4] = 1.0
        method.store.weights[3, :2] = 0.7
    method.on_stage_end("search")
    assert method.retention() == [10, 10, 5, 2]
    exported = json.loads(json.dumps(method.export()))
    assert exported["retention"] == [10, 10, 5, 2]
    assert exported["max_seen_length"] == 14
    assert exported["retention_length"] is None


def test_increasing_retention_raises_a_clear_error():
    with pytest.raises(ValueError, match=r"must not increase with depth.*retention\[1\] = 10 > retention\[0\] = 8"):
        PoWERBERT(tiny_config(), {"retention": [8, 10, 6, 4]})
    with pytest.raises(ValueError, match="4 layers"):
        PoWERBERT(tiny_config(), {"retention": [8, 6, 4]})
    with pytest.raises(ValueError, match="positive integer"):
        PoWERBERT(tiny_config(), {"retention": [8, 6, 0, 0]})
    with pytest.raises(ValueError, match="must not increase"):
        PoWERBERT.inference_selectors({"retention": [4, 5, 3, 2]}, tiny_config())
    assert validate_retention([9, 9, 3, 1], LAYERS) == [9, 9, 3, 1]


def test_explicit_retention_skips_the_search():
    method = PoWERBERT(tiny_config(), {"retention": "12,10,6,3", "retrain_epochs": 2})
    assert [(s.name, s.epochs) for s in method.stages()] == [("retrain", 2.0)]
    assert method.retention() == [12, 10, 6, 3]
    assert method.export()["source"] == "settings"
    with pytest.raises(RuntimeError, match="search"):
        PoWERBERT(tiny_config()).export()


def expected_keep(out, attention_mask, counts):
    """[CLS] + the k - 1 best other alive tokens by score, layer by layer."""
    alive = attention_mask.bool()
    result = []
    for layer, k in enumerate(counts):
        scores = power_bert_scores(out.attentions[layer], alive)
        keep = torch.zeros_like(alive)
        for b in range(alive.shape[0]):
            others = torch.nonzero(alive[b, 1:]).squeeze(1) + 1
            best = others[scores[b, others].argsort(descending=True, stable=True)][: max(0, int(k[b]) - 1)]
            keep[b, 0] = True
            keep[b, best] = True
        result.append(keep)
        alive = keep
    return result


@pytest.mark.parametrize("retention_length", [None, 16])
def test_hard_extract_keeps_exactly_the_exported_counts(retention_length):
    model = tiny_model()
    settings = {"retention": [12, 9, 5, 2]}
    if retention_length is not None:
        settings["retention_length"] = retention_length
    exported = json.loads(json.dumps(PoWERBERT(tiny_config(), settings).export()))
    model.set_selectors(PoWERBERT.inference_selectors(exported, model.config))
    inputs = batch((14, 11, 7))
    real = inputs["attention_mask"].sum(1)
    with torch.no_grad():
        out = model(**inputs, mode="mask", output_attentions=True)
    counts = []
    for k in exported["retention"]:
        if retention_length is None:
            per_example = torch.full_like(real, k)
        else:  # scaled to each example's real length
            per_example = torch.tensor([math.ceil(k * int(n) / retention_length) for n in real])
        counts.append(per_example)
    expected_lengths = torch.stack([torch.minimum(c, real) for c in counts], dim=1)
    assert torch.equal(out.lengths_kept, expected_lengths)
    expected = expected_keep(out, inputs["attention_mask"], counts)
    for layer in range(LAYERS):
        assert torch.equal(out.kept[layer], expected[layer]), layer
    # the training-time retrain selectors decide the same
    method = PoWERBERT(tiny_config(), settings)
    model.set_selectors(method.selectors("retrain"))
    with torch.no_grad():
        again = model(**inputs, mode="mask")
    assert torch.equal(again.lengths_kept, out.lengths_kept)


def test_gather_mode_predicts_like_mask_mode():
    model = tiny_model(seed=1)
    model.set_selectors(PoWERBERT.inference_selectors({"retention": [13, 8, 8, 3]}, model.config))
    inputs = batch((16, 12, 9, 5), seed=3)
    with torch.no_grad():
        masked = model(**inputs, mode="mask")
        gathered = model(**inputs, mode="gather")
    assert torch.equal(masked.lengths_kept, gathered.lengths_kept)
    assert torch.equal(gathered.lengths_kept[:, -1], torch.tensor([3, 3, 3, 3]))
    torch.testing.assert_close(gathered.logits, masked.logits, atol=1e-5, rtol=1e-5)


def test_cls_is_never_dropped():
    model = tiny_model()
    model.set_selectors(PoWERBERT.inference_selectors({"retention": [1, 1, 1, 1]}, model.config))
    inputs = batch()
    with torch.no_grad():
        for mode in ("mask", "gather"):
            out = model(**inputs, mode=mode)
            assert torch.all(out.lengths_kept == 1)
            for kept in out.kept:
                assert torch.all(kept[:, 0])
        # [CLS] is kept even when it is not among the top-scoring tokens
        out = model(**inputs, mode="mask", output_attentions=True)
    scores = power_bert_scores(out.attentions[0], inputs["attention_mask"].bool())
    assert torch.all(out.decisions[0].hard[:, 0])
    assert torch.any(scores[:, 0] < scores[:, 1:].max(dim=1).values)


def test_heads_come_from_the_config():
    model = tiny_model(heads=2)
    method = PoWERBERT(tiny_config(heads=2), {"retention": [9, 7, 5, 3]})
    assert method.dims.heads == 2
    model.set_selectors(method.selectors("retrain"))
    with torch.no_grad():
        out = model(**batch(), mode="gather")
    assert torch.all(out.lengths_kept[:, -1] == 3)
    wrong = PoWERBERT.inference_selectors({"retention": [9, 7, 5, 3]}, tiny_config(heads=4))
    model.set_selectors(wrong)
    with pytest.raises(ValueError, match="heads"):
        model(**batch(), mode="mask")


def test_runs_end_to_end_with_the_training_loop(tmp_path):
    model = tiny_model()
    method = PoWERBERT(tiny_config(), {"search_epochs": 2, "retrain_epochs": 1, "retention_lr": 0.1, "reg_lambda": 0.05})
    settings = train.TrainSettings(batch_size=8, learning_rate=1e-3, seed=0, log_every=1)
    history = train.run_stages(model, method, toy_rows(), settings, collate=collate_pad0, checkpoint_dir=tmp_path / "ckpt")
    assert {record["stage"] for record in history} == {"search", "retrain"}
    retention = method.retention()
    assert retention is not None
    assert all(a >= b for a, b in zip(retention, retention[1:]))
    assert retention[-1] < 14  # the penalty eliminated something
    weights = method.store.weights.detach()
    assert float(weights.min()) >= 0.0 and float(weights.max()) <= 1.0
    exported = json.loads(json.dumps(method.export()))
    model.set_selectors(PoWERBERT.inference_selectors(exported, model.config))
    inputs = {k: v for k, v in collate_pad0(toy_rows(6, seed=5)).items() if k != "labels"}
    with torch.no_grad():
        masked, gathered = model(**inputs, mode="mask"), model(**inputs, mode="gather")
    torch.testing.assert_close(gathered.logits, masked.logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(gathered.lengths_kept[:, -1], torch.minimum(inputs["attention_mask"].sum(1), torch.tensor(retention[-1])))


class RecordingPoWERBERT(PoWERBERT):
    """PoWER-BERT that records its retention weights' learning rate at every search step."""

    def extra_loss(self, stage, step):
        if stage == "search":
            self.rates.append((step.step, step.total_steps, self.optimizers[-1].param_groups[0]["lr"]))
        return super().extra_loss(stage, step)


def test_retention_learning_rate_warms_up_then_decays(monkeypatch):
    """The reference's schedule for the retention weights: linear warm-up over 10% of the search
    steps, then linear decay to 0 (the encoder's shape, top.optim.linear_factor)."""
    method = RecordingPoWERBERT(tiny_config(), {"search_epochs": 2, "retrain_epochs": 0, "retention_lr": 0.01, "reg_lambda": 0.05})
    method.rates, method.optimizers = [], spy_on_method_optimizers(monkeypatch)
    settings = train.TrainSettings(batch_size=2, learning_rate=1e-3, warmup_ratio=0.0, seed=0)
    train.run_stages(tiny_model(), method, toy_rows(), settings, collate=collate_pad0)
    total = 24  # 24 rows / 2 per batch, 2 epochs; warm-up int(0.1 * 24) = 2 steps
    assert [step for step, _, _ in method.rates] == list(range(total))
    assert {t for _, t, _ in method.rates} == {total}
    rates = {step: lr for step, _, lr in method.rates}
    assert rates[0] == pytest.approx(0.01 / 2)  # warm-up, although the encoder has none here
    assert rates[1] == pytest.approx(0.01)
    assert rates[2] == pytest.approx(0.01)
    assert rates[13] == pytest.approx(0.01 * 11 / 22)
    assert rates[23] == pytest.approx(0.01 / 22)


def test_resumed_run_restores_the_retention(tmp_path):
    """A run resumed inside ``retrain`` skips the search (no ``on_stage_end``): the retrain
    selectors read the retention restored with the method's state."""
    settings = {"search_epochs": 1, "retrain_epochs": 2, "retention_lr": 0.2, "reg_lambda": 0.05}
    loop = train.TrainSettings(batch_size=8, learning_rate=1e-3, seed=0)
    first = PoWERBERT(tiny_config(), settings)
    train.run_stages(tiny_model(), first, toy_rows(), loop, collate=collate_pad0, checkpoint_dir=tmp_path)
    assert (tmp_path / "checkpoint.pt").exists()
    resumed = PoWERBERT(tiny_config(), settings)
    model = tiny_model(seed=7)
    train.run_stages(model, resumed, toy_rows(), loop, collate=collate_pad0, checkpoint_dir=tmp_path)
    assert resumed.retention() == first.retention()
    with torch.no_grad():
        out = model(**batch(), mode="gather")
    assert torch.equal(out.lengths_kept[:, -1], torch.minimum(batch()["attention_mask"].sum(1), torch.tensor(first.retention()[-1])))


def test_export_format_is_checked():
    with pytest.raises(ValueError, match="not a PoWER-BERT export"):
        PoWERBERT.inference_selectors({"format": "ltp/v1", "retention": [4, 3, 2, 1]}, tiny_config())
