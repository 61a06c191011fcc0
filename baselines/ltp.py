"""``ltp``: Learned Token Pruning (Kim et al., KDD 2022; github.com/kssteven418/LTP).

Every layer ``l >= 1`` has a learned threshold ``theta_l``; a token survives layer ``l`` when its
attention score exceeds it. Layer 0 never prunes (it has no threshold). Two stages:

``soft``
    Thresholds and model weights are trained together. Nothing is removed: each layer's output
    is multiplied by the differentiable mask ``m = sigmoid((s - theta_l) / T)``
    (:attr:`KeepDecision.soft`; the hard decision keeps every alive token), as the reference's
    ``LTPLayer.forward`` (``modeling_ltp.py`` ~247-251) scales ``layer_output``. The extra loss is
    ``reg_lambda * sum_l R_l``, with ``R_l`` the average of ``m_l`` (``reg_average``, below),
    which pushes thresholds up; the task loss pushes them down. The thresholds are their own
    optimiser group with their own learning rate (``threshold_lr``) and the reference's schedule:
    linear decay to 0 over the soft stage, no warm-up.
``hard``
    Thresholds are frozen (no parameter group); tokens with ``s <= theta_l`` are dropped and the
    model is fine-tuned with the real cascade of drops.

The regulariser (``reg_average``)
---------------------------------
Only slots the thresholds can prune count: [CLS] and tokens the encoder protects
(``protect_mask``, e.g. a SQuAD question) are excluded, since their mask is forced to 1 whatever
the threshold (the reference protects nothing and can prune [CLS]).

* ``real_tokens`` (default): ``R_l`` is the mean of ``m_l`` over the batch's prunable real
  tokens. It does not depend on padding.
* ``padded_slots``: the reference's average. The reference pads every input to 128
  (``run.py`` ``--max_seq_length 128``; ``run_glue_ltp.py`` ``pad_to_max_length`` defaults to
  True) and its loss is ``lambda * sum_l mask_l.mean()`` over all ``[B, 128]`` slots
  (``trainer.py`` ``training_step`` ~1589-1595). A padded slot scores 0 there (no query attends
  to it), so it contributes ``sigmoid(-theta_l / T)``, and its gradient pushes ``theta_l`` up as
  well. Here every row counts ``reg_length`` slots (its real tokens plus
  ``reg_length - n`` padded slots at ``sigmoid(-theta_l / T)``; rows longer than ``reg_length``
  have no padding), or, with ``reg_length: null``, the batch's padded width, which with this
  harness's per-batch padding depends on the batch's longest row.
  ``reg_average: padded_slots, reg_length: 128`` is the reference's regulariser on GLUE (apart
  from [CLS], excluded here).

Score (the fix of the reference's padding dependence)
-----------------------------------------------------
The reference (``prune_modules.py``, ``AbsoluteThresholdTokenPruner``) zeroes the attention
rows of padded/pruned queries and takes the mean over *all* ``H * 128`` rows, 128 being the
length every GLUE input is padded to (``run.py``: ``--max_seq_length 128``)::

    s_ref(k) = 1 / (H * 128) * sum_h sum_{q alive} p[h, q, k]

so its thresholds are tied to that padded length: with dynamic padding, or another maximum
length, the same sentence gets different scores. Here the score is the attention a token
receives, averaged over heads and alive queries (:func:`top.pruning.base.attention_token_scores`),
normalised by the real length ``n`` (the tokens alive at that layer), i.e. measured in units of
the uniform share ``1 / n``::

    s(k) = n * attention_token_scores(p)[k] = 1 / H * sum_h sum_{q alive} p[h, q, k]

It does not depend on padding, and its mean over the alive tokens is exactly 1 at every layer and
every length (a token receiving the attention of a uniform distribution scores 1). It is the
reference's score with the padded length removed: ``s = 128 * s_ref`` exactly, whenever the
reference padded to 128. Hence, to reuse the reference's numbers multiply its threshold,
temperature and threshold learning rate (Adam steps are in parameter units) by 128:
``final_threshold 0.01 -> 1.28``, ``T = 1e-3 -> 0.128``, ``lr 2e-5 -> 2.56e-3`` (the defaults below).

Other departures from the reference, on purpose:

* the initial thresholds rise linearly from 0 at layer 0 to exactly ``final_threshold`` at the last
  layer (the reference's code gives ``final * l / L`` for 0-based ``l``, so its last layer starts at
  11/12 of it; its README says the last layer starts at ``final_token_threshold``);
* layer 0 never prunes and has no threshold. The reference's layer-0 threshold is a parameter
  that starts at ``final * 0 / L = 0``, and ``AbsoluteThresholdTokenPruner`` returns early when
  the threshold is 0 (``prune_modules.py`` ~134-136), so layer 0 neither prunes nor produces a soft
  mask, and its threshold never receives a gradient and stays 0 for good: a parameter that is
  learnable in name only. Here that behaviour is stated rather than hidden;
* [CLS] is always kept (the reference could prune it);
* scores come from the attention probabilities before dropout (the reference scores the
  dropped-out ones while training);
* tokens are really removed in ``gather`` mode (the reference only masks attention);
* the thresholds' gradients are clipped apart from the model's (the reference clips all
  parameters together, ``trainer.py`` ~1190-1197);
* no tensor is created on a fixed device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from top.pruning.base import (
    KeepDecision,
    LayerContext,
    PruningMethod,
    Stage,
    StepContext,
    TokenSelector,
    attention_token_scores,
    reject_unknown_settings,
)

#: The length the reference pads every GLUE input to; only used to convert its numbers.
REFERENCE_PADDED_LENGTH = 128
#: Marks LTP's export (``pruning.json``).
EXPORT_FORMAT = "ltp/v1"
#: How the regulariser averages the soft masks (module docstring).
REG_AVERAGES = ("real_tokens", "padded_slots")
#: Warm-up of the thresholds' learning rate: none. The reference's threshold scheduler is
#: ``get_scheduler(lr_scheduler_type, ...)`` with the model's warm-up steps (``trainer.py``
#: ``create_scheduler`` ~727-750): linear decay, and no warm-up since ``run.py`` sets none
#: (``TrainingArguments``: ``warmup_ratio = warmup_steps = 0``).
THRESHOLD_WARMUP_RATIO = 0.0


@dataclass(frozen=True)
class LTPSettings:
    """LTP's settings (the ``methods.ltp`` block of the workflow configuration).

    Thresholds, temperature and threshold learning rate are in units of the uniform attention
    share (module docstring); the reference's numbers times 128 give them.

    Attributes:
        final_threshold: initial threshold of the last layer; layer ``l`` starts at
            ``final_threshold * l / (L - 1)``. Reference 0.01 (README) -> 1.28.
        temperature: ``T`` of the soft mask ``sigmoid((s - theta) / T)``. Reference 1e-3 -> 0.128.
        reg_lambda: weight of the mask regulariser, the knob trading accuracy for FLOPs (higher
            prunes more).
        reg_lambda_scale: multiplies ``reg_lambda`` (a sweep can scale per-task values, since a
            setting overrides a task's value in the workflow configuration).
        reg_average: ``"real_tokens"`` (mean over the prunable real tokens) or
            ``"padded_slots"`` (the reference's mean over padded slots; module docstring).
        reg_length: ``padded_slots`` only: the length every row is counted as padded to
            (``128``: the reference's GLUE length); None: the batch's padded width.
        threshold_lr: peak learning rate of the thresholds (soft stage), decayed linearly to 0
            over the stage without warm-up (the reference's threshold scheduler). Reference: the
            model's lr, 2e-5 -> 2.56e-3.
        soft_epochs: epochs of the soft stage (reference: 10 for small tasks, 1 for large).
        hard_epochs: epochs of the hard stage (reference: 5); 0 skips it.
    """

    final_threshold: float = 0.01 * REFERENCE_PADDED_LENGTH
    temperature: float = 1e-3 * REFERENCE_PADDED_LENGTH
    reg_lambda: float = 0.1
    reg_lambda_scale: float = 1.0
    reg_average: str = "real_tokens"
    reg_length: int | None = None
    threshold_lr: float = 2e-5 * REFERENCE_PADDED_LENGTH
    soft_epochs: float = 1.0
    hard_epochs: float = 5.0

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> LTPSettings:
        """Build from a settings dict; unknown keys and bad values raise ``ValueError``."""
        values = dict(values or {})
        reject_unknown_settings("ltp", values, cls)
        average = values.pop("reg_average", "real_tokens")
        if average not in REG_AVERAGES:
            raise ValueError(f"ltp: reg_average must be one of {REG_AVERAGES}, got {average!r}")
        length = values.pop("reg_length", None)
        if length is not None and (int(length) != length or int(length) < 1):
            raise ValueError(f"ltp: reg_length must be a positive integer or null, got {length!r}")
        if length is not None and average != "padded_slots":
            raise ValueError(f"ltp: reg_length ({length}) only applies to reg_average 'padded_slots', not {average!r}")
        settings = cls(**{k: float(v) for k, v in values.items()}, reg_average=average, reg_length=None if length is None else int(length))
        if settings.temperature <= 0:
            raise ValueError(f"ltp: temperature must be > 0, got {settings.temperature}")
        non_negative = ("reg_lambda", "reg_lambda_scale", "threshold_lr", "soft_epochs", "hard_epochs", "final_threshold")
        for name in non_negative:
            if getattr(settings, name) < 0:
                raise ValueError(f"ltp: {name} must be >= 0, got {getattr(settings, name)}")
        return settings


def ltp_scores(attention_probs: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """LTP's importance score, in units of the uniform share (module docstring).

    ``s[b, k] = n_b * attention_token_scores(p)[b, k] = 1/H * sum_h sum_{q alive} p[b, h, q, k]``
    with ``n_b`` the alive tokens of example ``b``.

    Returns:
        ``[B, n]`` float, 0 for slots that are not alive (they are never kept anyway).
    """
    return ltp_from_token_scores(attention_token_scores(attention_probs, alive), alive)


def ltp_from_token_scores(token_scores: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """:func:`ltp_scores` from :func:`top.pruning.base.attention_token_scores`' output (what the
    encoder computes for selectors that need no attention probabilities)."""
    scores = token_scores * alive.sum(dim=1, keepdim=True).to(token_scores.dtype)
    return scores.masked_fill(~alive, 0.0)


def initial_thresholds(num_layers: int, final_threshold: float) -> list[float]:
    """Thresholds of layers ``1 .. L-1``, linear in depth, the last one ``final_threshold``."""
    if num_layers < 2:
        return []
    return [final_threshold * layer / (num_layers - 1) for layer in range(1, num_layers)]


class _ThresholdStore(nn.Module):
    """Holds the thresholds of layers ``1 .. L-1`` (a parameter in training, a buffer at inference)."""

    def __init__(self, values: list[float], learnable: bool):
        super().__init__()
        tensor = torch.tensor(values, dtype=torch.float32)
        if learnable:
            self.thresholds = nn.Parameter(tensor)
        else:
            self.register_buffer("thresholds", tensor)

    def threshold(self, layer: int) -> torch.Tensor:
        return self.thresholds[layer - 1]


class SoftThresholdSelector(TokenSelector):
    """Soft stage: keeps every alive token, multiplies the layer output by the soft mask."""

    needs_attention_probs = False  # reads only ctx.attention_token_scores()

    def __init__(self, layer: int, store: _ThresholdStore, temperature: float):
        super().__init__()
        if layer < 1:
            raise ValueError("LTP never prunes layer 0")
        self.layer = layer
        self.store = store
        self.temperature = temperature

    def forward(self, ctx: LayerContext) -> KeepDecision:
        scores = ltp_from_token_scores(ctx.attention_token_scores(), ctx.alive)
        theta = self.store.threshold(self.layer)
        mask = torch.sigmoid((scores - theta) / self.temperature)
        mask = torch.where(ctx.alive, mask, torch.zeros_like(mask))
        is_cls = torch.zeros_like(ctx.alive)
        is_cls[:, 0] = True
        mask = torch.where(is_cls, torch.ones_like(mask), mask)  # [CLS] is never scaled down
        aux = {"mask": mask, "alive": ctx.alive, "scores": scores.detach(), "padding_mask": torch.sigmoid(-theta / self.temperature)}
        return KeepDecision(hard=ctx.alive, soft=mask, aux=aux)


class HardThresholdSelector(TokenSelector):
    """Hard stage and inference: keeps [CLS] and the alive tokens whose score exceeds ``theta``."""

    needs_attention_probs = False  # reads only ctx.attention_token_scores()

    def __init__(self, layer: int, store: _ThresholdStore):
        super().__init__()
        if layer < 1:
            raise ValueError("LTP never prunes layer 0")
        self.layer = layer
        self.store = store

    def forward(self, ctx: LayerContext) -> KeepDecision:
        scores = ltp_from_token_scores(ctx.attention_token_scores(), ctx.alive)
        theta = self.store.threshold(self.layer).detach()
        keep = (scores > theta) & ctx.alive
        keep[:, 0] = True
        return KeepDecision(hard=keep, aux={"scores": scores})


def _hard_selectors(store: _ThresholdStore, num_layers: int) -> dict[int, TokenSelector]:
    return {layer: HardThresholdSelector(layer, store) for layer in range(1, num_layers)}


class LTP(PruningMethod):
    """Learned Token Pruning. Settings: :class:`LTPSettings`. Stages: ``soft``, ``hard``."""

    name = "ltp"
    settings_class = LTPSettings

    def __init__(self, model_config, settings: Mapping[str, Any] | None = None):
        super().__init__(model_config, settings)
        self.resolved = LTPSettings.from_dict(self.settings)
        self.store = _ThresholdStore(initial_thresholds(self.dims.num_layers, self.resolved.final_threshold), learnable=True)
        self.module.store = self.store

    # -- training ---------------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        stages = [Stage("soft", self.resolved.soft_epochs), Stage("hard", self.resolved.hard_epochs)]
        return [stage for stage in stages if stage.epochs > 0]

    def selectors(self, stage: str) -> dict[int, TokenSelector]:
        if stage == "soft":
            return {layer: SoftThresholdSelector(layer, self.store, self.resolved.temperature) for layer in range(1, self.dims.num_layers)}
        if stage == "hard":
            return _hard_selectors(self.store, self.dims.num_layers)
        raise ValueError(f"ltp has stages 'soft' and 'hard', not {stage!r}")

    def extra_loss(self, stage: str, step: StepContext) -> tuple[torch.Tensor | None, dict[str, float]]:
        """Soft stage: ``reg_lambda * reg_lambda_scale * sum_l R_l``, ``R_l`` the average soft mask
        of layer ``l`` over the slots its threshold can prune (module docstring)."""
        if stage != "soft":
            return None, {}
        protect = step.batch.get("protect_mask") if step.batch else None
        terms = []
        for decision in step.student.decisions:
            if decision is None or "mask" not in decision.aux:
                continue
            terms.append(self._average_mask(decision.aux, protect))
        if not terms:
            return None, {}
        kept = torch.stack(terms)
        loss = self.resolved.reg_lambda * self.resolved.reg_lambda_scale * kept.sum()
        return loss, {"ltp_regulariser": float(loss.detach()), "ltp_soft_kept": float(kept.detach().mean())}

    def _average_mask(self, aux: Mapping[str, Any], protect: torch.Tensor | None) -> torch.Tensor:
        """``R_l`` of one layer: the soft mask averaged over the prunable slots (alive, not
        [CLS], not protected), plus, for ``padded_slots``, each row's padded slots."""
        mask, alive = aux["mask"], aux["alive"]
        prunable = alive.clone()
        prunable[:, 0] = False
        if protect is not None:
            prunable &= ~protect.to(device=alive.device).bool()
        weight = prunable.to(mask.dtype)
        total, count = (mask * weight).sum(), weight.sum()
        if self.resolved.reg_average == "padded_slots":
            width = alive.shape[1] if self.resolved.reg_length is None else self.resolved.reg_length
            padded = (width - alive.sum(dim=1)).clamp_min(0).sum().to(mask.dtype)
            total = total + padded * aux["padding_mask"]
            count = count + padded
        return total / count.clamp_min(1.0)

    def parameter_groups(self, stage: str) -> list[dict[str, Any]]:
        if stage != "soft" or self.store.thresholds.numel() == 0:
            return []
        return [
            {
                "params": [self.store.thresholds],
                "lr": self.resolved.threshold_lr,
                "weight_decay": 0.0,
                "schedule": "linear",
                "warmup_ratio": THRESHOLD_WARMUP_RATIO,
            }
        ]

    # -- export / inference ---------------------------------------------------------------------
    def thresholds(self) -> list[float | None]:
        """Current thresholds, one per layer (None for layer 0, which never prunes)."""
        return [None] + [float(v) for v in self.store.thresholds.detach().cpu().tolist()]

    def export(self) -> dict[str, Any]:
        return {
            "format": EXPORT_FORMAT,
            "thresholds": self.thresholds(),
            "temperature": self.resolved.temperature,
            "num_layers": self.dims.num_layers,
            "score": "attention received, averaged over heads, summed over alive queries (uniform share = 1)",
            "keep_rule": "score > threshold, [CLS] always kept, layer 0 never prunes",
            "reference_equivalent_thresholds": [None if t is None else t / REFERENCE_PADDED_LENGTH for t in self.thresholds()],
            "settings": asdict(self.resolved),
        }

    @classmethod
    def inference_selectors(cls, exported: Mapping[str, Any], model_config) -> dict[int, TokenSelector]:
        if exported.get("format", EXPORT_FORMAT) != EXPORT_FORMAT:
            raise ValueError(f"not an LTP export (format {exported.get('format')!r}, expected {EXPORT_FORMAT!r})")
        thresholds = list(exported["thresholds"])
        num_layers = model_config.num_hidden_layers
        if len(thresholds) != num_layers:
            raise ValueError(f"ltp export has {len(thresholds)} thresholds, the model has {num_layers} layers")
        if thresholds and thresholds[0] is not None:
            raise ValueError("ltp export: layer 0 must have no threshold (it never prunes)")
        values = [float(t) for t in thresholds[1:]]
        if any(not math.isfinite(v) for v in values):
            raise ValueError(f"ltp export: thresholds must be finite, got {values}")
        return _hard_selectors(_ThresholdStore(values, learnable=False), num_layers)
