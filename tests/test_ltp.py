"""LTP (baselines/ltp.py) on a tiny random BERT: gradients, export round trip, modes, [CLS]."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from baselines.ltp import LTP, LTPSettings, initial_thresholds, ltp_scores
from tests.conftest import collate_pad0, step_context, toy_rows
from tests.conftest import padded_batch as batch
from tests.test_method_schedule import spy_on_method_optimizers
from top import train
from top.encoder import PrunableModel
from top.pruning.base import attention_token_scores
from top.pruning.registry import build_method

LAYERS = 4


def tiny_config(layers: int = LAYERS) -> BertConfig:
    return BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
        num_labels=2,
        initializer_range=0.2,  # peaky attention: with 0.02 every score is ~1 (uniform)
        attn_implementation="eager",
    )


def tiny_model(seed: int = 0, layers: int = LAYERS) -> PrunableModel:
    torch.manual_seed(seed)
    return PrunableModel(BertForSequenceClassification(tiny_config(layers)).eval())


def set_thresholds(method: LTP, values) -> None:
    with torch.no_grad():
        method.store.thresholds.copy_(torch.tensor(values, dtype=torch.float32))


def test_settings_defaults_and_validation():
    method = build_method("ltp", tiny_config(), {"final_threshold": 2.0})
    assert isinstance(method, LTP)
    assert method.resolved == LTPSettings(final_threshold=2.0)
    assert [s.name for s in method.stages()] == ["soft", "hard"]
    assert [s.name for s in LTP(tiny_config(), {"hard_epochs": 0}).stages()] == ["soft"]
    with pytest.raises(ValueError, match="unknown settings"):
        LTP(tiny_config(), {"lamda": 0.1})
    with pytest.raises(ValueError, match="temperature"):
        LTP(tiny_config(), {"temperature": 0})


def test_thresholds_start_linear_in_depth_and_layer0_never_prunes():
    method = LTP(tiny_config(), {"final_threshold": 1.5})
    assert initial_thresholds(LAYERS, 1.5) == pytest.approx([0.5, 1.0, 1.5])
    assert method.thresholds()[0] is None
    assert method.thresholds()[1:] == pytest.approx([0.5, 1.0, 1.5])
    for stage in ("soft", "hard"):
        assert sorted(method.selectors(stage)) == [1, 2, 3]
    assert initial_thresholds(1, 1.5) == []
    assert LTP(tiny_config(layers=1)).selectors("soft") == {}


def test_score_is_padding_independent_and_relates_to_reference_normaliser():
    model = tiny_model()
    short = batch((9, 6), width=9)
    padded = batch((9, 6), width=16)
    padded["input_ids"][:, :9] = short["input_ids"]
    a = model(**short, output_attentions=True)
    b = model(**padded, output_attentions=True)
    for layer in range(LAYERS):
        alive_a, alive_b = short["attention_mask"].bool(), padded["attention_mask"].bool()
        s_a = ltp_scores(a.attentions[layer], alive_a)
        s_b = ltp_scores(b.attentions[layer], alive_b)
        torch.testing.assert_close(s_a, s_b[:, :9], atol=1e-5, rtol=1e-5)
        # mean over alive tokens is exactly 1 (uniform share), whatever the length
        mean = (s_b * alive_b).sum(1) / alive_b.sum(1)
        torch.testing.assert_close(mean, torch.ones(2), atol=1e-5, rtol=1e-5)
        # the reference's score on inputs padded to P is sum_{h, alive q} p / (H * P): s = P * s_ref
        probs = b.attentions[layer] * alive_b[:, None, :, None]
        heads, width = probs.shape[1], probs.shape[-1]
        s_ref = probs.sum(dim=(1, 2)) / (heads * width)
        torch.testing.assert_close(s_b, width * s_ref * alive_b, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            s_b, (attention_token_scores(b.attentions[layer], alive_b) * alive_b.sum(1, keepdim=True)).masked_fill(~alive_b, 0)
        )


def test_soft_stage_gives_gradients_to_every_threshold():
    model = tiny_model()
    method = LTP(tiny_config(), {"reg_lambda": 0.5})
    model.set_selectors(method.selectors("soft"))
    model.train()
    inputs = batch()
    out = model(**inputs, mode="mask")
    for layer, decision in enumerate(out.decisions):
        if layer == 0:
            assert decision is None
            continue
        alive = inputs["attention_mask"].bool()
        assert torch.equal(decision.hard, alive)  # nothing removed in the soft stage
        assert torch.all(decision.soft[:, 0] == 1.0)  # [CLS]
        assert torch.all(decision.soft[~alive] == 0.0)
        inner = decision.soft[:, 1:][alive[:, 1:]]
        assert torch.all((inner > 0) & (inner < 1))
    task = torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 1]))
    extra, scalars = method.extra_loss("soft", step_context(out, task))
    masks = [d.aux["mask"] for d in out.decisions if d is not None]
    prunable = inputs["attention_mask"].float()
    prunable[:, 0] = 0.0  # [CLS] is always kept: not in the average
    expected = 0.5 * sum((m * prunable).sum() / prunable.sum() for m in masks)
    torch.testing.assert_close(extra, expected)
    assert scalars["ltp_regulariser"] == pytest.approx(float(expected.detach()))
    (task + extra).backward()
    grad = method.store.thresholds.grad
    assert grad is not None and torch.all(grad != 0), grad
    assert model.hf.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    groups = method.parameter_groups("soft")
    assert len(groups) == 1 and groups[0]["params"][0] is method.store.thresholds
    assert groups[0]["lr"] == method.resolved.threshold_lr
    assert (groups[0]["schedule"], groups[0]["warmup_ratio"]) == ("linear", 0.0)
    assert method.parameter_groups("hard") == []  # thresholds frozen in the hard stage
    assert method.extra_loss("hard", step_context(out, task)) == (None, {})


def soft_forward(method: LTP, inputs, seed: int = 0, protect=None):
    model = tiny_model(seed)  # eval mode: no dropout, so forwards of the same inputs agree
    model.set_selectors(method.selectors("soft"))
    return model(**inputs, mode="mask", protect_mask=protect)


def threshold_grad(loss: torch.Tensor, method: LTP) -> torch.Tensor:
    return torch.autograd.grad(loss, method.store.thresholds, retain_graph=True)[0]


def test_regulariser_ignores_protected_tokens():
    """Protected tokens are kept by the encoder whatever their soft mask says, so the thresholds
    must get no gradient from them: the regulariser averages over the unprotected slots only."""
    method = LTP(tiny_config(), {"reg_lambda": 1.0})
    inputs = batch()
    protect = torch.zeros_like(inputs["attention_mask"])
    protect[:, :5] = 1  # [CLS] and a 4-token "question"
    out = soft_forward(method, inputs, protect=protect)
    alive = inputs["attention_mask"].bool()
    masks = [d.aux["mask"] for d in out.decisions if d is not None]
    # the selector's mask on protected slots is neither 0 nor 1 (the encoder forces 1 there)
    assert all(torch.all((m[:, 1:5] > 0) & (m[:, 1:5] < 1)) for m in masks)
    context = step_context(out, torch.tensor(0.0))
    context.batch = {"protect_mask": protect}
    extra, _ = method.extra_loss("soft", context)
    unprotected = (alive & ~protect.bool()).float()
    expected = sum((m * unprotected).sum() / unprotected.sum() for m in masks)
    torch.testing.assert_close(extra, expected)
    grad = threshold_grad(extra, method)
    torch.testing.assert_close(grad, threshold_grad(expected, method))
    # ... which is not the gradient with the protected slots counted (the test can fail)
    every = alive.float()
    every[:, 0] = 0.0
    with_protected = sum((m * every).sum() / every.sum() for m in masks)
    assert not torch.allclose(grad, threshold_grad(with_protected, method), rtol=1e-3, atol=0)
    # without a protect mask in the batch every real token but [CLS] counts
    plain, _ = method.extra_loss("soft", step_context(out, torch.tensor(0.0)))
    torch.testing.assert_close(plain, with_protected)


def reference_regulariser(method: LTP, out, lengths, width: int) -> torch.Tensor:
    """The reference's ``sum_l mask_l.mean()`` over every row padded to ``width`` slots, a padded
    slot (score 0) at ``sigmoid(-theta / T)``; [CLS] (slot 0) left out, as the harness keeps it."""
    temperature = method.resolved.temperature
    total = 0.0
    for layer, decision in enumerate(out.decisions):
        if decision is None:
            continue
        theta = method.store.threshold(layer)
        full = torch.sigmoid(-theta / temperature).expand(len(lengths), width).clone()
        for row, n in enumerate(lengths):
            full[row, :n] = decision.aux["mask"][row, :n]
        total = total + full[:, 1:].mean()
    return total


def test_padded_slots_average_is_the_reference_regulariser():
    lengths = (14, 11, 7)
    inputs = batch(lengths)
    wide = batch(lengths, width=20)
    wide["input_ids"][:, :14] = inputs["input_ids"]
    real = LTP(tiny_config(), {"reg_lambda": 1.0})
    reference = LTP(tiny_config(), {"reg_lambda": 1.0, "reg_average": "padded_slots", "reg_length": 128})
    per_batch = LTP(tiny_config(), {"reg_lambda": 1.0, "reg_average": "padded_slots"})
    losses = {}
    for name, method in (("real", real), ("reference", reference), ("per_batch", per_batch)):
        for width, data in ((14, inputs), (20, wide)):
            out = soft_forward(method, data)
            losses[name, width] = method.extra_loss("soft", step_context(out, torch.tensor(0.0)))[0]
            if name == "reference":
                expected = reference_regulariser(method, out, lengths, 128)
                torch.testing.assert_close(losses[name, width], expected)
                torch.testing.assert_close(threshold_grad(losses[name, width], method), threshold_grad(expected, method))
            if name == "per_batch":
                torch.testing.assert_close(losses[name, width], reference_regulariser(method, out, lengths, width))
    # real tokens and a fixed padded length do not depend on the batch's padding; the batch's
    # own width does
    torch.testing.assert_close(losses["real", 14], losses["real", 20], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(losses["reference", 14], losses["reference", 20], atol=1e-5, rtol=1e-5)
    assert abs(float(losses["per_batch", 14].detach()) - float(losses["per_batch", 20].detach())) > 1e-3
    assert abs(float(losses["real", 14].detach()) - float(losses["reference", 14].detach())) > 1e-3


def test_regulariser_settings_are_checked():
    assert LTPSettings().reg_average == "real_tokens"
    with pytest.raises(ValueError, match="reg_average"):
        LTP(tiny_config(), {"reg_average": "padded"})
    with pytest.raises(ValueError, match="only applies to reg_average 'padded_slots'"):
        LTP(tiny_config(), {"reg_length": 128})
    with pytest.raises(ValueError, match="reg_length"):
        LTP(tiny_config(), {"reg_average": "padded_slots", "reg_length": 0})
    assert LTP(tiny_config(), {"reg_average": "padded_slots", "reg_length": 128}).resolved.reg_length == 128


class RecordingLTP(LTP):
    """LTP that records its thresholds' learning rate at every soft step."""

    def extra_loss(self, stage, step):
        if stage == "soft":
            self.rates.append((step.step, step.total_steps, self.optimizers[-1].param_groups[0]["lr"]))
        return super().extra_loss(stage, step)


def test_threshold_learning_rate_decays_linearly_without_warm_up(monkeypatch):
    """The reference's threshold scheduler: linear decay from ``threshold_lr`` to 0 over the soft
    stage, no warm-up, whatever the encoder's warm-up."""
    method = RecordingLTP(tiny_config(), {"soft_epochs": 2, "hard_epochs": 0, "threshold_lr": 0.05, "reg_lambda": 1.0})
    method.rates, method.optimizers = [], spy_on_method_optimizers(monkeypatch)
    settings = train.TrainSettings(batch_size=4, learning_rate=1e-3, warmup_ratio=0.25, seed=0)
    train.run_stages(tiny_model(), method, toy_rows(), settings, collate=collate_pad0)
    total = 12  # 24 rows / 4 per batch, 2 epochs
    assert [step for step, _, _ in method.rates] == list(range(total))
    assert {t for _, t, _ in method.rates} == {total}
    rates = {step: lr for step, _, lr in method.rates}
    assert rates[0] == pytest.approx(0.05)  # no warm-up (the encoder warms up for 3 steps)
    assert rates[1] == pytest.approx(0.05 * 11 / 12)
    assert rates[6] == pytest.approx(0.05 * 6 / 12)
    assert rates[11] == pytest.approx(0.05 / 12)


def expected_keep(out, attention_mask, thresholds):
    """Recompute every layer's kept set from the attentions and the exported thresholds."""
    alive = attention_mask.bool()
    result = []
    for layer in range(len(out.kept)):
        if thresholds[layer] is None:
            keep = alive.clone()
        else:
            keep = (ltp_scores(out.attentions[layer], alive) > thresholds[layer]) & alive
            keep[:, 0] = True
        result.append(keep)
        alive = keep
    return result


def test_hard_decisions_match_exported_thresholds():
    model = tiny_model()
    method = LTP(tiny_config())
    set_thresholds(method, [0.8, 0.9, 1.0])
    exported = json.loads(json.dumps(method.export()))  # plain JSON
    assert exported["thresholds"][0] is None
    assert exported["thresholds"][1:] == pytest.approx([0.8, 0.9, 1.0])
    assert exported["reference_equivalent_thresholds"][1:] == pytest.approx([0.8 / 128, 0.9 / 128, 1.0 / 128])
    model.set_selectors(LTP.inference_selectors(exported, model.config))
    inputs = batch()
    with torch.no_grad():
        out = model(**inputs, mode="mask", output_attentions=True)
    expected = expected_keep(out, inputs["attention_mask"], exported["thresholds"])
    for layer in range(LAYERS):
        assert torch.equal(out.kept[layer], expected[layer]), layer
    real = inputs["attention_mask"].sum(1)
    assert torch.all(out.lengths_kept[:, -1] < real)  # something pruned ...
    assert torch.all(out.lengths_kept[:, -1] > 1)  # ... but not everything
    # the training-time hard selectors decide the same
    model.set_selectors(method.selectors("hard"))
    with torch.no_grad():
        again = model(**inputs, mode="mask")
    for layer in range(LAYERS):
        assert torch.equal(again.kept[layer], out.kept[layer])


def test_gather_mode_predicts_like_mask_mode():
    model = tiny_model(seed=1)
    method = LTP(tiny_config())
    set_thresholds(method, [0.8, 0.9, 1.0])
    model.set_selectors(LTP.inference_selectors(method.export(), model.config))
    inputs = batch((16, 12, 9, 5), seed=3)
    with torch.no_grad():
        masked = model(**inputs, mode="mask")
        gathered = model(**inputs, mode="gather")
    assert torch.equal(masked.lengths_kept, gathered.lengths_kept)
    assert torch.any(gathered.lengths_kept[:, -1] < inputs["attention_mask"].sum(1))
    torch.testing.assert_close(gathered.logits, masked.logits, atol=1e-5, rtol=1e-5)


def test_cls_is_never_dropped():
    model = tiny_model()
    method = LTP(tiny_config())
    set_thresholds(method, [1e6, 1e6, 1e6])  # nothing passes
    model.set_selectors(LTP.inference_selectors(method.export(), model.config))
    inputs = batch()
    with torch.no_grad():
        for mode in ("mask", "gather"):
            out = model(**inputs, mode=mode)
            assert torch.all(out.lengths_kept[:, 1:] == 1)
            assert torch.all(out.lengths_kept[:, 0] == inputs["attention_mask"].sum(1))
            for kept in out.kept:
                assert torch.all(kept[:, 0])
    # a selector on its own keeps [CLS] too, even when its score is below the threshold
    with torch.no_grad():
        out = model(**inputs, mode="mask", output_attentions=True)
    decision = out.decisions[1]
    assert torch.all(decision.hard[:, 0])


def test_inference_selectors_validate_the_export():
    exported = LTP(tiny_config()).export()
    with pytest.raises(ValueError, match="layers"):
        LTP.inference_selectors(exported, tiny_config(layers=3))
    bad = dict(exported, thresholds=[0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match="layer 0"):
        LTP.inference_selectors(bad, tiny_config())
    with pytest.raises(ValueError, match="not an LTP export"):
        LTP.inference_selectors(dict(exported, format="power_bert/v1"), tiny_config())


def test_runs_end_to_end_with_the_training_loop(tmp_path):
    model = tiny_model()
    method = LTP(tiny_config(), {"soft_epochs": 1, "hard_epochs": 1, "threshold_lr": 0.05, "reg_lambda": 1.0})
    before = method.thresholds()
    settings = train.TrainSettings(batch_size=8, learning_rate=1e-3, seed=0, log_every=1)
    history = train.run_stages(model, method, toy_rows(), settings, collate=collate_pad0, checkpoint_dir=tmp_path / "ckpt")
    assert {record["stage"] for record in history} == {"soft", "hard"}
    assert any("ltp_regulariser" in record for record in history)
    after = method.thresholds()
    assert after[1:] != pytest.approx(before[1:])  # learned in the soft stage
    exported = json.loads(json.dumps(method.export()))
    assert exported["thresholds"][1:] == pytest.approx(after[1:])
    model.set_selectors(LTP.inference_selectors(exported, model.config))
    inputs = collate_pad0(toy_rows(6, seed=5))
    with torch.no_grad():
        masked, gathered = (
            model(**{k: v for k, v in inputs.items() if k != "labels"}, mode="mask"),
            model(**{k: v for k, v in inputs.items() if k != "labels"}, mode="gather"),
        )
    torch.testing.assert_close(gathered.logits, masked.logits, atol=1e-5, rtol=1e-5)
