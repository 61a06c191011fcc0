"""Tests for ToP (top.pruning.top), its hard-concrete gates (l0) and ranking loss (ranking).

All on tiny random BERTs (hidden 32, 4 heads, eager attention) on the CPU.
"""

from __future__ import annotations

import copy
import functools
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForQuestionAnswering, BertForSequenceClassification

from top.encoder import PrunableModel
from top.measure.flops import example_flops
from top.pruning.base import LayerContext, StepContext, attention_token_scores
from top.pruning.l0 import HardConcreteGate, log_alpha_for_droprate
from top.pruning.ranking import WEIGHTINGS, ranking_distillation_loss
from top.pruning.registry import build_method
from top.pruning.top import ToP
from top.pruning.top.gates import bin_keep_values, bin_occupancy, rank_bins
from top.pruning.top.method import logit_distillation_loss
from top.pruning.top.selectors import ToPInferenceSelector
from top.teacher import TeacherRunner

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 60
BIG = 50.0  # |log_alpha| that makes a gate's P(z > 0) 1 - 1e-6 or 1e-6 (the clamp)


def tiny_config(layers: int = 4, num_labels: int = 2) -> BertConfig:
    return BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="eager",
    )


def tiny_model(layers: int = 4, seed: int = 0, num_labels: int = 2) -> PrunableModel:
    torch.manual_seed(seed)
    return PrunableModel(BertForSequenceClassification(tiny_config(layers, num_labels)).eval())


def make_batch(lengths, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(5, VOCAB, (len(lengths), width), generator=g)
    ids[:, 0] = 1  # [CLS]
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    ids = ids * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def set_gates(method: ToP, layer: int, bin_mask, prunes: bool = True) -> None:
    gates = method.module.layers[str(layer)]
    with torch.no_grad():
        gates.bins.log_alpha.copy_(torch.tensor([BIG if keep else -BIG for keep in bin_mask]))
        gates.layer.log_alpha.fill_(BIG if prunes else -BIG)


def evaluate_counted(model: PrunableModel, method: ToP, batch, head: str = "classification"):
    """Run ``batch`` in gather mode with ``method``'s selectors on eval-mode (deterministic)
    gates; assert that the constraint's deterministic FLOPs are the real count of every row, and
    return ``(out, real)``: the model's output and those ``[B]`` FLOPs."""
    model.set_selectors(method.selectors("prune"))
    model.eval()
    with torch.no_grad():
        out = model(**batch, mode="gather")
    real = example_flops(model.config, head, out.lengths_in.numpy(), out.lengths_kept.numpy())
    hard, _ = method.expected_flops(batch["attention_mask"], head, deterministic=True, protect_mask=batch.get("protect_mask"))
    assert np.array_equal(hard.numpy(), real)  # exact
    return out, real


# ------------------------------------------------------------------------------ hard concrete


def test_hard_concrete_sampling_probabilities_and_gradients():
    torch.manual_seed(0)
    gate = HardConcreteGate((3, 1000), droprate_init=0.5, log_alpha_range=None)
    with torch.no_grad():
        gate.log_alpha[0].fill_(-2.0)
        gate.log_alpha[1].fill_(0.0)
        gate.log_alpha[2].fill_(2.0)
    z = gate.sample()
    assert z.shape == (3, 1000) and z.min() >= 0 and z.max() <= 1
    assert (z == 0).any() and (z == 1).any()  # the stretch puts mass on exactly 0 and 1
    # the fraction of non-zero samples matches P(z > 0)
    empirical = (z > 0).float().mean(dim=1)
    assert torch.allclose(empirical, gate.prob_nonzero()[:, 0], atol=0.05)
    assert gate.prob_nonzero()[0, 0] < gate.prob_nonzero()[1, 0] < gate.prob_nonzero()[2, 0]
    assert float(gate.expected_l0().detach()) == pytest.approx(float(gate.prob_nonzero().detach().sum()))
    # reparameterised: gradients reach log_alpha through samples and through P(z > 0)
    (gate.sample().sum() + gate.expected_l0()).backward()
    assert gate.log_alpha.grad is not None and gate.log_alpha.grad.abs().sum() > 0


def test_hard_concrete_initialisation_clamp_and_modes():
    gate = HardConcreteGate(50, droprate_init=0.01)
    assert float(gate.log_alpha.detach().mean()) == pytest.approx(log_alpha_for_droprate(0.01), abs=0.01)
    with torch.no_grad():
        gate.log_alpha.fill_(10.0)
    gate.constrain_()
    assert float(gate.log_alpha.detach().max()) == pytest.approx(math.log(100.0))
    gate.train()
    assert gate().shape == (50,)
    gate.eval()
    assert torch.equal(gate(), torch.ones(50))


def test_hard_concrete_deterministic_keeps_the_expected_number_of_largest_gates():
    gate = HardConcreteGate((2, 5), log_alpha_range=None)
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor([[BIG, -BIG, BIG, -BIG, BIG], [0.3, -0.2, 5.0, -5.0, 0.1]]))
    mask = gate.deterministic()
    assert mask[0].tolist() == [1, 0, 1, 0, 1]
    keep = 5 - round(5 - float(gate.prob_nonzero()[1].detach().sum()))
    assert int(mask[1].sum()) == keep
    order = gate.log_alpha[1].argsort(descending=True)
    assert mask[1, order[:keep]].eq(1).all() and mask[1, order[keep:]].eq(0).all()


# ------------------------------------------------------------------------------ ranking loss


@pytest.mark.parametrize("weighting", ["arp2", "ndcg2"])
def test_ranking_loss_prefers_the_teacher_order(weighting):
    torch.manual_seed(0)
    teacher = torch.rand(4, 12)
    mask = torch.ones(4, 12, dtype=torch.bool)
    mask[1, 7:] = False
    perfect = ranking_distillation_loss(teacher * 5, teacher, mask, topk=None, weighting=weighting)
    reversed_ = ranking_distillation_loss(-teacher * 5, teacher, mask, topk=None, weighting=weighting)
    shuffled = ranking_distillation_loss(torch.rand(4, 12) * 5, teacher, mask, topk=None, weighting=weighting)
    assert float(perfect) < float(shuffled) < float(reversed_)


@pytest.mark.parametrize("weighting", ["arp2", "ndcg2"])
def test_ranking_loss_ignores_masked_tokens_and_has_gradients(weighting):
    torch.manual_seed(1)
    teacher = torch.rand(3, 10)
    mask = torch.rand(3, 10) > 0.3
    mask[:, :3] = True
    student = torch.randn(3, 10, requires_grad=True)
    loss = ranking_distillation_loss(student, teacher, mask, topk=6, weighting=weighting)
    loss.backward()
    assert torch.isfinite(loss)
    assert student.grad[~mask].abs().sum() == 0  # masked tokens get no gradient
    assert student.grad[mask].abs().sum() > 0

    # changing masked tokens (even to -inf, as attention_token_scores marks dead tokens) or the
    # teacher's scores there changes nothing
    other = student.detach().clone()
    other[~mask] = float("-inf")
    other_teacher = teacher.clone()
    other_teacher[~mask] = 100.0
    again = ranking_distillation_loss(other, other_teacher, mask, topk=6, weighting=weighting)
    assert float(again) == pytest.approx(float(loss.detach()), rel=1e-6)


def test_ranking_loss_only_uses_the_teachers_top_k():
    teacher = torch.arange(10, 0, -1).float()[None]  # token 0 best
    mask = torch.ones(1, 10, dtype=torch.bool)
    student = torch.randn(1, 10)
    base = ranking_distillation_loss(student, teacher, mask, topk=4)
    changed = student.clone()
    changed[0, 4:] = torch.randn(6) * 10  # outside the teacher's top-4
    assert float(ranking_distillation_loss(changed, teacher, mask, topk=4)) == pytest.approx(float(base))
    # no row with two valid items: zero, still differentiable
    lonely = torch.zeros(1, 10, dtype=torch.bool)
    lonely[0, 3] = True
    s = torch.randn(1, 10, requires_grad=True)
    zero = ranking_distillation_loss(s, teacher, lonely)
    zero.backward()
    assert float(zero.detach()) == 0.0


def hand_reference_loss(student, teacher, lengths, topk, longest=None):
    """The reference's ARP-2 ranking loss by explicit loops (ToP ``trainer.py``, the
    ``LambdaARPLoss2`` branch): ``K = min(topk, longest row)``; each row's teacher top-``K`` tokens
    with relevance ``k, ..., 1``, then ``K - k`` padding items of relevance 0 and score 0; the sum
    over pairs with ``y_i > y_j`` of ``(y_i - y_j) log2(1 + exp(-(s_i - s_j)))``, divided by
    ``K^2``; the mean over rows. Also returns d loss / d student, by hand. ``longest``: the
    longest row if not the longest of ``lengths``.

    ``student[b][t]``, ``teacher[b][t]``: plain floats of token ``t`` (0-based) of row ``b``, whose
    first ``lengths[b]`` tokens are real."""
    rows = len(lengths)
    big_k = min(topk, longest or max(lengths))
    grads = [[0.0] * len(row) for row in student]
    losses = []
    for b, n in enumerate(lengths):
        best = sorted(range(n), key=lambda t: -teacher[b][t])[:big_k]
        k = len(best)
        items = [(t, k - r, student[b][t]) for r, t in enumerate(best)] + [(None, 0, 0.0)] * (big_k - k)
        total = 0.0
        for ti, yi, si in items:
            for tj, yj, sj in items:
                if yi <= yj:
                    continue
                w, d = yi - yj, si - sj
                total += w * math.log2(1.0 + math.exp(-d))
                g = w / (1.0 + math.exp(d)) / math.log(2.0) / big_k**2 / rows  # -d term / d s_i
                if ti is not None:
                    grads[b][ti] -= g
                if tj is not None:
                    grads[b][tj] += g
        losses.append(total / big_k**2)
    return sum(losses) / rows, grads


def ranking_inputs(lengths, width, seed):
    """Scores of rows with ``lengths`` real tokens in slots 1.. (slot 0 is [CLS], not ranked)."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.rand(len(lengths), width, generator=g, dtype=torch.float64)
    student = torch.rand(len(lengths), width, generator=g, dtype=torch.float64) * 2 - 1
    mask = torch.zeros(len(lengths), width, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, 1 : 1 + n] = True
    student = student.masked_fill(~mask, float("-inf"))  # as attention_token_scores marks dead slots
    tokens = [[float(v) for v in row[1 : 1 + n]] for row, n in zip(student, lengths)]
    ranks = [[float(v) for v in row[1 : 1 + n]] for row, n in zip(teacher, lengths)]
    return student, teacher, mask, tokens, ranks


@pytest.mark.parametrize("topk", [20, 10])
def test_ranking_loss_reference_padding_golden_8_12_19(topk):
    """Rows of 8, 12 and 19 tokens: with top-20, K = 19 and the 8- and 12-token rows get 11 and 7
    padding items; with top-10 the 8-token row gets 2 and the others are cut to 10."""
    lengths = [8, 12, 19]
    student, teacher, mask, tokens, ranks = ranking_inputs(lengths, width=22, seed=7)
    expected, grads = hand_reference_loss(tokens, ranks, lengths, topk)
    s = student.clone().requires_grad_()
    loss = ranking_distillation_loss(s, teacher, mask, topk=topk)  # reference padding is the default
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-12)
    loss.backward()
    for b, n in enumerate(lengths):
        assert s.grad[b, 1 : 1 + n].tolist() == pytest.approx(grads[b], rel=1e-9, abs=1e-15)
        assert s.grad[b, 0] == 0 and (s.grad[b, 1 + n :] == 0).all()


def test_ranking_loss_reference_padding_closed_form():
    """Two rows, top-20: K = 2. Row 0 ranks two tokens (0.3 above 0.1); row 1 has one token
    (0.5), which meets one padding item of score 0."""
    student = torch.tensor([[0.3, 0.1], [0.5, float("-inf")]], dtype=torch.float64)
    teacher = torch.tensor([[2.0, 1.0], [5.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True], [True, False]])
    row0 = math.log2(1 + math.exp(-(0.3 - 0.1))) / 4
    row1 = math.log2(1 + math.exp(-0.5)) / 4
    assert float(ranking_distillation_loss(student, teacher, mask)) == pytest.approx((row0 + row1) / 2, rel=1e-12)
    # own tokens: row 1 has no pair and leaves the mean; row 0 is divided by its own k^2 = 4
    assert float(ranking_distillation_loss(student, teacher, mask, padding="own_tokens")) == pytest.approx(row0, rel=1e-12)


def test_ranking_loss_padding_modes_differ_on_short_rows_and_agree_on_long_ones():
    # rows shorter than K: the reference pads them and divides by K^2, own_tokens does not
    student, teacher, mask, _, _ = ranking_inputs([8, 12, 19], width=22, seed=3)
    short = [student.clone().requires_grad_() for _ in range(2)]
    ref = ranking_distillation_loss(short[0], teacher, mask, topk=20)
    own = ranking_distillation_loss(short[1], teacher, mask, topk=20, padding="own_tokens")
    assert abs(float(ref.detach()) - float(own.detach())) > 1e-3
    ref.backward()
    own.backward()
    for row in (0, 1):  # the padded rows' gradients point elsewhere
        cosine = F.cosine_similarity(short[0].grad[row, mask[row]], short[1].grad[row, mask[row]], dim=0)
        assert float(cosine) < 0.99
    # every row has at least K = min(topk, longest) tokens: identical values and gradients
    for lengths, topk in (([19, 20, 25], 10), ([15, 15, 15], 20), ([21, 30, 24], 20)):
        student, teacher, mask, _, _ = ranking_inputs(lengths, width=32, seed=sum(lengths))
        for weighting in WEIGHTINGS:
            pair = [student.clone().requires_grad_() for _ in range(2)]
            ref = ranking_distillation_loss(pair[0], teacher, mask, topk=topk, weighting=weighting)
            own = ranking_distillation_loss(pair[1], teacher, mask, topk=topk, weighting=weighting, padding="own_tokens")
            assert float(ref.detach()) == pytest.approx(float(own.detach()), rel=1e-12)
            ref.backward()
            own.backward()
            assert torch.allclose(pair[0].grad, pair[1].grad, rtol=1e-10, atol=1e-15)
    with pytest.raises(ValueError, match="padding must be one of"):
        ranking_distillation_loss(student, teacher, mask, padding="zeros")
    with pytest.raises(ValueError, match="list_length"):
        ranking_distillation_loss(student, teacher, mask, list_length=3)


def test_ranking_loss_list_length_sets_k_beyond_the_longest_ranked_row():
    """ToP passes the batch's longest real row: at a layer where tokens were dropped, K still
    comes from the input lengths and the dropped tokens count as padding items."""
    lengths = [6, 9]
    student, teacher, mask, tokens, ranks = ranking_inputs(lengths, width=12, seed=11)
    own_k, _ = hand_reference_loss(tokens, ranks, lengths, topk=20)  # K = 9
    wider, grads = hand_reference_loss(tokens, ranks, lengths, topk=20, longest=14)  # K = 14
    assert abs(wider - own_k) > 1e-3
    s = student.clone().requires_grad_()
    loss = ranking_distillation_loss(s, teacher, mask, topk=20, list_length=14)
    assert float(loss.detach()) == pytest.approx(wider, rel=1e-12)
    loss.backward()
    for b, n in enumerate(lengths):
        assert s.grad[b, 1 : 1 + n].tolist() == pytest.approx(grads[b], rel=1e-9, abs=1e-15)
    assert float(ranking_distillation_loss(student, teacher, mask, topk=20)) == pytest.approx(own_k, rel=1e-12)
    # K = 14 > the tensors' 12 slots: padding items beyond the width
    assert float(ranking_distillation_loss(student[:, :10], teacher[:, :10], mask[:, :10], topk=20, list_length=14)) == pytest.approx(
        wider, rel=1e-12
    )


# ------------------------------------------------------------------------------ settings, bins


def test_settings_defaults_follow_the_model_depth_and_reject_unknown_keys():
    method = build_method("top", tiny_config(layers=12), {})
    assert isinstance(method, ToP)
    assert method.resolved.prune_layers == list(range(1, 11))  # reference 2..11, shifted by one
    assert method.resolved.rank_distill_layers == [1, 2, 3]  # reference range(1, 12 // 3)
    assert method.resolved.task_loss_weight == 0.0 and method.resolved.logit_distill_weight == 1.0
    assert method.resolved.rank_padding == "reference" and method.resolved.freeze_embeddings is True
    assert [s.name for s in method.stages()] == ["prune"]
    six = ToP(tiny_config(layers=6), {"finetune_epochs": 2, "finetune_learning_rate": 3e-5})
    assert six.resolved.prune_layers == [1, 2, 3, 4] and six.resolved.rank_distill_layers == [1]
    assert [(s.name, s.epochs, s.learning_rate) for s in six.stages()] == [("prune", 40.0, None), ("finetune", 2.0, 3e-5)]
    regression = ToP(tiny_config(num_labels=1), {})
    assert regression.resolved.logit_distill_weight == 0.0 and regression.resolved.task_loss_weight == 1.0
    with pytest.raises(ValueError, match="top: unknown settings"):
        ToP(tiny_config(), {"sparsity": 0.5})
    with pytest.raises(ValueError, match="prune_layers"):
        ToP(tiny_config(layers=4), {"prune_layers": [1, 4]})
    with pytest.raises(ValueError, match="target_sparsity"):
        ToP(tiny_config(), {"target_sparsity": 1.0})
    with pytest.raises(ValueError, match="rank_padding must be one of"):
        ToP(tiny_config(), {"rank_padding": "zeros"})
    with pytest.raises(ValueError, match="freeze_embeddings must be true or false"):
        ToP(tiny_config(), {"freeze_embeddings": "yes"})


def test_parameter_groups_and_teacher_signals():
    method = ToP(tiny_config(layers=6), {"reg_learning_rate": 0.05, "lambda_learning_rate": 0.1, "finetune_epochs": 1})
    gates, lambdas = method.parameter_groups("prune")
    assert gates["lr"] == 0.05 and not gates.get("maximize", False)
    assert lambdas["lr"] == 0.1 and lambdas["maximize"] is True
    assert {id(p) for p in lambdas["params"]} == {id(method.module.lambda_1), id(method.module.lambda_2)}
    n_gates = sum(p.numel() for p in gates["params"])
    assert n_gates == len(method.resolved.prune_layers) * (method.resolved.bin_num + 1)
    assert method.teacher_signals("prune") == ("logits", "final_token_scores")
    assert method.teacher_signals("finetune") == ("logits",)
    assert method.parameter_groups("finetune") == []
    assert gates["clip"] is False and lambdas["clip"] is False  # the reference clips neither
    assert method.frozen_model_parameters("prune") == method.frozen_model_parameters("finetune") == ("embeddings",)
    assert ToP(tiny_config(), {"freeze_embeddings": False}).frozen_model_parameters("prune") == ()
    # selectors share the method's gates
    selectors = method.selectors("prune")
    assert selectors[2].gates is method.module.layers["2"]


def test_rank_bins_are_exact_and_skip_cls_and_dead_slots():
    scores = torch.tensor([[0.0, 0.1, 0.9, 0.5, 0.7, 0.2, 0.3, 0.8, 0.4]])
    alive = torch.ones(1, 9, dtype=torch.bool)
    alive[0, 8] = False
    bins = rank_bins(scores, alive, 4)
    # 7 candidates (slots 1..7), ranks by score: 2, 7, 4, 3, 6, 5, 1 -> bins floor(r * 4 / 7)
    expected = {2: 0, 7: 0, 4: 1, 3: 1, 6: 2, 5: 2, 1: 3}
    assert bins[0, 0] == 4 and bins[0, 8] == 4
    assert {slot: int(bins[0, slot]) for slot in range(1, 8)} == expected
    keep = bin_keep_values(scores, alive, torch.tensor([1.0, 0.0, 0.5, 0.0]))
    assert keep[0].tolist() == [1.0, 0.0, 1.0, 0.0, 0.0, 0.5, 0.5, 1.0, 0.0]


# ------------------------------------------------------------------------------ constraint


def test_expected_flops_equal_the_real_count_for_deterministic_gates():
    model = tiny_model(layers=4)
    method = ToP(model.config, {"bin_num": 4, "prune_layers": [1, 2], "log_alpha_range": None})
    set_gates(method, 1, [1, 1, 1, 0])  # keep 3/4
    set_gates(method, 2, [1, 0, 1, 0])  # keep 2/4 (not a prefix: bins are independent)
    # candidates (length - 1) are multiples of bin_num at both pruning layers: 32 -> 24 -> 12, 16 -> 12 -> 6
    batch = make_batch([33, 17, 33], seed=3)
    out, real = evaluate_counted(model, method, batch)
    assert out.lengths_kept[:, 1].tolist() == [25, 13, 25] and out.lengths_kept[:, 2].tolist() == [13, 7, 13]
    dense = method.expected_flops(batch["attention_mask"], deterministic=True)[1]
    full = np.repeat(out.lengths_in[:, :1].numpy(), 4, axis=1)
    assert np.array_equal(dense.numpy(), example_flops(model.config, "classification", full, full))

    # the training constraint, from P(z > 0) = 1 - 1e-6 or 1e-6, agrees up to that clamp
    soft, _ = method.expected_flops(batch["attention_mask"])
    assert np.allclose(soft.detach().numpy(), real, rtol=1e-4)
    assert soft.requires_grad
    sparsity = method.sparsity(soft, dense)
    assert float(sparsity.detach()) == pytest.approx(1 - real.sum() / dense.sum().item(), rel=1e-4)


@pytest.mark.parametrize("bin_num", [3, 4, 7, 10])
def test_bin_occupancy_counts_the_ranks_in_each_bin(bin_num):
    for a in range(0, 24):
        alive = torch.zeros(1, a + 1, dtype=torch.bool)
        alive[:, : a + 1] = True
        bins = rank_bins(torch.randn(1, a + 1), alive, bin_num)[0, 1:]
        counted = torch.bincount(bins, minlength=bin_num)[:bin_num].double()
        occupancy = bin_occupancy(torch.tensor([float(a)], dtype=torch.float64), bin_num)[0]
        assert torch.equal(occupancy, counted), a
    # between integers: linear, with a gradient
    a = torch.tensor([5.25], dtype=torch.float64, requires_grad=True)
    mixed = bin_occupancy(a, 4)
    five, six = (bin_occupancy(torch.tensor([v], dtype=torch.float64), 4) for v in (5.0, 6.0))
    assert torch.allclose(mixed, 0.75 * five + 0.25 * six)
    mixed.sum().backward()
    assert a.grad.item() == pytest.approx(1.0)


def test_expected_flops_equal_the_real_count_at_any_length():
    model = tiny_model(layers=4)
    method = ToP(model.config, {"bin_num": 4, "prune_layers": [1, 2], "log_alpha_range": None})
    set_gates(method, 1, [0, 1, 1, 0])
    set_gates(method, 2, [1, 0, 1, 1])
    lengths = [2, 3, 5, 7, 10, 19, 26, 31]  # fewer candidates than bins, and not multiples
    evaluate_counted(model, method, make_batch(lengths, seed=5))


def test_expected_count_is_the_mean_of_the_sampled_counts():
    """At the first pruning layer the candidate count is fixed, so the expected kept count is
    exactly the mean over gate samples of the real count (Monte Carlo)."""
    model = tiny_model(layers=3)
    method = ToP(model.config, {"bin_num": 5, "prune_layers": [1], "log_alpha_range": None})
    gates = method.module.layers["1"]
    with torch.no_grad():
        gates.bins.log_alpha.copy_(torch.tensor([2.0, 0.5, -0.3, -1.0, 1.0]))
        gates.layer.log_alpha.fill_(0.7)
    lengths = [4, 9, 13]
    batch = make_batch(lengths, seed=2)
    model.set_selectors(method.selectors("prune"))
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        counts = torch.stack([model(**batch, mode="mask").lengths_kept[:, 1] for _ in range(4000)]).double()
    n = torch.tensor(lengths, dtype=torch.float64)
    q = gates.bin_keep_probability().double().detach()
    predicted = 1 + (bin_occupancy(n - 1, 5) * q).sum(-1)
    assert torch.allclose(counts.mean(0), predicted, atol=0.08), (counts.mean(0), predicted)


def test_prepare_rejects_an_unreachable_target_and_keeps_the_chosen_lengths():
    model = tiny_model(layers=4)
    short, long = torch.full((50,), 6), torch.full((40,), 30)
    reachable = ToP(model.config, {"prune_layers": [1, 2], "target_sparsity": 0.4})
    most = reachable.max_sparsity(short.double())
    assert 0.45 < most < 0.75
    with pytest.raises(ValueError, match=r"target_sparsity 0.75 .* out of reach: with prune_layers \[1, 2\]"):
        ToP(model.config, {"prune_layers": [1, 2], "target_sparsity": 0.75}).prepare({"train": short}, "classification")
    reachable.prepare({"train": short, "validation": long}, "classification")
    assert reachable.constraint_lengths is None  # "batch": each batch's own lengths
    on_dev = ToP(model.config, {"prune_layers": [1, 2], "target_sparsity": 0.4, "flops_lengths": "validation"})
    on_dev.prepare({"train": short, "validation": long}, "classification")
    assert torch.equal(on_dev.constraint_lengths, long.double())
    mask = torch.ones(2, 6, dtype=torch.long)
    step = StepContext(
        student=model(input_ids=torch.ones(2, 6, dtype=torch.long), attention_mask=mask),
        teacher=None,
        batch={"attention_mask": mask},
        task_loss=torch.zeros(()),
        step=0,
        total_steps=10,
    )
    on_dev.resolved.logit_distill_weight = 0.0
    on_dev.resolved.rank_distill_weight = 0.0
    _, logs = on_dev.extra_loss("prune", step)
    assert logs["dense_flops"] == pytest.approx(float(on_dev.expected_flops_at_lengths(long)[1].mean()))
    with pytest.raises(ValueError, match="flops_lengths must be one of"):
        ToP(model.config, {"flops_lengths": "dev"})


def test_lagrangian_gradient_ascent_grows_the_multipliers_below_target():
    model = tiny_model(layers=4)
    method = ToP(model.config, {"bin_num": 4, "prune_layers": [1, 2], "target_sparsity": 0.6, "lagrangian_warmup_epochs": 0})
    optimizer = torch.optim.AdamW(method.parameter_groups("prune"))
    mask = make_batch([20, 12])["attention_mask"]
    expected, dense = method.expected_flops(mask)
    sparsity = method.sparsity(expected, dense)
    target = method.scheduled_target(method.warmup_progress(0, 100))
    assert target == pytest.approx(0.6)
    assert float(sparsity.detach()) < target  # the model starts (almost) dense: FLOPs exceed the target
    lagrangian = method.lagrangian(sparsity, target)
    assert float(lagrangian.detach()) == 0.0
    lagrangian.backward()
    optimizer.step()
    l1, l2 = method.module.lambda_1.item(), method.module.lambda_2.item()
    assert l1 < 0 and l2 > 0  # ascent on lambda_1 (s - t) + lambda_2 (s - t)^2 with s < t
    optimizer.zero_grad()
    penalty = method.lagrangian(method.sparsity(*method.expected_flops(mask)), target)
    assert float(penalty.detach()) > 0  # the multipliers now charge for the missing sparsity
    penalty.backward()
    # ... and the gradient on the gates pushes towards dropping (lower log_alpha)
    bins_grad = method.module.layers["1"].bins.log_alpha.grad
    layer_grad = method.module.layers["1"].layer.log_alpha.grad
    assert (bins_grad > 0).all() and (layer_grad < 0).all()


def test_warmup_schedule_ramps_the_target():
    method = ToP(tiny_config(), {"target_sparsity": 0.4, "epochs": 10, "lagrangian_warmup_epochs": 5, "start_sparsity": 0.1})
    assert method.scheduled_target(method.warmup_progress(0, 200)) == pytest.approx(0.1)
    assert method.scheduled_target(method.warmup_progress(50, 200)) == pytest.approx(0.25)
    assert method.scheduled_target(method.warmup_progress(100, 200)) == pytest.approx(0.4)
    assert method.scheduled_target(method.warmup_progress(180, 200)) == pytest.approx(0.4)


# ------------------------------------------------------------------------------ decisions, export


def test_mask_gather_and_exported_selectors_agree():
    model = tiny_model(layers=4, seed=1)
    method = ToP(model.config, {"bin_num": 5, "prune_layers": [0, 1, 2]})
    set_gates(method, 0, [1, 1, 1, 1, 0])
    set_gates(method, 1, [1, 0, 1, 1, 0])
    set_gates(method, 2, [0, 0, 0, 0, 0], prunes=False)  # layer gate off: keeps everything
    model.set_selectors(method.selectors("prune"))
    model.eval()
    batch = make_batch([23, 9, 16, 30], seed=2)
    with torch.no_grad():
        masked = model(**batch, mode="mask")
        gathered = model(**batch, mode="gather")
    assert torch.equal(masked.lengths_kept, gathered.lengths_kept)
    assert (gathered.lengths_kept[:, 1] < gathered.lengths_in[:, 0]).all()  # it did prune
    assert torch.equal(gathered.lengths_kept[:, 2], gathered.lengths_kept[:, 1])
    assert torch.allclose(masked.logits, gathered.logits, atol=1e-5)

    exported = json.loads(json.dumps(method.export()))  # plain JSON
    assert exported["bin_num"] == 5
    assert [entry["prunes"] for entry in exported["layers"]] == [True, True, False]
    assert exported["layers"][1]["bin_mask"] == [1, 0, 1, 1, 0]
    rebuilt = ToP.inference_selectors(exported, model.config)
    assert sorted(rebuilt) == [0, 1] and all(isinstance(s, ToPInferenceSelector) for s in rebuilt.values())
    inference = PrunableModel(model.hf, rebuilt).eval()
    with torch.no_grad():
        again = inference(**batch, mode="gather")
    assert torch.equal(again.lengths_kept, gathered.lengths_kept)
    for a, b in zip(again.kept, gathered.kept):
        assert torch.equal(a, b)
    assert torch.allclose(again.logits, gathered.logits, atol=1e-6)

    with pytest.raises(ValueError, match="layers"):
        ToP.inference_selectors(exported, tiny_config(layers=6))


def test_training_selector_samples_and_exposes_scores():
    torch.manual_seed(0)
    model = tiny_model(layers=4)
    method = ToP(model.config, {"bin_num": 4, "prune_layers": [1, 2], "rank_distill_layers": [1, 3]})
    set_gates(method, 1, [1, 1, 1, 1])
    with torch.no_grad():  # bins near 0.5 keep probability; the layer gate on
        method.module.layers["1"].bins.log_alpha.fill_(0.0)
    selectors = method.selectors("prune")
    assert sorted(selectors) == [1, 2, 3] and selectors[3].gates is None
    model.set_selectors(selectors)
    model.train()
    out = model(**make_batch([17, 12]), mode="mask")
    decision = out.decisions[1]
    assert decision.soft is not None and decision.aux["scores"].requires_grad
    assert set(decision.soft[decision.hard].unique().tolist()) <= set(decision.aux["bin_values"].tolist()) | {1.0}
    assert (decision.soft[~decision.hard] == 0).all()
    assert torch.equal(out.decisions[3].hard, out.decisions[3].aux["alive"])  # scorer only


# ------------------------------------------------------------------------------ training


def toy_dataset(n: int, seed: int = 0) -> list[dict]:
    """Label: does token 7 occur? Lengths 10..24."""
    g = torch.Generator().manual_seed(seed)
    data = []
    for i in range(n):
        length = int(torch.randint(10, 25, (1,), generator=g))
        ids = torch.randint(8, VOCAB, (length,), generator=g)
        ids[0] = 1
        label = i % 2
        if label:
            ids[int(torch.randint(1, length, (1,), generator=g))] = 7
        data.append({"input_ids": ids.tolist(), "attention_mask": [1] * length, "token_type_ids": [0] * length, "labels": label})
    return data


def test_short_training_moves_sparsity_to_target_and_export_reproduces_eval():
    from top.tasks.glue import collate
    from top.train import TrainSettings, run_stages

    model = tiny_model(layers=4, seed=0)
    teacher = copy.deepcopy(model)
    settings = {
        "target_sparsity": 0.4,
        "bin_num": 4,
        "prune_layers": [1, 2],
        "rank_distill_layers": [1],
        "epochs": 4,
        "lagrangian_warmup_epochs": 1,
        "reg_learning_rate": 0.5,
        "lambda_learning_rate": 0.5,
        "rank_distill_weight": 0.01,
        "finetune_epochs": 1,
    }
    method = ToP(model.config, settings)
    data = toy_dataset(48)
    train = TrainSettings(batch_size=8, learning_rate=1e-3, warmup_ratio=0.0, log_every=1, seed=0)
    mask = torch.tensor([[1] * 20 + [0] * 4, [1] * 24])
    before = method.sparsity(*method.expected_flops(mask)).item()
    history = run_stages(model, method, data, train, collate=functools.partial(collate, pad_token_id=0), teacher=teacher)

    prune = [r for r in history if r["stage"] == "prune"]
    assert len(prune) == 24 and all(math.isfinite(r["loss"]) for r in history)
    for key in ("expected_sparsity", "target_sparsity", "lambda_1", "lambda_2", "lagrangian_loss", "rank_loss", "distill_loss"):
        assert key in prune[-1]
    assert prune[-1]["target_sparsity"] == pytest.approx(0.4)
    after = method.sparsity(*method.expected_flops(mask)).item()
    assert before < 0.01  # layers start with their gates off
    assert 0.25 < after < 0.65, (before, after)  # most of the way to 0.4 (the Lagrangian oscillates)
    assert prune[-1]["lambda_1"] < 0  # the constraint was binding during the warm-up
    assert [r["stage"] for r in history].count("finetune") == 6  # gates frozen, distillation only
    assert "expected_sparsity" not in history[-1] and "distill_loss" in history[-1]

    # the trained method's eval decisions (mask and gather) == the exported selectors' decisions
    batch = collate(data[:16], pad_token_id=0)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    model.eval()
    with torch.no_grad():
        trained_mask = model(**inputs, mode="mask")
        trained_gather = model(**inputs, mode="gather")
    exported = json.loads(json.dumps(method.export()))
    inference = PrunableModel(model.hf, ToP.inference_selectors(exported, model.config)).eval()
    with torch.no_grad():
        rebuilt = inference(**inputs, mode="gather")
    assert torch.equal(trained_mask.lengths_kept, trained_gather.lengths_kept)
    assert (trained_gather.lengths_kept[:, -1] < trained_gather.lengths_in[:, 0]).all()  # it prunes
    assert torch.equal(rebuilt.lengths_kept, trained_gather.lengths_kept)
    assert torch.equal(trained_mask.logits.argmax(-1), rebuilt.logits.argmax(-1))
    assert torch.allclose(trained_mask.logits, rebuilt.logits, atol=1e-5)
    assert torch.allclose(trained_gather.logits, rebuilt.logits, atol=1e-6)


def test_extra_loss_by_hand_without_the_loop():
    """extra_loss works with any loop: teacher signals in, finite loss and logs out."""
    model = tiny_model(layers=4)
    teacher = copy.deepcopy(model)
    method = ToP(model.config, {"bin_num": 4, "prune_layers": [1, 2], "rank_distill_layers": [1, 2]})
    model.set_selectors(method.selectors("prune"))
    model.train()
    batch = {**make_batch([15, 11, 9]), "labels": torch.tensor([0, 1, 0])}
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    student = model(**inputs, mode="mask")
    t_out = TeacherRunner(teacher, method.teacher_signals("prune"))(inputs)
    task = torch.nn.functional.cross_entropy(student.logits, batch["labels"])
    loss, logs = method.extra_loss("prune", StepContext(student, t_out, batch, task, step=3, total_steps=10))
    assert torch.isfinite(loss) and loss.requires_grad
    assert logs["distill_loss"] == pytest.approx(0.0, abs=1e-6)  # identical teacher and student
    assert logs["rank_loss"] > 0
    loss.backward()
    assert model.hf.bert.encoder.layer[1].attention.self.query.weight.grad is not None  # ranking reaches layer 1
    with pytest.raises(ValueError, match="teacher"):
        method.extra_loss("prune", StepContext(student, None, batch, task, step=0, total_steps=10))


def test_selectors_context_from_layer_context_directly():
    """A ToP inference selector works on a hand-made LayerContext (no encoder involved)."""
    probs = torch.softmax(torch.randn(2, 4, 9, 9), dim=-1)
    alive = torch.ones(2, 9, dtype=torch.bool)
    alive[1, 6:] = False
    ctx = LayerContext(1, probs, torch.zeros(2, 9, 8), alive, torch.arange(9).expand(2, 9), alive.sum(1))
    decision = ToPInferenceSelector(1, [1, 0])(ctx)
    assert decision.hard[:, 0].all()
    assert decision.hard.sum(1).tolist() == [1 + 4, 1 + 3]  # floor(r * 2 / a) < 1: ranks 0..3 of 8, 0..2 of 5


def test_span_extraction_head_flops_and_distillation():
    torch.manual_seed(0)
    model = PrunableModel(BertForQuestionAnswering(tiny_config(layers=4)).eval())
    method = ToP(model.config, {"bin_num": 4, "prune_layers": [1, 2], "log_alpha_range": None})
    set_gates(method, 1, [1, 0, 1, 1])
    set_gates(method, 2, [1, 1, 0, 0])
    batch = make_batch([33, 17], seed=4)
    out, _ = evaluate_counted(model, method, batch, head="qa")
    assert out.logits.shape == (2, 33, 2)  # every position still gets a span logit

    student = torch.randn(2, 33, 2, requires_grad=True)
    teacher = torch.randn(2, 33, 2)
    mask = batch["attention_mask"]
    loss = logit_distillation_loss(student, teacher, 2.0, mask)
    loss.backward()
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    assert student.grad[1, 17:].abs().sum() == 0  # padding positions take no part
    assert float(logit_distillation_loss(teacher, teacher, 2.0, mask)) == pytest.approx(0.0, abs=1e-6)
    # classification KL and regression MSE
    assert float(logit_distillation_loss(teacher[:, 0], teacher[:, 0], 2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(logit_distillation_loss(torch.ones(3, 1), torch.zeros(3, 1), 2.0)) == pytest.approx(1.0)


def test_deterministic_gates_keep_the_expected_fraction_when_the_layer_gate_is_uncertain():
    model = tiny_model(layers=4)
    method = ToP(model.config, {"bin_num": 10, "prune_layers": [1], "log_alpha_range": None})
    gates = method.module.layers["1"]
    with torch.no_grad():
        gates.bins.log_alpha.copy_(torch.linspace(-BIG, -BIG / 2, 10))  # every bin would drop
        gates.layer.log_alpha.fill_(0.0)  # the layer prunes with probability ~0.5
    expected = float(gates.keep_ratio().detach())
    assert 0.1 < expected < 0.9
    # thresholding the gates separately (the reference) would keep no bin at all
    assert gates.bins.deterministic().sum() == 0 and gates.layer.deterministic().item() == 1
    keep = gates.deterministic_keep()
    assert int(keep.sum()) == round(10 * expected)
    assert keep[-int(keep.sum()) :].all()  # the bins with the largest log_alpha
    exported = method.export()
    assert exported["layers"][0]["kept_bins"] == round(10 * expected) and exported["layers"][0]["prunes"]
    assert ToP.flops_target(exported) == 0.5


def test_calibration_moves_whole_bins_to_the_flops_target():
    model = tiny_model(layers=4)
    method = ToP(model.config, {"bin_num": 10, "prune_layers": [1, 2], "target_sparsity": 0.3, "log_alpha_range": None})
    for layer in (1, 2):
        gates = method.module.layers[str(layer)]
        with torch.no_grad():  # distinct gate values, so the bins have an order; all kept
            gates.bins.log_alpha.copy_(torch.linspace(BIG, BIG / 2, 10))
            gates.layer.log_alpha.fill_(BIG)
    lengths = torch.tensor([9, 17, 23, 31, 40], dtype=torch.float64)
    assert float(method.sparsity(*method.expected_flops_at_lengths(lengths, deterministic=True))) == pytest.approx(0.0)

    achieved = method.calibrate(lengths)
    offsets = [int(method.module.layers[str(layer)].bin_offset) for layer in (1, 2)]
    assert all(offset <= 0 for offset in offsets) and sum(offsets) < 0
    # no single one-bin move from here gets closer to the target
    for layer in (1, 2):
        for step in (-1, 1):
            gates = method.module.layers[str(layer)]
            gates.bin_offset += step
            moved = float(method.sparsity(*method.expected_flops_at_lengths(lengths, deterministic=True)))
            gates.bin_offset -= step
            assert abs(moved - 0.3) >= abs(achieved - 0.3)
    assert abs(achieved - 0.3) < 0.03
    # the offsets are module state (checkpointed) and reach the export and its selectors
    assert "layers.1.bin_offset" in method.module.state_dict()
    exported = method.export()
    assert [entry["kept_bins"] for entry in exported["layers"]] == [10 + offset for offset in offsets]


# ------------------------------------------------------------------------------ reference optimiser, ranking wiring


def test_rank_loss_follows_rank_padding_with_k_from_the_input_lengths():
    model = tiny_model(layers=4)
    teacher = copy.deepcopy(model)
    batch = make_batch([9, 23, 14], seed=6)
    totals = {}
    for padding in ("reference", "own_tokens"):
        settings = {"bin_num": 4, "prune_layers": [1], "rank_distill_layers": [1, 2], "rank_topk": 20, "rank_padding": padding}
        method = ToP(model.config, settings)
        set_gates(method, 1, [1, 1, 0, 0])  # layer 1 drops about half: layer 2 ranks fewer tokens
        model.set_selectors(method.selectors("prune"))
        model.eval()
        with torch.no_grad():
            student = model(**batch, mode="mask")
            t_all = teacher(**batch, mode="mask", output_attentions=True)
        t_out = TeacherRunner(teacher, ("final_token_scores",))(batch)
        totals[padding] = float(method.rank_loss(student, t_out, batch["attention_mask"]))
        alive = batch["attention_mask"].bool()
        t_scores = attention_token_scores(t_all.attentions[-1], alive)  # the last layer's, as the runner keeps
        # the runner's scoring layer uses the head-grouped scores path, the reference call eager
        # attention: the same values up to float rounding
        torch.testing.assert_close(t_out.final_token_scores, t_scores, rtol=1e-5, atol=1e-6)
        expected, without_list_length = 0.0, 0.0
        for layer in (1, 2):
            decision = student.decisions[layer]
            valid = decision.aux["alive"].clone()
            valid[:, 0] = False
            args = (decision.aux["scores"], t_scores.gather(1, decision.aux["positions"]), valid)
            expected += float(ranking_distillation_loss(*args, topk=20, padding=padding, list_length=22))  # 23 - [CLS]
            without_list_length += float(ranking_distillation_loss(*args, topk=20, padding=padding))
        assert int(valid.sum(1).max()) < 22  # layer 2 ranks fewer tokens than the longest input has
        assert totals[padding] == pytest.approx(expected, rel=1e-6)
        if padding == "reference":  # K = min(20, 22) at every distilled layer, as the reference
            assert abs(totals[padding] - without_list_length) > 1e-6
    assert abs(totals["reference"] - totals["own_tokens"]) > 1e-6


_ADAMW_STEP = torch.optim.AdamW.step


def _record_optimizer_steps(monkeypatch, model):
    """Patch AdamW.step to record, at every step, the gradients of the stepping optimiser's
    parameters and of every encoder parameter (by name)."""
    steps = []
    original = _ADAMW_STEP

    def step(self, *args, **kwargs):
        own = {id(p): p.grad.detach().clone() for g in self.param_groups for p in g["params"] if p.grad is not None}
        encoder = {n: p.grad.detach().clone() for n, p in model.hf.named_parameters() if p.grad is not None}
        steps.append({"groups": self.param_groups, "grads": own, "encoder": encoder})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    return steps


def _train_top(monkeypatch, max_grad_norm, settings=None):
    from top.tasks.glue import collate
    from top.train import TrainSettings, run_stages

    model = tiny_model(layers=4, seed=0)
    teacher = copy.deepcopy(model)
    values = {
        "bin_num": 4,
        "prune_layers": [1, 2],
        "rank_distill_layers": [1],
        "epochs": 1,
        "finetune_epochs": 1,
        "reg_learning_rate": 0.1,
        "lambda_learning_rate": 0.1,
        **(settings or {}),
    }
    method = ToP(model.config, values)
    before = {n: p.detach().clone() for n, p in model.hf.named_parameters()}
    steps = _record_optimizer_steps(monkeypatch, model)
    train = TrainSettings(batch_size=8, learning_rate=1e-3, warmup_ratio=0.0, max_grad_norm=max_grad_norm, seed=0)
    run_stages(model, method, toy_dataset(8), train, collate=functools.partial(collate, pad_token_id=0), teacher=teacher)
    after = {n: p.detach().clone() for n, p in model.hf.named_parameters()}
    embeddings = {id(p) for n, p in model.hf.named_parameters() if "embeddings" in n}
    # frozen parameters are in no optimiser: their gradients are cleared after every step all the same
    assert all(p.grad is None for p in model.hf.parameters())
    return method, steps, before, after, embeddings


def test_top_clips_the_encoder_gradients_but_never_the_gates_or_multipliers(monkeypatch):
    # the layer gates on and the task loss rather than distillation from an identical teacher: the
    # bin gates get gradients
    gates_on = {"layer_droprate_init": 0.01, "droprate_init": 0.5, "logit_distill_weight": 0.0}
    clip = 1e-8
    clipped_method, clipped, *_ = _train_top(monkeypatch, max_grad_norm=clip, settings=gates_on)
    free_method, free, *_ = _train_top(monkeypatch, max_grad_norm=1e9, settings=gates_on)
    # one prune step (model optimiser, then the method's), then one finetune step (model only)
    assert len(clipped) == len(free) == 3
    for group in ("gate_parameters", "lambda_parameters"):
        ids = [id(p) for p in getattr(clipped_method.module, group)()]
        free_ids = [id(p) for p in getattr(free_method.module, group)()]
        assert set(ids) <= set(clipped[1]["grads"])
        norm = torch.linalg.vector_norm(torch.cat([free[1]["grads"][i].flatten() for i in free_ids]))
        assert norm > 100 * clip, group  # clipping would have scaled them down
        for a, b in zip(ids, free_ids):  # not scaled
            assert torch.equal(clipped[1]["grads"][a], free[1]["grads"][b]), group
    # the encoder's: scaled to the norm, which counts the frozen embeddings' gradients too (the
    # frozen embedding tables' sparse, in no optimiser, are not scaled: nothing reads them)
    unclipped = free[0]["encoder"]
    assert any("embeddings" in n for n in unclipped)
    assert unclipped["bert.embeddings.word_embeddings.weight"].is_sparse
    total = torch.linalg.vector_norm(torch.cat([g.to_dense().flatten() for g in unclipped.values()]))
    for name, grad in clipped[0]["encoder"].items():
        expected = unclipped[name] if grad.is_sparse else unclipped[name] * (clip / (total + 1e-6))
        torch.testing.assert_close(grad.to_dense(), expected.to_dense(), rtol=1e-4, atol=1e-16)


def test_top_freezes_the_embeddings_in_both_stages_as_the_reference(monkeypatch):
    _, steps, before, after, embeddings = _train_top(monkeypatch, max_grad_norm=1.0)
    assert len(steps) == 3
    for index in (0, 2):  # the model optimiser of prune and of finetune holds no embedding
        params = {id(p) for g in steps[index]["groups"] for p in g["params"]}
        assert len(params) > 10 and not params & embeddings
    embedding_names = [n for n in before if "embeddings" in n]
    assert len(embedding_names) == 5  # word, position, token type, LayerNorm weight and bias
    for name in embedding_names:
        assert torch.equal(before[name], after[name]), name
    assert not torch.equal(before["bert.encoder.layer.0.attention.self.query.weight"], after["bert.encoder.layer.0.attention.self.query.weight"])
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])

    _, _, before, after, _ = _train_top(monkeypatch, max_grad_norm=1.0, settings={"freeze_embeddings": False})
    assert not torch.equal(before["bert.embeddings.word_embeddings.weight"], after["bert.embeddings.word_embeddings.weight"])
    assert not torch.equal(before["bert.embeddings.LayerNorm.weight"], after["bert.embeddings.LayerNorm.weight"])
