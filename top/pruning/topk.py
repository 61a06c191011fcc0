"""``topk``: static attention-score top-k with a per-layer keep-ratio schedule.

No learned parameters. At layer ``l`` an example of real length ``N`` keeps
``ceil(r_l * N)`` tokens ([CLS] included): those that receive the most attention, averaged
over heads and alive queries (the scoring of ToP §3.2 and PoWER-BERT §3.2, without any
learning). The ratios ``r_l`` are relative to the input length and must not increase with
depth, so the schedule is a cascade. Optionally the model is fine-tuned with the selectors
in place (``finetune_epochs``), which lets it adapt to the missing tokens.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from top.pruning.base import (
    KeepDecision,
    LayerContext,
    PruningMethod,
    Stage,
    TokenSelector,
    keep_top_k,
    reject_unknown_settings,
)


@dataclass
class TopKSettings:
    """``topk``'s settings.

    Attributes:
        keep_ratios: one ratio per layer, in (0, 1], non-increasing (required).
        finetune_epochs: epochs of fine-tuning with the selectors in place (0: none).
    """

    keep_ratios: list[float]
    finetune_epochs: float = 0.0


def validate_schedule(keep_ratios: Sequence[float], num_layers: int) -> list[float]:
    """Check a keep-ratio schedule: one ratio in (0, 1] per layer, non-increasing."""
    ratios = [float(r) for r in keep_ratios]
    if len(ratios) != num_layers:
        raise ValueError(f"keep_ratios has {len(ratios)} entries, the model has {num_layers} layers")
    for layer, ratio in enumerate(ratios):
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"keep_ratios[{layer}] = {ratio} is outside (0, 1]")
        if layer and ratio > ratios[layer - 1]:
            raise ValueError(
                f"keep_ratios must not increase with depth: keep_ratios[{layer}] = {ratio} > keep_ratios[{layer - 1}] = {ratios[layer - 1]}"
            )
    return ratios


class TopKSelector(TokenSelector):
    """Keeps ``ceil(ratio * input_length)`` best-scoring tokens at one layer."""

    needs_attention_probs = False  # reads only ctx.attention_token_scores()

    def __init__(self, ratio: float):
        super().__init__()
        self.ratio = ratio

    def keep_counts(self, ctx: LayerContext) -> torch.Tensor:
        """``[B]`` long: how many tokens each example keeps, ``ceil(ratio * input_length)``."""
        return torch.ceil(ctx.input_lengths.to(torch.float64) * self.ratio).long()

    def forward(self, ctx: LayerContext) -> KeepDecision:
        scores = ctx.attention_token_scores()  # [B, n]
        return KeepDecision(hard=keep_top_k(scores, ctx.alive, self.keep_counts(ctx), all_alive=ctx.all_alive), aux={"scores": scores})

    def kept_slots(self, ctx: LayerContext) -> torch.Tensor:
        """The slots :meth:`forward` keeps, for batch 1 with every slot alive: [CLS] and the
        best-scoring others, equal scores keeping the earlier slot (as :func:`keep_top_k`)."""
        n = ctx.alive.shape[1]
        k = min(max(1, math.ceil(float(ctx.input_lengths[0]) * self.ratio)), n)  # the layer's one host synchronisation
        scores = ctx.attention_token_scores()[0].clone()
        scores[0] = float("inf")  # [CLS] first, whatever its score
        return scores.argsort(descending=True, stable=True)[:k].sort().values


def schedule_selectors(ratios: Sequence[float], selector: type[TopKSelector] = TopKSelector) -> dict[int, TokenSelector]:
    """layer -> ``selector(ratio)`` for each layer of a keep-ratio schedule that prunes (ratio < 1)."""
    return {layer: selector(r) for layer, r in enumerate(ratios) if r < 1.0}


class TopK(PruningMethod):
    """Settings: ``keep_ratios`` (one per layer), ``finetune_epochs`` (default 0)."""

    name = "topk"
    settings_class = TopKSettings

    def __init__(self, model_config, settings: Mapping[str, Any] | None = None):
        super().__init__(model_config, settings)
        reject_unknown_settings(self.name, self.settings, TopKSettings)
        if "keep_ratios" not in self.settings:
            raise ValueError(f"topk: keep_ratios is required: one keep ratio per layer ({self.dims.num_layers} for this model)")
        self.ratios = validate_schedule(self.settings["keep_ratios"], self.dims.num_layers)

    def stages(self) -> list[Stage]:
        epochs = float(self.settings.get("finetune_epochs", 0))
        return [Stage("finetune", epochs)] if epochs > 0 else []

    def selectors(self, stage: str) -> dict[int, TokenSelector]:
        return schedule_selectors(self.ratios)

    def export(self) -> dict[str, Any]:
        return {"keep_ratios": self.ratios}

    @classmethod
    def inference_selectors(cls, exported: Mapping[str, Any], model_config) -> dict[int, TokenSelector]:
        return schedule_selectors(validate_schedule(exported["keep_ratios"], model_config.num_hidden_layers))
