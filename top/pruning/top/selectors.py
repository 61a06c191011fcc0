"""ToP's token selectors (:mod:`top.pruning.top` describes the method): the training selector
backed by the gates, and the deterministic selector that evaluation rebuilds from an export."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from top.pruning.base import KeepDecision, LayerContext, TokenSelector
from top.pruning.top.gates import ToPLayerGates, bin_keep_values


class ToPSelector(TokenSelector):
    """A pruning layer's selector backed by the method's gates (or, without gates, a scorer).

    In training mode it samples the gates (after clamping their ``log_alpha``); in eval mode,
    or when ``frozen``, it uses the deterministic gates. Protected slots (``ctx.protected``) are
    no rank-bin candidates and keep the value 1. ``aux`` carries the layer's token scores (with
    gradient, for ranking distillation), ``alive``, ``positions`` and ``protected``. Without
    gates it keeps every alive token and only records the scores (a ranking-distillation layer
    that does not prune).
    """

    needs_attention_probs = False  # reads only ctx.attention_token_scores()

    def __init__(self, layer: int, gates: ToPLayerGates | None, frozen: bool = False):
        super().__init__()
        self.layer = layer
        self.gates = gates
        self.frozen = frozen

    def forward(self, ctx: LayerContext) -> KeepDecision:
        scores = ctx.attention_token_scores()
        aux = {"scores": scores, "alive": ctx.alive, "positions": ctx.positions, "protected": ctx.protected}
        if self.gates is None:
            return KeepDecision(hard=ctx.alive.clone(), aux=aux)
        if self.training and not self.frozen:
            self.gates.constrain_()
            values = self.gates.sampled_keep()
        else:
            values = self.gates.deterministic_keep()
        soft = bin_keep_values(scores, ctx.alive, values.to(scores.dtype), ctx.protected)
        aux["bin_values"] = values
        return KeepDecision(hard=(soft > 0) & ctx.alive, soft=soft, aux=aux)


class ToPInferenceSelector(TokenSelector):
    """Deterministic selector rebuilt from :meth:`ToP.export`: keeps the tokens of the kept bins.

    Args:
        layer: the encoder layer.
        bin_mask: ``[bin_num]`` 0/1, the kept rank bins.
        protected_tokens: whether the run was trained with protected tokens
            (``qa.protect_question``). The rank bins then count only the unprotected tokens,
            so the inputs must carry the same ``protect_mask``: a context whose
            ``ctx.protected`` disagrees (None here, or present without it) is an error.
    """

    needs_attention_probs = False  # reads only ctx.attention_token_scores()

    def __init__(self, layer: int, bin_mask: Sequence[int], protected_tokens: bool = False):
        super().__init__()
        self.layer = layer
        self.protected_tokens = bool(protected_tokens)
        self.register_buffer("bin_mask", torch.tensor([float(bool(v)) for v in bin_mask]))

    def forward(self, ctx: LayerContext) -> KeepDecision:
        if (ctx.protected is not None) != self.protected_tokens:
            trained = "with" if self.protected_tokens else "without"
            given = "with" if ctx.protected is not None else "without"
            raise ValueError(
                f"layer {self.layer}: this ToP run was trained {trained} protected tokens but is run {given} a protect_mask; "
                f"its rank bins count only the tokens it may drop, so evaluate it with the protection it was trained with "
                f"(qa.protect_question or glue.protect_separators: {'true' if self.protected_tokens else 'false'})"
            )
        scores = ctx.attention_token_scores()
        keep = bin_keep_values(scores, ctx.alive, self.bin_mask.to(device=scores.device, dtype=scores.dtype), ctx.protected)
        return KeepDecision(hard=(keep > 0) & ctx.alive, aux={"scores": scores})


def protected_counts(attention_mask: torch.Tensor, protect_mask: torch.Tensor) -> torch.Tensor:
    """``[B]`` long: the tokens each row keeps whatever the gates say, its real tokens with
    ``protect_mask`` 1 and [CLS] (slot 0), which the encoder always keeps.

    Args:
        attention_mask, protect_mask: ``[B, L]`` (1 for real, resp. protected, tokens).
    """
    fixed = attention_mask.bool() & protect_mask.bool()
    fixed[:, 0] = True
    return fixed.sum(dim=1)
