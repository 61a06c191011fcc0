"""The training loop: it learns, it resumes from a checkpoint, it stops on a non-finite loss."""

from __future__ import annotations

import math

import datasets
import pytest
import torch
from transformers import BertForSequenceClassification

from tests.conftest import tiny_config
from top.encoder import PrunableModel
from top.pruning.base import Stage
from top.pruning.dense import Dense
from top.pruning.topk import TopK
from top.tasks.glue import collate
from top.train import NonFiniteLossError, TrainSettings, run_stages


def toy_data(n: int = 64, seed: int = 0) -> datasets.Dataset:
    """Label 1 iff token 7 occurs; random lengths."""
    g = torch.Generator().manual_seed(seed)
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for i in range(n):
        length = int(torch.randint(4, 12, (1,), generator=g))
        ids = torch.randint(10, 60, (length,), generator=g)
        ids[0] = 2
        label = i % 2
        if label:
            ids[int(torch.randint(1, length, (1,), generator=g))] = 7
        rows["input_ids"].append(ids.tolist())
        rows["attention_mask"].append([1] * length)
        rows["labels"].append(label)
    return datasets.Dataset.from_dict(rows)


class Finetune(Dense):
    def __init__(self, config, epochs):
        super().__init__(config)
        self.epochs = epochs

    def stages(self):
        return [Stage("finetune", self.epochs)]


def make_model(seed: int = 0) -> PrunableModel:
    torch.manual_seed(seed)
    return PrunableModel(BertForSequenceClassification(tiny_config()))


def collate0(features):
    return collate(features, pad_token_id=0)


def accuracy(model, data) -> float:
    batch = collate0(list(data))
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["attention_mask"], mode="gather").logits
    return float((logits.argmax(1) == batch["labels"]).float().mean())


def test_training_learns_a_toy_task():
    model, data = make_model(), toy_data()
    settings = TrainSettings(batch_size=8, learning_rate=2e-3, seed=0, log_every=1)
    history = run_stages(model, Finetune(model.config, 6), data, settings, collate=collate0)
    assert accuracy(model, data) >= 0.9
    assert history[-1]["loss"] < history[0]["loss"]


def test_topk_finetune_stage_trains_with_selectors_installed():
    model, data = make_model(), toy_data()
    method = TopK(model.config, {"keep_ratios": [1.0, 0.7, 0.5], "finetune_epochs": 1})
    run_stages(model, method, data, TrainSettings(batch_size=16, learning_rate=1e-3), collate=collate0)
    assert set(model.selectors) == {"1", "2"}


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path):
    data = toy_data(32)
    settings = TrainSettings(batch_size=8, learning_rate=1e-3, seed=5)
    straight = make_model()
    run_stages(straight, Finetune(straight.config, 3), data, settings, collate=collate0)

    checkpoint_dir = _interrupt_after_two_epochs(data, settings, tmp_path)
    resumed = make_model(seed=123)  # another init: everything must come from the checkpoint
    run_stages(resumed, Finetune(resumed.config, 3), data, settings, collate=collate0, checkpoint_dir=checkpoint_dir)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _interrupt_after_two_epochs(data, settings, folder):
    """Start a 3-epoch run and kill it (an exception) in its third epoch."""

    class Stop(Exception):
        pass

    model = make_model()
    calls = {"n": 0}
    steps_per_epoch = -(-len(data) // settings.batch_size)
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2 * steps_per_epoch:
            raise Stop
        return original(self, *args, **kwargs)

    torch.optim.AdamW.step = step
    try:
        with pytest.raises(Stop):
            run_stages(model, Finetune(model.config, 3), data, settings, collate=collate0, checkpoint_dir=folder)
    finally:
        torch.optim.AdamW.step = original
    assert torch.load(folder / "checkpoint.pt", weights_only=False)["epoch"] == 1
    return folder


def test_non_finite_loss_names_the_step():
    model, data = make_model(), toy_data(16)
    with torch.no_grad():
        model.hf.classifier.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="stage 'finetune', step 0"):
        run_stages(model, Finetune(model.config, 1), data, TrainSettings(batch_size=8), collate=collate0)


def test_span_loss_is_the_mean_start_end_cross_entropy_without_padding():
    from top.train import task_loss

    logits = torch.zeros(1, 4, 2)
    logits[0, 3] = 100.0  # a padding position with a huge logit must not count
    labels = torch.tensor([[1, 2]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # three real positions with equal logits: each cross-entropy is log 3
    assert task_loss(logits, labels, mask).item() == pytest.approx(math.log(3))
    assert task_loss(logits, labels).item() > 50  # without the mask the padding dominates


class WithParameter(Finetune):
    """A method whose own parameter ``w`` enters the loss as ``100 * sum(w)`` (gradient 100
    everywhere), in a group that sets ``clip`` only when it is given; optionally freezes the
    encoder's embeddings."""

    def __init__(self, config, clip=None, frozen=()):
        super().__init__(config, 1)
        self.module.w = torch.nn.Parameter(torch.ones(3))
        self.clip, self.frozen = clip, tuple(frozen)

    def parameter_groups(self, stage):
        group = {"params": [self.module.w], "lr": 0.1}
        if self.clip is not None:
            group["clip"] = self.clip
        return [group]

    def extra_loss(self, stage, step):
        return 100.0 * self.module.w.sum(), {}

    def frozen_model_parameters(self, stage):
        return self.frozen


def _gradients_at_step(monkeypatch, method, model, data, max_grad_norm=1.0):
    """Train one step; the gradients each optimiser saw when it stepped, by parameter name."""
    names = {id(p): n for n, p in [*model.hf.named_parameters(), *(("w", method.module.w),)]}
    seen = {}
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        seen.update({names[id(p)]: p.grad.clone() for g in self.param_groups for p in g["params"]})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    run_stages(model, method, data, TrainSettings(batch_size=len(data), learning_rate=1e-2, max_grad_norm=max_grad_norm), collate=collate0)
    return seen


@pytest.mark.parametrize("clip", [None, True, False])
def test_method_groups_are_clipped_unless_they_set_clip_false(monkeypatch, clip):
    model, data = make_model(), toy_data(8)
    seen = _gradients_at_step(monkeypatch, WithParameter(model.config, clip), model, data)
    norm = float(torch.linalg.vector_norm(seen["w"]))
    if clip is False:
        assert torch.equal(seen["w"], torch.full((3,), 100.0))  # never clipped
    else:  # the default (LTP, PoWER-BERT): clipped on its own to max_grad_norm
        assert norm == pytest.approx(1.0, rel=1e-4)
    encoder = torch.linalg.vector_norm(torch.cat([g.flatten() for n, g in seen.items() if n != "w"]))
    assert float(encoder) <= 1.0 + 1e-4  # the encoder's own norm, not shrunk by the method's


def test_frozen_model_parameters_stay_put_and_count_in_the_clipping_norm(monkeypatch):
    model, data = make_model(), toy_data(8)
    before = {n: p.detach().clone() for n, p in model.hf.named_parameters()}
    method = WithParameter(model.config, frozen=("embeddings",))
    seen = _gradients_at_step(monkeypatch, method, model, data, max_grad_norm=1e-9)
    assert seen and not any("embeddings" in n for n in seen)  # in no optimiser
    for name, param in model.hf.named_parameters():
        assert torch.equal(param.detach(), before[name]) == ("embeddings" in name), name
        assert param.grad is None  # cleared after the step, frozen ones too
    # with the embeddings' gradients in the norm, the others' norm is below max_grad_norm
    trained = float(torch.linalg.vector_norm(torch.cat([g.flatten() for n, g in seen.items() if n != "w"])))
    assert trained < 1e-9 * (1 - 1e-3)
