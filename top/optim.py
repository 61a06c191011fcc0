"""Optimisation pieces of the training loop (:mod:`top.train`): fused AdamW, the linear
warm-up/decay schedule of the encoder and of a method's parameter groups, gradient clipping that
tolerates sparse gradients, and mixed precision (autocast and fp16 loss scaling)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN computes bfloat16 natively on this CPU (AVX-512 or AMX units); without it
    CPU autocast to bf16 is emulated and far slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def warn_if_slow_precision(dtype: torch.dtype | None, device: torch.device) -> None:
    """Log a warning for bf16 autocast on a CPU without native bfloat16: measured on an
    AVX2-only AMD EPYC, a MiniLM SQuAD teacher step took 110 s under bf16 against 2.5 s in
    fp32 (config/squad_ablation.yaml)."""
    if dtype == torch.bfloat16 and device.type == "cpu" and not cpu_has_native_bf16():
        log.warning(
            "precision bf16 on a CPU without native bfloat16 (capability %s): autocast emulates it and trains "
            "tens of times slower than fp32 here; set precision: fp32",
            torch.backends.cpu.get_cpu_capability(),
        )


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of training under ``precision: name`` on ``device``; None: fp32.

    ``auto`` is bf16 on a CUDA device that supports it, fp16 on another CUDA device and fp32
    elsewhere; ``bf16`` and ``fp16`` are taken as asked (the CPU has autocast for both), except
    that bf16 on a CUDA device without bf16 support is refused."""
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    cuda = device.type == "cuda"
    if name == "auto":
        if not cuda:
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ValueError("precision bf16: this CUDA device does not support bfloat16; use fp16 or auto")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


class Precision:
    """Autocast for the forward pass and losses, and the loss scaler of fp16."""

    def __init__(self, dtype: torch.dtype | None, device: torch.device):
        self.dtype, self.device = dtype, device
        self.scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()


def adamw(groups, **kwargs) -> torch.optim.AdamW:
    """AdamW, fused where torch has the kernel (CPU and CUDA float32 parameters; on the CPU it is
    several times faster than the per-tensor loop, the same update up to rounding)."""
    params = [p for group in groups for p in group["params"]]
    fused = bool(params) and all(p.dtype == torch.float32 and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, fused=fused, **kwargs)


def linear_factor(warmup: int, total: int) -> Callable[[int], float]:
    """The learning-rate multiplier at 0-based step ``step``: linear warm-up over ``warmup``
    steps (``(step + 1) / warmup``), then linear decay to 0 at step ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, linear_factor(warmup, total))


def method_schedule(optimizer: torch.optim.Optimizer, warmup_ratio: float, total: int) -> torch.optim.lr_scheduler.LambdaLR | None:
    """Per-group schedules of a method's optimiser (:meth:`PruningMethod.parameter_groups`):
    ``"schedule": "linear"`` groups get :func:`linear_factor` with their ``"warmup_ratio"``
    (default ``warmup_ratio``, the stage's own); ``"constant"`` (or no key) groups keep their ``lr``.
    None when every group is constant."""
    factors = []
    for index, group in enumerate(optimizer.param_groups):
        kind = group.get("schedule", "constant")
        if kind == "constant":
            factors.append(lambda step: 1.0)
        elif kind == "linear":
            ratio = float(group.get("warmup_ratio", warmup_ratio))
            if not 0.0 <= ratio <= 1.0:
                raise ValueError(f"method parameter group {index}: warmup_ratio must be in [0, 1], got {ratio}")
            factors.append(linear_factor(int(ratio * total), total))
        else:
            raise ValueError(f"method parameter group {index}: schedule must be 'constant' or 'linear', got {kind!r}")
    if all(group.get("schedule", "constant") == "constant" for group in optimizer.param_groups):
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors)


def clip_grad_norm(params: Sequence[nn.Parameter], max_norm: float) -> None:
    """``nn.utils.clip_grad_norm_`` over ``params``, where a sparse gradient (a frozen embedding's,
    in no optimiser) counts in the norm but is not scaled: nothing reads it afterwards."""
    grads = [p.grad.coalesce().values() if p.grad.is_sparse else p.grad for p in params if p.grad is not None]
    total = nn.utils.get_total_norm(grads)
    nn.utils.clip_grads_with_norm_([p for p in params if p.grad is not None and not p.grad.is_sparse], max_norm, total)
