"""A plain training loop with hooks for a method's extra losses and parameter groups.

One loop serves the teacher fine-tune (the ``dense`` method plus a ``finetune`` stage) and
every pruning method's stages. Per step: the student runs in mask mode with the stage's
selectors, the task loss (cross-entropy, or MSE for regression) is weighted by the method,
the method's extra loss is added, and one optimiser updates the encoder (linear warm-up and
decay) while a second one updates the method's own parameters at their own learning rates
(``maximize`` groups do gradient ascent, as Lagrange multipliers need), constant or on their own
linear schedule (a group's ``"schedule"`` and ``"warmup_ratio"``; :func:`_method_schedule`).
Each optimiser's gradients are clipped to ``max_grad_norm`` on their own; a method's group with
``"clip": False`` is never clipped, and encoder parameters the method freezes
(:meth:`~top.pruning.base.PruningMethod.frozen_model_parameters`) are in no optimiser but
count in the encoder's norm.

Checkpoint selection (:mod:`top.selection`): with a ``selection``, the end of every epoch of
the last stage is evaluated on dev (before the checkpoint is written, with the RNG states put
back afterwards, so training is the same with or without it), and the chosen epoch's weights
and method state are restored after the last stage.

Checkpoints: at the end of every epoch the model, the method's module, both optimisers, the
schedulers, the RNG states and the selection's state (dev history, best record and its weights)
are written to ``checkpoint_dir/checkpoint.pt`` (temporary name, then rename); a re-run with the
same arguments resumes after the last finished epoch.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from top.encoder import EncoderOutput, PrunableModel
from top.files import atomic_path
from top.pruning.base import PruningMethod, StepContext
from top.selection import CheckpointSelection

log = logging.getLogger(__name__)

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "protect_mask")


@dataclass
class TrainSettings:
    """Optimisation settings shared by every stage (method-specific ones live in the method)."""

    batch_size: int = 32
    learning_rate: float = 2e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 0
    log_every: int = 50
    device: str = "cpu"
    progress: bool = False

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainSettings:
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class NonFiniteLossError(RuntimeError):
    """Raised when the loss becomes NaN or infinite."""


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` picks CUDA when available; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The encoder's inputs of a collated batch, moved to ``device``."""
    return {k: batch[k].to(device) for k in MODEL_INPUTS if k in batch}


def task_loss(logits: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The task's loss.

    * classification, ``[B, C]`` logits and ``[B]`` class ids: cross-entropy;
    * regression, ``[B, 1]`` logits: mean squared error;
    * span extraction, ``[B, L, 2]`` start/end logits and ``[B, 2]`` start/end token indices:
      the mean of the start and end cross-entropies over positions, padding (``attention_mask``
      0) excluded.
    """
    if logits.dim() == 3:
        if attention_mask is not None:
            logits = logits.masked_fill(~attention_mask.bool()[..., None], torch.finfo(logits.dtype).min)
        start = nn.functional.cross_entropy(logits[..., 0], labels[:, 0])
        end = nn.functional.cross_entropy(logits[..., 1], labels[:, 1])
        return (start + end) / 2
    if logits.shape[-1] == 1:
        return nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
    return nn.functional.cross_entropy(logits, labels)


def _atomic_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def linear_factor(warmup: int, total: int) -> Callable[[int], float]:
    """The learning-rate multiplier at 0-based step ``step``: linear warm-up over ``warmup``
    steps (``(step + 1) / warmup``), then linear decay to 0 at step ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, linear_factor(warmup, total))


def _method_schedule(optimizer: torch.optim.Optimizer, settings: TrainSettings, total: int) -> torch.optim.lr_scheduler.LambdaLR | None:
    """Per-group schedules of a method's optimiser (:meth:`PruningMethod.parameter_groups`):
    ``"schedule": "linear"`` groups get :func:`linear_factor` with their ``"warmup_ratio"``
    (default ``settings.warmup_ratio``); ``"constant"`` (or no key) groups keep their ``lr``.
    None when every group is constant."""
    factors = []
    for index, group in enumerate(optimizer.param_groups):
        kind = group.get("schedule", "constant")
        if kind == "constant":
            factors.append(lambda step: 1.0)
        elif kind == "linear":
            ratio = float(group.get("warmup_ratio", settings.warmup_ratio))
            if not 0.0 <= ratio <= 1.0:
                raise ValueError(f"method parameter group {index}: warmup_ratio must be in [0, 1], got {ratio}")
            factors.append(linear_factor(int(ratio * total), total))
        else:
            raise ValueError(f"method parameter group {index}: schedule must be 'constant' or 'linear', got {kind!r}")
    if all(group.get("schedule", "constant") == "constant" for group in optimizer.param_groups):
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors)


def _model_parameter_groups(model: PrunableModel, settings: TrainSettings, lr: float, frozen: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The encoder's weights (not the selectors'), without weight decay on biases and norms, and
    without the parameters whose names contain a ``frozen`` fragment."""
    decay, no_decay = [], []
    for name, param in model.hf.named_parameters():
        if not param.requires_grad or any(fragment in name for fragment in frozen):
            continue
        (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(param)
    return [
        {"params": decay, "weight_decay": settings.weight_decay, "lr": lr},
        {"params": no_decay, "weight_decay": 0.0, "lr": lr},
    ]


def _teacher_output(teacher: PrunableModel, inputs: dict[str, torch.Tensor], signals: Sequence[str]) -> EncoderOutput:
    with torch.no_grad():
        return teacher(**inputs, mode="mask", output_attentions="attentions" in signals)


def run_stages(
    model: PrunableModel,
    method: PruningMethod,
    train_data,
    settings: TrainSettings,
    *,
    collate: Callable[[list[dict]], dict[str, torch.Tensor]],
    teacher: PrunableModel | None = None,
    checkpoint_dir: str | Path | None = None,
    selection: CheckpointSelection | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` through every stage of ``method``.

    Args:
        model: the student, initialised from the fine-tuned teacher (or the pretrained model
            for the teacher fine-tune itself).
        method: the pruning method; its selectors are installed stage by stage and the last
            stage's selectors stay installed.
        train_data: a sequence of encoded examples (``datasets.Dataset`` from
            :func:`top.tasks.glue.encode`).
        settings: optimisation settings.
        collate: turns a list of examples into a padded batch (``top.tasks.glue.collate``).
        teacher: the frozen fine-tuned teacher, needed when the method asks for teacher
            signals.
        checkpoint_dir: where to keep the per-epoch checkpoint; None disables resuming.
        selection: evaluates each epoch of the last stage on dev and restores the chosen one at
            the end (:mod:`top.selection`); None: the model ends as the last epoch left it.

    Returns:
        One log record per ``log_every`` steps (stage, epoch, step, losses, method scalars).
    """
    device = resolve_device(settings.device)
    set_seed(settings.seed)
    model.to(device)
    method.module.to(device)
    if teacher is not None:
        teacher.to(device).eval()
    checkpoint = Path(checkpoint_dir) / "checkpoint.pt" if checkpoint_dir is not None else None
    state = torch.load(checkpoint, map_location=device, weights_only=False) if checkpoint and checkpoint.exists() else None
    history: list[dict[str, float]] = list(state["history"]) if state else []
    if state:
        method.module.load_state_dict(state["method"])  # includes what finished stages derived
        if selection is not None and state.get("selection") is not None:
            selection.load_state_dict(state["selection"], checkpoint_model=state["model"])

    stages = method.stages()
    for stage_index, stage in enumerate(stages):
        last = stage_index == len(stages) - 1
        if state and stage_index < state["stage_index"]:
            model.set_selectors(method.selectors(stage.name))
            continue
        _run_stage(model, method, stage_index, stage, train_data, settings, collate, teacher, device, checkpoint, state, history, selection, last)
        state = None
        if selection is not None and not last:
            rng = _rng_state()
            selection.end_stage(model, method, stage.name, math.ceil(stage.epochs))
            _set_rng_state(rng)
        else:
            method.on_stage_end(stage.name)
    if selection is not None:
        selection.restore(model, method)
    return history


def _run_stage(model, method, stage_index, stage, train_data, settings, collate, teacher, device, checkpoint, state, history, selection, candidates):
    model.set_selectors(method.selectors(stage.name))
    model.selectors.to(device)
    signals = method.teacher_signals(stage.name)
    if signals and teacher is None:
        raise ValueError(f"method {method.name!r} needs a teacher ({', '.join(signals)}) in stage {stage.name!r}")

    generator = torch.Generator().manual_seed(settings.seed + stage_index)
    loader = DataLoader(train_data, batch_size=settings.batch_size, shuffle=True, collate_fn=collate, generator=generator)
    steps_per_epoch = len(loader)
    total_steps = max(1, math.ceil(stage.epochs * steps_per_epoch))
    epochs = math.ceil(stage.epochs)

    trains_model = method.trains_model_weights(stage.name)
    for param in model.hf.parameters():
        param.requires_grad_(trains_model)
    model_optimizer = scheduler = None
    if trains_model:
        lr = stage.learning_rate if stage.learning_rate is not None else settings.learning_rate
        model_optimizer = torch.optim.AdamW(_model_parameter_groups(model, settings, lr, method.frozen_model_parameters(stage.name)))
        scheduler = _linear_schedule(model_optimizer, int(settings.warmup_ratio * total_steps), total_steps)
    method_groups = method.parameter_groups(stage.name)
    method_optimizer = torch.optim.AdamW(method_groups, weight_decay=0.0) if method_groups else None
    method_scheduler = _method_schedule(method_optimizer, settings, total_steps) if method_optimizer else None

    start_epoch, step = 0, 0
    if state is not None and state["stage_index"] == stage_index:
        model.load_state_dict(state["model"])  # the method's module was restored by run_stages
        if model_optimizer is not None:
            model_optimizer.load_state_dict(state["model_optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        if method_optimizer is not None:
            method_optimizer.load_state_dict(state["method_optimizer"])
        if method_scheduler is not None and state.get("method_scheduler") is not None:
            method_scheduler.load_state_dict(state["method_scheduler"])
        generator.set_state(state["generator"])
        _set_rng_state(state["rng"])
        start_epoch, step = state["epoch"] + 1, state["step"]
        log.info("resuming stage %r after epoch %d (step %d) from %s", stage.name, state["epoch"], step, checkpoint)
    # Clipped separately, so a method's gradients never shrink the model's: the model's norm over
    # every encoder parameter with a gradient (frozen ones too), the method's over its groups
    # without "clip": False.
    clipped = [
        (model_optimizer, [p for p in model.hf.parameters() if p.requires_grad]),
        (method_optimizer, [p for g in method_optimizer.param_groups if g.get("clip", True) for p in g["params"]] if method_optimizer else []),
    ]

    log.info("stage %r: %s epochs, %d steps, %d examples", stage.name, stage.epochs, total_steps, len(train_data))
    model.train()
    method.module.train()
    for epoch in range(start_epoch, epochs):
        batches = tqdm(loader, desc=f"{stage.name} epoch {epoch + 1}/{epochs}", disable=not settings.progress, mininterval=10)
        for batch in batches:
            if step >= total_steps:
                break
            record = _train_step(model, method, stage.name, batch, step, total_steps, teacher, signals, device)
            for optimizer, params in clipped:
                if optimizer is not None:
                    if params:
                        nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            model.hf.zero_grad(set_to_none=True)  # frozen parameters are in no optimiser
            for schedule in (scheduler, method_scheduler):
                if schedule is not None:
                    schedule.step()
            if step % settings.log_every == 0 or step == total_steps - 1:
                record.update(stage=stage.name, epoch=epoch, step=step)
                history.append(record)
                log.info("%s", {k: (round(v, 5) if isinstance(v, float) else v) for k, v in record.items()})
            step += 1
        if selection is not None and candidates:  # evaluated without disturbing the training
            rng = _rng_state()
            selection.consider(model, method, stage.name, epoch + 1, epochs)
            _set_rng_state(rng)
            model.train()
            method.module.train()
        if checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            _atomic_save(
                {
                    "stage_index": stage_index,
                    "epoch": epoch,
                    "step": step,
                    "model": model.state_dict(),
                    "method": method.module.state_dict(),
                    "model_optimizer": model_optimizer.state_dict() if model_optimizer else None,
                    "scheduler": scheduler.state_dict() if scheduler else None,
                    "method_optimizer": method_optimizer.state_dict() if method_optimizer else None,
                    "method_scheduler": method_scheduler.state_dict() if method_scheduler else None,
                    "generator": generator.get_state(),
                    "rng": _rng_state(),
                    "history": history,
                    "selection": selection.state_dict(current=(stage.name, epoch + 1)) if selection is not None else None,
                    "settings": asdict(settings),
                },
                checkpoint,
            )
    for param in model.hf.parameters():
        param.requires_grad_(True)
    model.eval()
    method.module.eval()


def _train_step(model, method, stage, batch, step, total_steps, teacher, signals, device) -> dict[str, float]:
    inputs = model_inputs(batch, device)
    labels = batch["labels"].to(device)
    output = model(**inputs, mode="mask")
    loss_task = task_loss(output.logits, labels, inputs["attention_mask"])
    teacher_out = _teacher_output(teacher, inputs, signals) if signals else None
    context = StepContext(student=output, teacher=teacher_out, batch=batch, task_loss=loss_task, step=step, total_steps=total_steps)
    extra, scalars = method.extra_loss(stage, context)
    loss = method.task_loss_weight(stage) * loss_task + (extra if extra is not None else 0.0)
    if not torch.isfinite(loss):
        raise NonFiniteLossError(f"stage {stage!r}, step {step}: loss is {loss.item()} (task loss {loss_task.item()})")
    loss.backward()
    return {"loss": float(loss.detach()), "task_loss": float(loss_task.detach()), **{k: float(v) for k, v in scalars.items()}}
