"""Analytic FLOPs against hand counts and against torch's FlopCounterMode on the gather model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import BertForQuestionAnswering, BertForSequenceClassification

from tests.conftest import random_batch, tiny_config
from top.encoder import PrunableModel
from top.measure.flops import counted_flops, example_flops, flops_summary
from top.pruning.topk import TopKSelector


def test_hand_count_one_layer():
    config = tiny_config(num_hidden_layers=1, hidden_size=8, num_attention_heads=2, intermediate_size=16, num_labels=3)
    # n=5 tokens in, m=2 kept: attention 4*5*64 + 2*25*8 = 1280 + 400; FFN 2*2*8*16 = 512;
    # head 8*8 + 8*3 = 88. MACs 2280 -> FLOPs 4560.
    assert example_flops(config, "classification", [[5]], [[2]]).tolist() == [4560.0]
    # QA head: 2*d per input position = 2*8*5 = 80 instead of 88.
    assert example_flops(config, "qa", [[5]], [[2]]).tolist() == [2 * (1280 + 400 + 512 + 80)]


@pytest.mark.parametrize("head", ["classification", "qa"])
@pytest.mark.parametrize("overrides", [{}, {"hidden_size": 48, "num_attention_heads": 6, "intermediate_size": 100, "num_hidden_layers": 4}])
def test_analytic_equals_flop_counter_on_gather_model(head, overrides):
    torch.manual_seed(0)
    config = tiny_config(**overrides)
    hf = (BertForQuestionAnswering if head == "qa" else BertForSequenceClassification)(config).eval()
    layers = config.num_hidden_layers
    # eager attention: FlopCounterMode misses SDPA's attention FLOPs on a CPU (torch 2.13)
    model = PrunableModel(hf, {0: TopKSelector(0.8), layers - 1: TopKSelector(0.4)}, attention="eager")
    batch = random_batch()
    for row in range(3):
        n = int(batch["attention_mask"][row].sum())
        inputs = {k: v[row : row + 1, :n] for k, v in batch.items()}
        out = model(**inputs, mode="gather")
        assert out.lengths_kept[0, -1] < n  # something was really pruned
        analytic = example_flops(config, head, out.lengths_in.numpy(), out.lengths_kept.numpy())[0]
        assert counted_flops(model, inputs) == analytic


def test_summary_reduction():
    config = tiny_config()
    lengths_in = np.array([[10, 8, 6], [20, 15, 10]])
    lengths_kept = np.array([[8, 6, 4], [15, 10, 5]])
    summary = flops_summary(config, "classification", lengths_in, lengths_kept)
    pruned = example_flops(config, "classification", lengths_in, lengths_kept).mean()
    dense = example_flops(config, "classification", np.array([[10] * 3, [20] * 3]), np.array([[10] * 3, [20] * 3])).mean()
    assert summary["flops"] == pytest.approx(pruned)
    assert summary["dense_flops"] == pytest.approx(dense)
    assert summary["flops_reduction"] == pytest.approx(dense / pruned)
    assert summary["mean_lengths_kept"] == [11.5, 8.0, 4.5]
    keep_all = flops_summary(config, "classification", lengths_in[:, :1].repeat(3, 1), lengths_in[:, :1].repeat(3, 1))
    assert keep_all["flops_reduction"] == 1.0


def test_lengths_must_match_layers():
    with pytest.raises(ValueError, match="2 layers, the model has 3"):
        example_flops(tiny_config(), "classification", [[4, 4]], [[4, 4]])
    with pytest.raises(ValueError, match="unknown head kind"):
        example_flops(tiny_config(), "tagging", [[4, 4, 4]], [[4, 4, 4]])
