"""ToP's ablation switches: ``layer_gates: false`` (only the rank-bin gates, every pruning layer
always on) and ``rank_distill_weight: 0`` (no ranking distillation at all). Tiny random BERTs on
the CPU."""

from __future__ import annotations

import copy
import functools
import json

import numpy as np
import pytest
import torch

import top.train
from tests.test_top import BIG, evaluate_counted, make_batch, set_gates, tiny_config, tiny_model, toy_dataset  # noqa: F401 (fixture)
from top.encoder import PrunableModel
from top.pruning.base import StepContext
from top.pruning.top import ToP
from top.teacher import TeacherRunner

pytestmark = pytest.mark.usefixtures("one_thread")


def set_bins(method: ToP, layer: int, bin_mask) -> None:
    with torch.no_grad():
        method.module.layers[str(layer)].bins.log_alpha.copy_(torch.tensor([BIG if keep else -BIG for keep in bin_mask]))


def test_without_layer_gates_only_the_bin_gates_exist_and_every_layer_prunes():
    settings = {"bin_num": 4, "prune_layers": [1, 2], "log_alpha_range": None}
    method = ToP(tiny_config(layers=4), {**settings, "layer_gates": False})
    gates = method.module.layers["1"]
    assert gates.layer is None
    assert sum(p.numel() for p in method.parameter_groups("prune")[0]["params"]) == 2 * 4  # bins only
    assert sorted(method.module.state_dict()) == [
        "lambda_1", "lambda_2", "layers.1.bin_offset", "layers.1.bins.log_alpha", "layers.2.bin_offset", "layers.2.bins.log_alpha",
    ]  # fmt: skip
    # a bin survives with P(z > 0): no layer gate multiplies it
    with torch.no_grad():
        gates.bins.log_alpha.copy_(torch.tensor([2.0, 0.5, -0.3, -1.0]))
    assert float(gates.layer_probability()) == 1.0
    torch.testing.assert_close(gates.bin_keep_probability(), gates.bins.prob_nonzero())
    torch.manual_seed(0)
    z = gates.bins.sample()
    torch.manual_seed(0)
    torch.testing.assert_close(gates.sampled_keep(), z)  # the sampled bins themselves

    # the same bin gates with a layer gate that is off keep everything; without layer gates they prune
    model = tiny_model(layers=4, seed=2)
    batch = make_batch([33, 17, 9], seed=1)
    gated = ToP(model.config, settings)
    ungated = ToP(model.config, {**settings, "layer_gates": False})
    for layer, mask in ((1, [1, 1, 1, 0]), (2, [1, 0, 1, 0])):
        set_gates(gated, layer, mask, prunes=False)
        set_bins(ungated, layer, mask)
    counts = {}
    for name, method in (("gated", gated), ("ungated", ungated)):
        out, real = evaluate_counted(model, method, batch)  # the constraint counts what evaluation runs
        counts[name] = out.lengths_kept
        soft, _ = method.expected_flops(batch["attention_mask"])
        assert np.allclose(soft.detach().numpy(), real, rtol=1e-4)
    assert counts["gated"][:, 2].tolist() == [33, 17, 9]
    # candidates 32 -> 24 kept (+[CLS]) -> bins of 6, 12 kept; 16 -> 12 -> 6; 8 -> 6 -> bins 2, 1, 2, 1: 4 kept
    assert counts["ungated"][:, 1].tolist() == [25, 13, 7] and counts["ungated"][:, 2].tolist() == [13, 7, 5]

    exported = json.loads(json.dumps(ungated.export()))
    assert [entry["layer_probability"] for entry in exported["layers"]] == [1.0, 1.0]
    assert [entry["prunes"] for entry in exported["layers"]] == [True, True] and exported["settings"]["layer_gates"] is False
    inference = PrunableModel(model.hf, ToP.inference_selectors(exported, model.config)).eval()
    with torch.no_grad():
        assert torch.equal(inference(**batch, mode="gather").lengths_kept, counts["ungated"])

    with pytest.raises(ValueError, match="layer_gates must be true or false"):
        ToP(tiny_config(layers=4), {"layer_gates": "no"})


def test_without_layer_gates_the_constraint_trains_the_bin_gates():
    model = tiny_model(layers=4)
    method = ToP(model.config, {"bin_num": 4, "prune_layers": [1, 2], "layer_gates": False, "rank_distill_weight": 0.0, "logit_distill_weight": 0.0})
    model.set_selectors(method.selectors("prune"))
    model.train()
    batch = make_batch([15, 11, 9])
    student = model(**batch, mode="mask")
    with torch.no_grad():  # a binding constraint: the gradient reaches the gates through lambda
        method.module.lambda_1.fill_(-1.0)
    loss, logs = method.extra_loss("prune", StepContext(student, None, batch, torch.zeros(()), step=10, total_steps=10))
    loss.backward()
    grads = [method.module.layers[str(layer)].bins.log_alpha.grad for layer in (1, 2)]
    assert all(grad is not None and grad.abs().sum() > 0 for grad in grads)
    assert logs["expected_sparsity"] < logs["target_sparsity"]


def test_rank_distill_weight_zero_skips_the_ranking_and_the_teachers_final_scores(monkeypatch):
    config = tiny_config(layers=4)
    on = ToP(config, {"prune_layers": [2], "rank_distill_layers": [1]})
    off = ToP(config, {"prune_layers": [2], "rank_distill_layers": [1], "rank_distill_weight": 0.0})
    assert sorted(on.selectors("prune")) == [1, 2] and on.teacher_signals("prune") == ("logits", "final_token_scores")
    assert sorted(off.selectors("prune")) == [2]  # no scoring-only layer
    assert off.teacher_signals("prune") == ("logits",)
    runner = TeacherRunner(tiny_model(layers=4), off.teacher_signals("prune"))
    assert len(runner.model.selectors) == 0  # the teacher's last layer records no scores
    signals = runner(make_batch([9, 6]))
    assert signals.final_token_scores is None and signals.logits is not None

    # a training run: the teacher is asked for logits only, and the ranking loss is never computed
    asked = []

    class RecordingRunner(TeacherRunner):
        def __init__(self, teacher, signals):
            asked.append(tuple(signals))
            super().__init__(teacher, signals)

    def no_ranking(*args, **kwargs):
        raise AssertionError("rank_loss called with rank_distill_weight 0")

    monkeypatch.setattr(top.train, "TeacherRunner", RecordingRunner)
    monkeypatch.setattr(ToP, "rank_loss", no_ranking)
    from top.tasks.glue import collate
    from top.train import TrainSettings, run_stages

    model = tiny_model(layers=4)
    method = ToP(model.config, {"bin_num": 4, "prune_layers": [1, 2], "epochs": 1, "rank_distill_weight": 0.0})
    train = TrainSettings(batch_size=8, learning_rate=1e-3, warmup_ratio=0.0, log_every=1, seed=0)
    history = run_stages(model, method, toy_dataset(16), train, collate=functools.partial(collate, pad_token_id=0), teacher=copy.deepcopy(model))
    assert asked and all(signals == ("logits",) for signals in asked)
    assert len(history) == 2 and all("rank_loss" not in record and "distill_loss" in record for record in history)


# ------------------------------------------------------------------------------ bin_order: ranked


def test_at_least_is_the_poisson_binomial_survival_function():
    from itertools import product

    from top.pruning.top.gates import at_least

    p = torch.tensor([0.9, 0.2, 0.6, 0.35], dtype=torch.float64, requires_grad=True)
    exact = torch.zeros(4, dtype=torch.float64)
    for outcome in product((0, 1), repeat=4):  # every outcome of the four trials
        chance = torch.prod(torch.tensor([q if o else 1 - q for q, o in zip(p.tolist(), outcome)], dtype=torch.float64))
        exact[: sum(outcome)] += chance  # P(K > b) for every b below the count
    torch.testing.assert_close(at_least(p), exact)
    torch.testing.assert_close(at_least(p).sum(), p.sum())  # E[K] either way
    assert torch.autograd.gradcheck(at_least, (p,))


def test_ranked_bins_keep_the_best_ranked_tokens_whatever_the_gates_order():
    from top.pruning.top.gates import bin_keep_values

    settings = {"bin_num": 5, "prune_layers": [1], "log_alpha_range": None}
    learned = ToP(tiny_config(layers=4), settings)
    ranked = ToP(tiny_config(layers=4), {**settings, "bin_order": "ranked"})
    for method in (learned, ranked):
        set_gates(method, 1, [0, 1, 0, 1, 1])  # three open gates, not the first three bins
    assert learned.module.layers["1"].deterministic_keep().tolist() == [0, 1, 0, 1, 1]
    assert ranked.module.layers["1"].deterministic_keep().tolist() == [1, 1, 1, 0, 0]

    scores = torch.rand(2, 11, generator=torch.Generator().manual_seed(3))
    alive = torch.ones(2, 11, dtype=torch.bool)
    keep = bin_keep_values(scores, alive, ranked.module.layers["1"].deterministic_keep(), None) > 0
    for row in range(2):  # [CLS] and the 6 best of the 10 candidates (bins of 2)
        best = scores[row, 1:].argsort(descending=True)[:6] + 1
        assert sorted(keep[row].nonzero().flatten().tolist()) == sorted([0, *best.tolist()])

    with pytest.raises(ValueError, match="bin_order must be one of"):
        ToP(tiny_config(layers=4), {"bin_order": "sorted"})


def test_ranked_bins_sample_in_rank_order_and_the_constraint_counts_them():
    method = ToP(tiny_config(layers=4), {"bin_num": 6, "prune_layers": [1], "log_alpha_range": None, "bin_order": "ranked"})
    gates = method.module.layers["1"]
    with torch.no_grad():
        gates.bins.log_alpha.copy_(torch.tensor([-1.0, 2.0, 0.3, -0.4, 1.2, -2.0]))
        gates.layer.log_alpha.fill_(1.5)
    torch.manual_seed(0)
    samples = torch.stack([gates.sampled_keep() for _ in range(20_000)])
    assert bool((samples[:, :-1] >= samples[:, 1:]).all())  # never a better bin below a worse one
    # the constraint's survival probability of each bin is what the samples show
    torch.testing.assert_close((samples > 0).double().mean(0), gates.bin_keep_probability().double(), atol=0.015, rtol=0)
    # the expected count of open gates is the same in either order, so is the layer's keep ratio
    torch.testing.assert_close(gates.keep_ratio(), gates.bin_keep_probability().mean())
    learned = ToP(tiny_config(layers=4), {"bin_num": 6, "prune_layers": [1], "log_alpha_range": None})
    learned.module.load_state_dict(method.module.state_dict())
    torch.testing.assert_close(gates.keep_ratio(), learned.module.layers["1"].keep_ratio())


def test_ranked_bins_evaluate_as_the_constraint_counts_and_export_as_they_train():
    model = tiny_model(layers=4, seed=2)
    batch = make_batch([33, 17, 9], seed=1)
    method = ToP(model.config, {"bin_num": 4, "prune_layers": [1, 2], "bin_order": "ranked"})
    set_gates(method, 1, [0, 1, 1, 1])
    set_gates(method, 2, [1, 0, 0, 1])
    out, _ = evaluate_counted(model, method, batch)
    exported = json.loads(json.dumps(method.export()))
    assert [entry["bin_mask"] for entry in exported["layers"]] == [[1, 1, 1, 0], [1, 1, 0, 0]]
    inference = PrunableModel(model.hf, ToP.inference_selectors(exported, model.config)).eval()
    with torch.no_grad():
        assert torch.equal(inference(**batch, mode="gather").lengths_kept, out.lengths_kept)


def test_a_ranked_run_trains_its_gates_and_exports_prefix_masks():
    from top.tasks.glue import collate
    from top.train import TrainSettings, run_stages

    model = tiny_model(layers=4)
    method = ToP(model.config, {"bin_num": 5, "prune_layers": [1, 2], "epochs": 2, "bin_order": "ranked", "log_alpha_range": None})
    for layer in (1, 2):  # three of five gates open, not the first three; the layers prune
        with torch.no_grad():
            method.module.layers[str(layer)].bins.log_alpha.copy_(torch.tensor([-3.0, 3.0, 3.0, -3.0, 3.0]))
            method.module.layers[str(layer)].layer.log_alpha.fill_(3.0)
    before = [gates.bins.log_alpha.detach().clone() for gates in method.module.layers.values()]
    train = TrainSettings(batch_size=8, learning_rate=1e-3, warmup_ratio=0.0, log_every=1, seed=0)
    history = run_stages(model, method, toy_dataset(32), train, collate=functools.partial(collate, pad_token_id=0), teacher=copy.deepcopy(model))
    assert history and all(np.isfinite(record["loss"]) for record in history)
    after = [gates.bins.log_alpha.detach() for gates in method.module.layers.values()]
    assert all(not torch.equal(a, b) for a, b in zip(before, after))  # the sorted samples pass gradients back
    assert [entry["bin_mask"] for entry in method.export()["layers"]] == [[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]]
