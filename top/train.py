"""A plain training loop with hooks for a method's extra losses and parameter groups.

One loop serves the teacher fine-tune (the ``dense`` method plus a ``finetune`` stage) and
every pruning method's stages. Per step: the student runs in mask mode with the stage's
selectors, the task loss (cross-entropy, or MSE for regression) is weighted by the method,
the method's extra loss is added, and one optimiser updates the encoder (linear warm-up and
decay) while a second one updates the method's own parameters at their own learning rates
(``maximize`` groups do gradient ascent, as Lagrange multipliers need), constant or on their own
linear schedule (a group's ``"schedule"`` and ``"warmup_ratio"``; :func:`method_schedule`).
Each optimiser's gradients are clipped to ``max_grad_norm`` on their own; a method's group with
``"clip": False`` is never clipped, and encoder parameters the method freezes
(:meth:`~top.pruning.base.PruningMethod.frozen_model_parameters`) are in no optimiser but
count in the encoder's norm.

Checkpoint selection (:mod:`top.selection`): with a ``selection``, the end of every epoch of
the last stage is evaluated on dev (before the checkpoint is written, with the RNG states put
back afterwards, so training is the same with or without it), and the chosen epoch's weights
and method state are restored after the last stage.

Batches (:mod:`top.batching`): shuffled every epoch from a generator seeded per stage; with
``group_by_length`` (the default) the order is length-grouped as the Hugging Face Trainer's
``group_by_length`` does, so a batch holds rows of similar length and little padding.

Teacher signals (:mod:`top.teacher`): a method gets only what
:meth:`~top.pruning.base.PruningMethod.teacher_signals` names. With ``teacher_cache`` (the
default) they are computed once per training example before the first stage that needs them
and reused every epoch; without it the teacher runs on every batch. Both give the same signals
up to floating-point rounding.

Precision (``precision``): ``fp32``; ``bf16`` or ``fp16`` autocast for the student's forward
pass and the losses (parameters, gradients and optimiser states stay fp32; fp16 scales the loss
with a ``GradScaler``); ``auto``: bf16 on a CUDA device that supports it, else fp16 on CUDA, fp32
on the CPU. The teacher's signals, checkpoint selection's dev evaluations, evaluation, FLOPs and
latency always run in fp32.

Checkpoints: at the end of every epoch the model, the method's module, both optimisers, the
schedulers, the loss scaler, the RNG states (the batch order's generator included) and the
selection's state (dev history, best record and its weights) are written to
``checkpoint_dir/checkpoint.pt`` (temporary name, then rename); a re-run with the same arguments
resumes after the last finished epoch.
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

from top.batching import IndexedDataset, LengthGroupedSampler, example_lengths, with_index
from top.budget import stage_steps
from top.encoder import PrunableModel
from top.files import atomic_path
from top.optim import Precision, adamw, clip_grad_norm, linear_schedule, method_schedule, resolve_precision, warn_if_slow_precision
from top.pruning.base import PruningMethod, Stage, StepContext, TeacherSignals
from top.selection import CheckpointSelection
from top.teacher import TeacherCache, TeacherRunner

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
    #: Batches of rows of similar length (:mod:`top.batching`); False: uniform shuffling.
    group_by_length: bool = True
    #: Compute the teacher's signals once per example and reuse them (:mod:`top.teacher`).
    teacher_cache: bool = True
    #: ``auto``, ``fp32``, ``bf16`` or ``fp16`` (:func:`resolve_precision`).
    precision: str = "auto"

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


def _ordered_union(groups: Sequence[Sequence[str]]) -> tuple[str, ...]:
    out: list[str] = []
    for group in groups:
        out.extend(s for s in group if s not in out)
    return tuple(out)


class TeacherSource:
    """Where each stage's teacher signals come from: the cache (built on first use, for every
    signal the remaining stages need) or a teacher pass per batch (``teacher_cache`` off).

    Args:
        stages: the stages still to run, in order.
    """

    def __init__(
        self, teacher: PrunableModel | None, method: PruningMethod, stages: Sequence[Stage], train_data, settings: TrainSettings, collate, device
    ):
        self.teacher, self.train_data, self.settings, self.collate, self.device = teacher, train_data, settings, collate, device
        self.needed = {stage.name: tuple(method.teacher_signals(stage.name)) for stage in stages}
        self.order = [stage.name for stage in stages]
        self.cache: TeacherCache | None = None

    def for_stage(self, stage: str) -> Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], TeacherSignals] | None:
        """``f(batch, inputs)``: the stage's signals of a batch (``inputs``: its model inputs on
        the device); None when the stage needs none."""
        signals = self.needed[stage]
        if not signals:
            return None
        if self.teacher is None:
            raise ValueError(f"stage {stage!r} needs a teacher ({', '.join(signals)})")
        if not self.settings.teacher_cache:
            runner = TeacherRunner(self.teacher, signals)
            return lambda batch, inputs: runner(inputs)
        if self.cache is None or any(s not in self.cache.signals for s in signals):
            remaining = _ordered_union([self.needed[name] for name in self.order[self.order.index(stage) :]])
            self.cache = None  # free the old one before building
            self.cache = TeacherCache(
                TeacherRunner(self.teacher, remaining), self.train_data, self.collate, batch_size=self.settings.batch_size, device=self.device
            )
        cache = self.cache
        return lambda batch, inputs: cache(batch, signals)


@dataclass
class TrainData:
    """The training examples as the loop batches them: items carry their dataset index
    (:class:`~top.batching.IndexedDataset`), ``collate`` adds it to the batch; ``lengths`` for
    length grouping (None: uniform shuffling)."""

    dataset: IndexedDataset
    collate: Callable
    lengths: list[int] | None

    @classmethod
    def of(cls, train_data, collate, group_by_length: bool) -> TrainData:
        return cls(IndexedDataset(train_data), with_index(collate), example_lengths(train_data) if group_by_length else None)

    def loader(self, batch_size: int, generator: torch.Generator) -> DataLoader:
        """A stage's batches: shuffled (or length-grouped) afresh every epoch from ``generator``."""
        if self.lengths is None:
            return DataLoader(self.dataset, batch_size=batch_size, shuffle=True, collate_fn=self.collate, generator=generator)
        sampler = LengthGroupedSampler(self.lengths, batch_size, generator)
        return DataLoader(self.dataset, batch_size=batch_size, sampler=sampler, collate_fn=self.collate, generator=generator)


class StageStep:
    """One stage's optimisation, a batch at a time: what the loop does per batch (forward pass,
    losses, backward, unscaling, clipping, both optimisers' and schedules' steps). Building it
    installs nothing but sets which encoder parameters need gradients (``trains_model_weights``).

    Args:
        total_steps: the stage's optimiser steps (the schedules' length).
        teacher_fn: :meth:`TeacherSource.for_stage`'s function, or None.
    """

    def __init__(self, model: PrunableModel, method: PruningMethod, stage: Stage, settings: TrainSettings, total_steps: int, teacher_fn, device):
        self.model, self.method, self.stage, self.settings = model, method, stage, settings
        self.total_steps, self.teacher_fn, self.device = total_steps, teacher_fn, device
        self.precision = Precision(resolve_precision(settings.precision, device), device)
        trains_model = method.trains_model_weights(stage.name)
        for param in model.hf.parameters():
            param.requires_grad_(trains_model)
        self.model_optimizer = self.scheduler = None
        if trains_model:
            lr = stage.learning_rate if stage.learning_rate is not None else settings.learning_rate
            self.model_optimizer = adamw(_model_parameter_groups(model, settings, lr, method.frozen_model_parameters(stage.name)))
            self.scheduler = linear_schedule(self.model_optimizer, int(settings.warmup_ratio * total_steps), total_steps)
        method_groups = method.parameter_groups(stage.name)
        self.method_optimizer = adamw(method_groups, weight_decay=0.0) if method_groups else None
        self.method_scheduler = method_schedule(self.method_optimizer, settings.warmup_ratio, total_steps) if self.method_optimizer else None
        # Clipped separately, so a method's gradients never shrink the model's: the model's norm
        # over every encoder parameter with a gradient (frozen ones too), the method's over its
        # groups without "clip": False. Each entry: the optimiser, the parameters in its norm, and
        # those of them in no optimiser (frozen: fp16's loss scaler does not unscale them).
        optimised = {id(p) for g in self.model_optimizer.param_groups for p in g["params"]} if self.model_optimizer else set()
        encoder = [p for p in model.hf.parameters() if p.requires_grad]
        method_clipped = [p for g in self.method_optimizer.param_groups if g.get("clip", True) for p in g["params"]] if self.method_optimizer else []
        self.clipped = [
            (self.model_optimizer, encoder, [p for p in encoder if id(p) not in optimised]),
            (self.method_optimizer, method_clipped, []),
        ]
        # A frozen embedding's gradient only enters the clipping norm: computed sparse (the rows
        # of the batch's tokens), not as a zero-filled [vocab, d] matrix that is then normed and
        # scaled every step (ToP's frozen word embeddings: about a tenth of a MiniLM step on the
        # CPU). Undone by close().
        self._sparse = [
            m for m in model.hf.modules() if isinstance(m, nn.Embedding) and not m.sparse and m.weight.requires_grad and id(m.weight) not in optimised
        ]
        for module in self._sparse:
            module.sparse = True

    def close(self) -> None:
        """Give the frozen embeddings their dense gradients back."""
        for module in self._sparse:
            module.sparse = False
        self._sparse = []

    def __call__(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, Any]:
        """Train on ``batch`` at 0-based stage step ``step``; the step's record (floats or 0-dim
        tensors, :func:`_train_step`)."""
        record = _train_step(self.model, self.method, self.stage.name, batch, step, self.total_steps, self.teacher_fn, self.device, self.precision)
        scaler = self.precision.scaler
        for optimizer, params, frozen in self.clipped:
            if optimizer is None:
                continue
            if scaler is not None:
                scaler.unscale_(optimizer)
                if frozen:  # in no optimiser, so not unscaled by the scaler, but in the norm
                    inverse = 1.0 / scaler.get_scale()
                    for param in frozen:
                        if param.grad is not None:
                            param.grad.mul_(inverse)
            if params:
                clip_grad_norm(params, self.settings.max_grad_norm)
            if scaler is not None:
                scaler.step(optimizer)
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.update()
        self.model.hf.zero_grad(set_to_none=True)  # frozen parameters are in no optimiser
        for schedule in (self.scheduler, self.method_scheduler):
            if schedule is not None:
                schedule.step()
        return record

    def state_dict(self) -> dict[str, Any]:
        """The optimisers', schedules' and loss scaler's states (checkpoint entries)."""
        scaler = self.precision.scaler
        return {
            "model_optimizer": self.model_optimizer.state_dict() if self.model_optimizer else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "method_optimizer": self.method_optimizer.state_dict() if self.method_optimizer else None,
            "method_scheduler": self.method_scheduler.state_dict() if self.method_scheduler else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.model_optimizer is not None:
            self.model_optimizer.load_state_dict(state["model_optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        if self.method_optimizer is not None:
            self.method_optimizer.load_state_dict(state["method_optimizer"])
        if self.method_scheduler is not None and state.get("method_scheduler") is not None:
            self.method_scheduler.load_state_dict(state["method_scheduler"])
        if self.precision.scaler is not None and state.get("scaler") is not None:
            self.precision.scaler.load_state_dict(state["scaler"])


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
    # refuse a bad setting, and warn of a slow one, before any work
    warn_if_slow_precision(resolve_precision(settings.precision, device), device)
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
    for stage in stages:
        signals = method.teacher_signals(stage.name)
        if signals and teacher is None:
            raise ValueError(f"method {method.name!r} needs a teacher ({', '.join(signals)}) in stage {stage.name!r}")
    first = state["stage_index"] if state else 0
    data = TrainData.of(train_data, collate, settings.group_by_length)
    teachers = TeacherSource(teacher, method, stages[first:], train_data, settings, collate, device)
    for stage_index, stage in enumerate(stages):
        last = stage_index == len(stages) - 1
        if stage_index < first:
            model.set_selectors(method.selectors(stage.name))
            continue
        _run_stage(model, method, stage_index, stage, data, settings, teachers, device, checkpoint, state, history, selection, last)
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


def _run_stage(model, method, stage_index, stage, data, settings, teachers, device, checkpoint, state, history, selection, candidates):
    model.set_selectors(method.selectors(stage.name))
    model.selectors.to(device)
    teacher_fn = teachers.for_stage(stage.name)

    generator = torch.Generator().manual_seed(settings.seed + stage_index)
    loader = data.loader(settings.batch_size, generator)
    steps_per_epoch = len(loader)
    total_steps = stage_steps(stage.epochs, steps_per_epoch)
    epochs = math.ceil(stage.epochs)
    optimise = StageStep(model, method, stage, settings, total_steps, teacher_fn, device)

    start_epoch, step = 0, 0
    if state is not None and state["stage_index"] == stage_index:
        model.load_state_dict(state["model"])  # the method's module was restored by run_stages
        optimise.load_state_dict(state)
        generator.set_state(state["generator"])
        _set_rng_state(state["rng"])
        start_epoch, step = state["epoch"] + 1, state["step"]
        log.info("resuming stage %r after epoch %d (step %d) from %s", stage.name, state["epoch"], step, checkpoint)

    dtype = optimise.precision.dtype
    log.info(
        "stage %r: %s epochs, %d steps, %d examples (group_by_length %s, teacher %s, precision %s)",
        stage.name,
        stage.epochs,
        total_steps,
        len(data.dataset),
        data.lengths is not None,
        "none" if teacher_fn is None else ("cached" if settings.teacher_cache else "per step"),
        "fp32" if dtype is None else str(dtype).removeprefix("torch."),
    )
    model.train()
    method.module.train()
    try:
        for epoch in range(start_epoch, epochs):
            batches = tqdm(loader, desc=f"{stage.name} epoch {epoch + 1}/{epochs}", disable=not settings.progress, mininterval=10)
            for batch in batches:
                if step >= total_steps:
                    break
                record = optimise(batch, step)
                if step % settings.log_every == 0 or step == total_steps - 1:
                    record = {k: float(v) for k, v in record.items()}  # read only here: no device sync per step
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
                        **optimise.state_dict(),
                        "generator": generator.get_state(),
                        "rng": _rng_state(),
                        "history": history,
                        "selection": selection.state_dict(current=(stage.name, epoch + 1)) if selection is not None else None,
                        "settings": asdict(settings),
                    },
                    checkpoint,
                )
    finally:
        optimise.close()
    for param in model.hf.parameters():
        param.requires_grad_(True)
    model.eval()
    method.module.eval()


def _train_step(model, method, stage, batch, step, total_steps, teacher_fn, device, precision: Precision) -> dict[str, Any]:
    """Forward, losses and backward of one batch; the record's values are floats or 0-dim
    tensors, read only when logged."""
    inputs = model_inputs(batch, device)
    labels = batch["labels"].to(device)
    teacher_out = teacher_fn(batch, inputs) if teacher_fn is not None else None  # fp32, outside autocast
    with precision.autocast():
        # record=False: nothing in training reads every position's carried state (a QA head
        # still gets every position, the encoder keeps them for it)
        output = model(**inputs, mode="mask", record=False)
        loss_task = task_loss(output.logits, labels, inputs["attention_mask"])
        context = StepContext(student=output, teacher=teacher_out, batch=batch, task_loss=loss_task, step=step, total_steps=total_steps)
        extra, scalars = method.extra_loss(stage, context)
        loss = method.task_loss_weight(stage) * loss_task + (extra if extra is not None else 0.0)
    if not torch.isfinite(loss):
        raise NonFiniteLossError(f"stage {stage!r}, step {step}: loss is {loss.item()} (task loss {loss_task.item()})")
    precision.backward(loss)
    return {"loss": loss.detach(), "task_loss": loss_task.detach(), **{k: (v.detach() if torch.is_tensor(v) else v) for k, v in scalars.items()}}
