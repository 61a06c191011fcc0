"""Mixed-precision training (``train.precision``): autocast for the student's forward pass and
losses, fp32 parameters, the fp16 loss scaler, and fp32 everywhere else. Runs on the CPU, which
has autocast for bf16 and fp16 and a GradScaler."""

from __future__ import annotations

import copy
import logging
import math

import pytest
import torch
from snakemake.utils import validate
from transformers import BertForSequenceClassification

from tests.conftest import collate_pad0, tiny_config, toy_rows
from tests.test_teacher_cache import TOP
from top.encoder import PrunableModel
from top.optim import resolve_precision
from top.pruning.base import Stage
from top.pruning.dense import Dense
from top.pruning.top import ToP
from top.train import TrainSettings, run_stages

SCHEMA = "workflow/schemas/config.schema.yaml"


def model(seed=0) -> PrunableModel:
    torch.manual_seed(seed)
    return PrunableModel(BertForSequenceClassification(tiny_config(num_hidden_layers=4)))


class Watch(Dense):
    """One ``finetune`` stage that records the student's logits dtype, whether autocast is on in
    the loss, and (optionally) freezes the embeddings."""

    def __init__(self, config, epochs=1, frozen=()):
        super().__init__(config)
        self.epochs, self.frozen = epochs, tuple(frozen)
        self.dtypes: list[torch.dtype] = []

    def stages(self):
        return [Stage("finetune", self.epochs)]

    def extra_loss(self, stage, step):
        self.dtypes.append(step.student.logits.dtype)
        return None, {}

    def frozen_model_parameters(self, stage):
        return self.frozen


def test_resolve_precision(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cpu) is None and resolve_precision("fp32", cpu) is None
    assert resolve_precision("bf16", cpu) is torch.bfloat16 and resolve_precision("fp16", cpu) is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", cuda) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", cuda) is torch.float16
    with pytest.raises(ValueError, match="does not support bfloat16"):
        resolve_precision("bf16", cuda)
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp8", cpu)


def test_bf16_on_a_cpu_without_native_bfloat16_is_warned_about(monkeypatch, caplog):
    import top.optim

    cpu = torch.device("cpu")
    for native, warned in ((False, True), (True, False)):
        monkeypatch.setattr(top.optim, "cpu_has_native_bf16", lambda native=native: native)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="top.optim"):
            top.optim.warn_if_slow_precision(torch.bfloat16, cpu)
            top.optim.warn_if_slow_precision(None, cpu)  # fp32: never
            top.optim.warn_if_slow_precision(torch.float16, cpu)
        assert ("without native bfloat16" in caplog.text) is warned and len(caplog.records) == int(warned)
    monkeypatch.setattr(top.optim, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="top.optim"):
        caplog.clear()
        top.optim.warn_if_slow_precision(torch.bfloat16, torch.device("cuda"))  # a GPU decides for itself
    assert not caplog.records


def test_schema_defaults():
    cfg = {"model": "m", "tasks": ["sst2"], "methods": {"dense": {"settings": {"default": {}}}}}
    validate(cfg, SCHEMA)
    assert cfg["train"]["precision"] == cfg["teacher"]["precision"] == "auto"
    assert cfg["train"]["group_by_length"] is cfg["teacher"]["group_by_length"] is True
    assert cfg["train"]["teacher_cache"] is True
    settings = TrainSettings.from_dict(cfg["train"])
    assert (settings.precision, settings.group_by_length, settings.teacher_cache) == ("auto", True, True)
    with pytest.raises(Exception, match="fp8"):
        validate({**cfg, "train": {"precision": "fp8"}}, SCHEMA)


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_a_run_autocasts_the_student_and_keeps_fp32_parameters(precision, dtype):
    student = model()
    method = Watch(student.config, epochs=2)
    before = {n: p.detach().clone() for n, p in student.hf.named_parameters()}
    settings = TrainSettings(batch_size=8, learning_rate=1e-3, log_every=1, precision=precision)
    history = run_stages(student, method, toy_rows(32), settings, collate=collate_pad0)
    assert set(method.dtypes) == {dtype}
    assert history and all(math.isfinite(r["loss"]) for r in history)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in student.parameters())
    assert any(not torch.equal(p.detach(), before[n]) for n, p in student.hf.named_parameters())  # it trained
    with torch.no_grad():  # and the model runs in fp32 afterwards (evaluation is never autocast)
        assert student(torch.tensor([[2, 10, 5]]), torch.ones(1, 3, dtype=torch.long)).logits.dtype == torch.float32


def test_fp16_scales_the_loss_and_unscales_every_gradient_before_clipping(monkeypatch):
    """The optimiser sees unscaled gradients, and the clipping norm the frozen embeddings' unscaled
    too (in no optimiser, but in the norm): with fp16 they match fp32's up to half-precision
    rounding."""
    seen: dict[str, list[dict[str, torch.Tensor]]] = {}
    original = torch.optim.AdamW.step

    for precision in ("fp32", "fp16"):
        student = model()
        names = {id(p): n for n, p in student.hf.named_parameters()}
        grads: list[dict[str, torch.Tensor]] = []

        def step(self, *args, _grads=grads, _student=student, _names=names, **kwargs):
            _grads.append({_names[id(p)]: p.grad.clone() for p in _student.hf.parameters() if p.grad is not None})
            return original(self, *args, **kwargs)

        monkeypatch.setattr(torch.optim.AdamW, "step", step)
        method = Watch(student.config, frozen=("embeddings",))
        settings = TrainSettings(batch_size=16, learning_rate=1e-3, max_grad_norm=0.5, precision=precision)
        run_stages(student, method, toy_rows(16), settings, collate=collate_pad0)
        seen[precision] = grads
    (fp32,), (fp16,) = seen["fp32"], seen["fp16"]
    assert fp16.keys() == fp32.keys() and fp16["bert.embeddings.word_embeddings.weight"].is_sparse
    # clipped after unscaling: the optimised gradients' norm is below 0.5, the frozen embeddings'
    # (sparse, unclipped) counting in the norm
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in fp16.values() if not g.is_sparse]))
    assert float(norm) < 0.5 * 0.99
    for name, grad in fp16.items():
        torch.testing.assert_close(grad.to_dense(), fp32[name].to_dense(), rtol=0.05, atol=2e-3, msg=name)


def test_fp16_keeps_the_loss_scale_in_the_checkpoint(tmp_path):
    student = model()
    settings = TrainSettings(batch_size=8, learning_rate=1e-3, precision="fp16")
    run_stages(student, Watch(student.config), toy_rows(16), settings, collate=collate_pad0, checkpoint_dir=tmp_path)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["scaler"]["scale"] > 0 and state["settings"]["precision"] == "fp16"


def test_top_prune_step_in_bf16_on_the_cpu():
    student = model(seed=3)
    teacher = copy.deepcopy(student).eval()
    method = ToP(student.config, {**TOP, "epochs": 1, "finetune_epochs": 0})
    settings = TrainSettings(batch_size=8, learning_rate=1e-3, warmup_ratio=0.0, log_every=1, precision="bf16")
    history = run_stages(student, method, toy_rows(16), settings, collate=collate_pad0, teacher=teacher)
    assert len(history) == 2 and all(math.isfinite(r["loss"]) and math.isfinite(r["rank_loss"]) for r in history)
    assert all(p.dtype == torch.float32 for p in [*student.parameters(), *method.module.parameters()])
    assert all(torch.isfinite(p).all() for p in method.module.parameters())
