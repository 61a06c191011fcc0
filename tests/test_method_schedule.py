"""Per-group learning-rate schedules of a method's own parameters (top/train.py: a parameter
group's ``"schedule"`` and ``"warmup_ratio"``), including a run resumed from a checkpoint."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.conftest import collate_pad0, tiny_config, toy_rows
from top import optim, train
from top.encoder import PrunableModel
from top.pruning.base import PruningMethod, Stage


def _optimizer(*groups):
    return torch.optim.AdamW([dict(group, params=[nn.Parameter(torch.zeros(1))]) for group in groups])


def _rates(optimizer, schedule, steps):
    rates = []
    for _ in range(steps):
        rates.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        schedule.step()
    return rates


def test_linear_factor_values():
    factor = optim.linear_factor(2, 10)
    assert [factor(s) for s in (0, 1, 2, 6, 9, 10)] == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.125, 0.0])
    no_warmup = optim.linear_factor(0, 4)
    assert [no_warmup(s) for s in range(4)] == pytest.approx([1.0, 0.75, 0.5, 0.25])


def test_groups_get_their_own_schedules():
    optimizer = _optimizer(
        {"lr": 1.0},  # constant (no key)
        {"lr": 2.0, "schedule": "linear"},  # the stage's warm-up ratio: 2 of 10 steps
        {"lr": 4.0, "schedule": "linear", "warmup_ratio": 0.0},
        {"lr": 8.0, "schedule": "constant"},
    )
    schedule = optim.method_schedule(optimizer, 0.2, total=10)
    rates = _rates(optimizer, schedule, 10)
    assert [r[0] for r in rates] == [1.0] * 10
    assert [r[3] for r in rates] == [8.0] * 10
    assert [rates[s][1] for s in (0, 1, 2, 6, 9)] == pytest.approx([1.0, 2.0, 2.0, 1.0, 0.25])
    assert [rates[s][2] for s in (0, 1, 5, 9)] == pytest.approx([4.0, 3.6, 2.0, 0.4])


def test_constant_groups_need_no_scheduler_and_bad_values_raise():
    assert optim.method_schedule(_optimizer({"lr": 1.0}, {"lr": 1.0, "schedule": "constant"}), 0.1, 10) is None
    with pytest.raises(ValueError, match="schedule must be"):
        optim.method_schedule(_optimizer({"lr": 1.0, "schedule": "cosine"}), 0.1, 10)
    with pytest.raises(ValueError, match="warmup_ratio"):
        optim.method_schedule(_optimizer({"lr": 1.0, "schedule": "linear", "warmup_ratio": 1.5}), 0.1, 10)


class _Interrupted(RuntimeError):
    pass


def spy_on_method_optimizers(monkeypatch) -> list[torch.optim.Optimizer]:
    """Every method optimiser the training loop builds, in order (a resumed run's optimiser
    replaces its group dicts when it loads its state, so the method's own dicts go stale)."""
    optimizers: list[torch.optim.Optimizer] = []
    real = optim.method_schedule

    def spy(optimizer, warmup_ratio, total):
        optimizers.append(optimizer)
        return real(optimizer, warmup_ratio, total)

    monkeypatch.setattr(train, "method_schedule", spy)
    return optimizers


class ScheduledMethod(PruningMethod):
    """No selectors; one scalar parameter on a linear schedule with warm-up, one constant. It
    records both groups' learning rates at every step and can stop a run at a given step."""

    name = "scheduled"

    def __init__(self, model_config, optimizers, stop_at: int | None = None):
        super().__init__(model_config)
        self.module.a = nn.Parameter(torch.zeros(()))
        self.module.b = nn.Parameter(torch.zeros(()))
        self.optimizers = optimizers
        self.stop_at = stop_at
        self.rates: dict[int, tuple[float, float]] = {}

    def stages(self):
        return [Stage("only", 2.0)]

    def selectors(self, stage):
        return {}

    def parameter_groups(self, stage):
        return [
            {"params": [self.module.a], "lr": 0.1, "schedule": "linear", "warmup_ratio": 0.25},
            {"params": [self.module.b], "lr": 0.2},
        ]

    def extra_loss(self, stage, step):
        if step.step == self.stop_at:
            raise _Interrupted
        groups = self.optimizers[-1].param_groups
        self.rates[step.step] = (groups[0]["lr"], groups[1]["lr"])
        return (self.module.a - 1.0) ** 2 + (self.module.b - 1.0) ** 2, {}

    def export(self):
        return {}

    @classmethod
    def inference_selectors(cls, exported, model_config):
        return {}


def _model():
    torch.manual_seed(0)
    from transformers import BertForSequenceClassification

    return PrunableModel(BertForSequenceClassification(tiny_config()).eval())


def test_schedule_in_the_training_loop_and_after_resuming(tmp_path, monkeypatch):
    optimizers = spy_on_method_optimizers(monkeypatch)
    settings = train.TrainSettings(batch_size=4, learning_rate=1e-3, seed=0)
    whole = ScheduledMethod(tiny_config(), optimizers)
    train.run_stages(_model(), whole, toy_rows(), settings, collate=collate_pad0)
    total, warmup = 12, 3  # 24 rows / 4, 2 epochs; int(0.25 * 12)
    assert sorted(whole.rates) == list(range(total))
    expected = [0.1 * optim.linear_factor(warmup, total)(s) for s in range(total)]
    assert [whole.rates[s][0] for s in range(total)] == pytest.approx(expected)
    assert [whole.rates[s][0] for s in (0, 2, 3, 11)] == pytest.approx([0.1 / 3, 0.1, 0.1, 0.1 / 9])
    assert {whole.rates[s][1] for s in range(total)} == {0.2}
    # stopped in the second epoch, then resumed from the end of the first: the schedule goes on
    first = ScheduledMethod(tiny_config(), optimizers, stop_at=8)
    with pytest.raises(_Interrupted):
        train.run_stages(_model(), first, toy_rows(), settings, collate=collate_pad0, checkpoint_dir=tmp_path)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["method_scheduler"] is not None
    resumed = ScheduledMethod(tiny_config(), optimizers)
    train.run_stages(_model(), resumed, toy_rows(), settings, collate=collate_pad0, checkpoint_dir=tmp_path)
    assert sorted(resumed.rates) == list(range(6, total))
    assert [resumed.rates[s][0] for s in range(6, total)] == pytest.approx(expected[6:])
    torch.testing.assert_close(resumed.module.a.detach(), whole.module.a.detach())
