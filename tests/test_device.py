"""Every method trains and evaluates on one device, and its decisions do not depend on it.

The device comes from ``TOP_TEST_DEVICE`` (default ``cpu``, what CI runs); on a GPU machine:
``TOP_TEST_DEVICE=cuda pytest -q tests/test_device.py``. Each case trains a tiny random BERT
through all of a method's stages on that device, then checks that every parameter stayed
there, that gather mode predicts like mask mode on the device, and that the exported decisions
give the same kept lengths and predictions on the CPU.
"""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from tests.conftest import collate_pad0, toy_rows
from top.encoder import PrunableModel
from top.evaluate import predict
from top.pruning.registry import build_method, method_class
from top.train import TrainSettings, resolve_device, run_stages

DEVICE = os.environ.get("TOP_TEST_DEVICE", "cpu")
LAYERS = 4

SETTINGS = {
    "topk": {"keep_ratios": [1.0, 0.7, 0.5, 0.4], "finetune_epochs": 1},
    "top": {
        "target_sparsity": 0.4,
        "bin_num": 4,
        "prune_layers": [1, 2],
        "rank_distill_layers": [1],
        "epochs": 4,
        "lagrangian_warmup_epochs": 1,
        "reg_learning_rate": 0.5,
        "lambda_learning_rate": 0.5,
        "finetune_epochs": 1,
    },
    "ltp": {"soft_epochs": 1, "hard_epochs": 1, "threshold_lr": 0.05, "reg_lambda": 1.0},
    "power_bert": {"search_epochs": 1, "retrain_epochs": 1, "retention_lr": 0.1, "reg_lambda": 0.05},
}


def _tiny_model() -> PrunableModel:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
        num_labels=2,
        initializer_range=0.2,
        attn_implementation="eager",
    )
    return PrunableModel(BertForSequenceClassification(config).eval())


@pytest.fixture(scope="module")
def device() -> torch.device:
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip(f"TOP_TEST_DEVICE={DEVICE} but CUDA is not available")
    return resolve_device(DEVICE)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_method_trains_and_evaluates_on_the_device(name, device, tmp_path):
    model = _tiny_model()
    teacher = copy.deepcopy(model)
    method = build_method(name, model.config, SETTINGS[name])
    settings = TrainSettings(batch_size=8, learning_rate=1e-3, warmup_ratio=0.0, log_every=1, seed=0, device=DEVICE)
    history = run_stages(model, method, toy_rows(48), settings, collate=collate_pad0, teacher=teacher, checkpoint_dir=tmp_path / "ckpt")
    assert history and all(np.isfinite(record["loss"]) for record in history)
    assert {p.device.type for p in model.parameters()} == {device.type}
    learned = [*method.module.parameters(), *method.module.buffers()]  # gates, thresholds, multipliers, weights
    assert {t.device.type for t in learned} <= {device.type}

    exported = json.loads(json.dumps(method.export()))
    inference = PrunableModel(model.hf, method_class(name).inference_selectors(exported, model.config)).eval()
    data = toy_rows(12, seed=5)
    gathered = predict(inference, data, collate_pad0, batch_size=4, mode="gather", device=device)
    masked = predict(inference, data, collate_pad0, batch_size=4, mode="mask", device=device)
    assert np.array_equal(gathered.lengths_kept, masked.lengths_kept)
    assert (gathered.lengths_kept[:, -1] < gathered.lengths_in[:, 0]).any()  # it prunes
    np.testing.assert_allclose(gathered.logits, masked.logits, atol=1e-4, rtol=1e-4)

    on_cpu = predict(inference, data, collate_pad0, batch_size=4, mode="gather", device="cpu")
    assert np.array_equal(on_cpu.lengths_kept, gathered.lengths_kept)
    np.testing.assert_allclose(on_cpu.logits, gathered.logits, atol=1e-4, rtol=1e-4)
