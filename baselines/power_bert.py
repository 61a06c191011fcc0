"""``power_bert``: PoWER-BERT, progressive word-vector elimination (Goyal et al., ICML 2020;
github.com/IBM/PoWER-BERT).

Score
-----
A token's significance is the attention it receives from the *other* alive tokens: attention
probabilities **averaged over heads** (as the reference's ``calc_avg_atten``, a mean over heads),
then summed over the alive queries, minus the token's attention to itself (the reference's
``atten_col``: column sum minus the diagonal). Unlike the reference, padded and already
eliminated queries do not contribute, and the head count is whatever the tensor carries (read
from the model config, checked against it), not 12.

Stages
------
``search`` (the paper's configuration search with Soft-Extract layers)
    A soft-extract layer at every layer ``l``: learnable retention weights ``r_l[j] in [0, 1]``,
    one per rank ``j``. The alive tokens are sorted by score ([CLS] first, always weight 1) and
    the token of rank ``j`` is multiplied by ``r_l[j]`` (:attr:`KeepDecision.soft`; nothing is
    removed). The extra loss is the layer-weighted L1 penalty
    ``reg_lambda * sum_l (l + 1) * sum_j r_l[j]`` (the reference's ``l1(LAMBDA * layer_idx)``,
    ``layer_idx`` 1-based), over the ranks some input has reached (the reference penalises all
    its padded slots; ranks no input reaches would change only the loss value and the gradient
    norm, which the training loop clips jointly). Weights are kept in ``[0, 1]`` by projection
    before every forward (the reference's Keras ``CustomConstraint`` clips after every update).
    They are their own optimiser group (``retention_lr``) with the reference's schedule: linear
    warm-up over the first 10% of the stage's steps, then linear decay to 0 (``training.py``
    ``configuration_search_step`` ~148-169: one ``AdamWarmup`` for the model and the retention
    weights, whose ``lr_mult`` gives the model ``LR_BERT``; ``utils/Adam_mult.py``
    ``calc_train_steps`` ~15-28, ``warmup_proportion=0.1``, and the rate ~85-91). The shape is the
    encoder's (:func:`top.optim.linear_factor`): after the warm-up the reference decays as
    ``1 - t / total`` (so it drops from 1 to about 0.9 at the end of the warm-up), here as
    ``(total - t) / (total - warmup)``; the two differ by at most about the warm-up fraction of the
    peak rate.
    Model weights are trained too. As in the reference (``model/model.py`` ``_wrap_layer``
    ~202-213: ``Soft_Extract`` is applied to the attention sublayer's ``-Norm`` output, which is
    both the input and the residual of the feed-forward block), the weights scale the attention
    sublayer's output after its LayerNorm, before the feed-forward block
    (:attr:`KeepDecision.soft_on` ``"ffn_input"``), not the layer's output: the feed-forward
    residual's LayerNorm renormalises a scaled vector, so the two placements differ.
    At the end (:meth:`PoWERBERT.on_stage_end`) the retention configuration is derived, as the
    reference's ``training.get_configuration``: ``k_l = 1 + floor(sum_j r_l[j])`` ("mass"; 1 for
    [CLS]) or ``1 + #{j: r_l[j] > count_threshold}`` ("count"), then made non-increasing with a
    running minimum, validated, stored, and exported.
``retrain``
    Hard extract: each layer keeps [CLS] and the ``k_l - 1`` best-scoring other alive tokens
    (paper's Extract layer); the model is fine-tuned.

An explicit ``retention`` list in the settings skips the search (stages: ``retrain`` only); an
increasing list raises ``ValueError``.

Retention counts and lengths (a documented choice)
--------------------------------------------------
The reference pads every input to a task length (64, 128 or 256, ``task_config.json``) and its
weights cover those padded slots. Padded tokens receive (almost) no attention, so they take the
last ranks and the real tokens the first ones: its counts are in effect counts of real tokens.
The search here ranks only the real tokens of each example, so the counts it learns are
**absolute** and are applied as ``min(k_l, alive tokens)``: a short example keeps all its tokens
where a long one is cut to ``k_l``, exactly what the search trained. Only ranks that some training
example reached enter the mass (a buffer records the longest example seen), so the size of the
weight vector (``max_length``) does not inflate the counts.

A list learned elsewhere on a padded length (e.g. the reference's logs, whose first value is
the padded length) can instead be **scaled to each example's real length**: set
``retention_length`` to the length it refers to, and layer ``l`` keeps
``ceil(k_l * n / retention_length)`` tokens of an example of real length ``n`` (still [CLS]
included, at least 1). Scaling keeps the schedule non-increasing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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
    keep_top_k,
    reject_unknown_settings,
)

RULES = ("mass", "count")
#: Warm-up of the retention weights' learning rate, as a fraction of the search stage's steps
#: (the reference's ``calc_train_steps(..., warmup_proportion=0.1)``; module docstring).
RETENTION_WARMUP_RATIO = 0.1
#: Marks PoWER-BERT's export (``pruning.json``).
EXPORT_FORMAT = "power_bert/v1"


@dataclass(frozen=True)
class PoWERBERTSettings:
    """PoWER-BERT's settings (the ``methods.power_bert`` block of the workflow configuration).

    Attributes:
        reg_lambda: the L1 weight (reference ``LAMBDA``), the knob trading accuracy for FLOPs
            (higher eliminates more). README range [1e-4, 1e-3]; default the README's MRPC example.
        reg_lambda_scale: multiplies ``reg_lambda`` (a sweep can scale per-task values, since a
            setting overrides a task's value in the workflow configuration).
        retention_lr: peak learning rate of the retention weights (reference ``LR_SOFT_EXTRACT``,
            range [1e-4, 1e-2]); 10% warm-up, then linear decay (module docstring).
        retention_lr_scale: multiplies ``retention_lr``, as ``reg_lambda_scale`` does
            ``reg_lambda``. Adam moves each weight by about the learning rate per step whatever
            the size of its gradient, so once the L1 term dominates a larger ``reg_lambda`` no
            longer speeds the weights up: how far they can travel in the search, hence how much
            it can eliminate, is set by this rate and the number of steps.
        search_epochs / retrain_epochs: epochs of the two stages (the reference uses ``EPOCH`` for
            both; README example 3); ``retrain_epochs = 0`` skips the retraining.
        retention: explicit retention configuration (one count per layer, [CLS] included,
            non-increasing): skips the search.
        retention_rule: ``"mass"`` (the reference) or ``"count"``.
        count_threshold: a weight counts as retained above this (``"count"`` rule).
        max_length: number of rank weights per layer; default the model's
            ``max_position_embeddings``. Inputs longer than this raise an error in the search.
        retention_length: None (counts are absolute) or the (padded) length the counts refer to,
            to scale them to each example's real length (module docstring).
    """

    reg_lambda: float = 3e-3
    reg_lambda_scale: float = 1.0
    retention_lr: float = 3e-3
    retention_lr_scale: float = 1.0
    search_epochs: float = 3.0
    retrain_epochs: float = 3.0
    retention: tuple[int, ...] | None = None
    retention_rule: str = "mass"
    count_threshold: float = 0.5
    max_length: int | None = None
    retention_length: int | None = None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> PoWERBERTSettings:
        """Build from a settings dict; unknown keys and bad values raise ``ValueError``."""
        values = dict(values or {})
        reject_unknown_settings("power_bert", values, cls)
        floats = ("reg_lambda", "reg_lambda_scale", "retention_lr", "retention_lr_scale", "search_epochs", "retrain_epochs", "count_threshold")
        for name in floats:
            if name in values:
                values[name] = float(values[name])
                if values[name] < 0:
                    raise ValueError(f"power_bert: {name} must be >= 0, got {values[name]}")
        for name in ("max_length", "retention_length"):
            if values.get(name) is not None:
                if int(values[name]) != values[name] or int(values[name]) < 1:
                    raise ValueError(f"power_bert: {name} must be a positive integer, got {values[name]!r}")
                values[name] = int(values[name])
        if values.get("retention") is not None:
            retention = values["retention"]
            if isinstance(retention, str):
                retention = [part for part in retention.split(",") if part.strip()]
            values["retention"] = tuple(_as_count(v, i) for i, v in enumerate(retention))
        if values.get("retention_rule", "mass") not in RULES:
            raise ValueError(f"power_bert: retention_rule must be one of {RULES}, got {values['retention_rule']!r}")
        return cls(**values)


def _as_count(value: Any, index: int) -> int:
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"power_bert: retention[{index}] = {value!r} is not an integer") from None
    if count != float(value) or count < 1:
        raise ValueError(f"power_bert: retention[{index}] = {value!r} must be a positive integer")
    return count


def validate_retention(retention: Sequence[int], num_layers: int) -> list[int]:
    """Check a retention configuration: one positive count per layer, non-increasing.

    Raises:
        ValueError: wrong length, a count below 1, or a count larger than the previous layer's.
    """
    counts = [_as_count(v, i) for i, v in enumerate(retention)]
    if len(counts) != num_layers:
        raise ValueError(f"power_bert: retention has {len(counts)} counts, the model has {num_layers} layers")
    for layer in range(1, len(counts)):
        if counts[layer] > counts[layer - 1]:
            raise ValueError(
                f"power_bert: retention must not increase with depth (tokens eliminated at one layer "
                f"cannot come back): retention[{layer}] = {counts[layer]} > retention[{layer - 1}] = "
                f"{counts[layer - 1]}; got {counts}"
            )
    return counts


def power_bert_scores(attention_probs: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """Attention each token receives from the other alive tokens, heads averaged (module docstring).

    Args:
        attention_probs: ``[B, H, n, n]`` (queries on dim 2, keys on dim 3).
        alive: ``[B, n]`` bool.

    Returns:
        ``[B, n]`` float; not-alive slots get ``-inf``.
    """
    mean_heads = attention_probs.mean(dim=1)  # [B, n_query, n_key]
    from_alive = mean_heads * alive.to(mean_heads.dtype)[:, :, None]
    received = from_alive.sum(dim=1) - from_alive.diagonal(dim1=1, dim2=2)
    return received.masked_fill(~alive, float("-inf"))


def _ranks(scores: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """Rank of every slot among the alive ones, [CLS] first (0), best score next; stable."""
    ordered = scores.masked_fill(~alive, float("-inf")).clone()
    ordered[:, 0] = float("inf")
    order = ordered.argsort(dim=1, descending=True, stable=True)
    return order.argsort(dim=1)


def _check_heads(ctx: LayerContext, heads: int) -> None:
    if ctx.attention_probs.shape[1] != heads:
        raise ValueError(f"power_bert: layer {ctx.layer} has {ctx.attention_probs.shape[1]} attention heads, the model config says {heads}")


class _RetentionStore(nn.Module):
    """The retention weights (ranks 1.., [CLS] excluded), the longest input seen in the search,
    and the derived retention configuration (-1 until derived)."""

    def __init__(self, num_layers: int, max_length: int):
        super().__init__()
        self.weights = nn.Parameter(torch.ones(num_layers, max(max_length - 1, 0)))
        self.register_buffer("max_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("retention", torch.full((num_layers,), -1, dtype=torch.long))

    def project_(self) -> None:
        with torch.no_grad():
            self.weights.clamp_(0.0, 1.0)

    def has_retention(self) -> bool:
        return bool((self.retention > 0).all())


class SoftExtractSelector(TokenSelector):
    """Search stage: the token of rank ``j`` (among the alive ones, [CLS] rank 0) is scaled by
    ``r_l[j]`` before the feed-forward block (``soft_on="ffn_input"``); every alive token is kept."""

    def __init__(self, layer: int, store: _RetentionStore, heads: int):
        super().__init__()
        self.layer = layer
        self.store = store
        self.heads = heads

    def forward(self, ctx: LayerContext) -> KeepDecision:
        _check_heads(ctx, self.heads)
        longest = int(ctx.alive.sum(dim=1).max())
        capacity = self.store.weights.shape[1] + 1
        if longest > capacity:
            raise ValueError(
                f"power_bert: an input has {longest} tokens but the search has rank weights for {capacity}; raise the 'max_length' setting"
            )
        if self.layer == 0:
            # Project once per forward, before any layer uses the weights (an in-place change
            # after a use would invalidate the autograd graph).
            self.store.project_()
        with torch.no_grad():
            self.store.max_seen.clamp_(min=longest)
        scores = power_bert_scores(ctx.attention_probs, ctx.alive)
        ranks = _ranks(scores, ctx.alive)  # [B, n]
        row = self.store.weights[self.layer]
        weights = torch.cat([row.new_ones(1), row])  # rank 0 ([CLS]) has weight 1
        soft = weights[ranks.clamp(max=capacity - 1)]
        soft = torch.where(ctx.alive, soft, torch.zeros_like(soft))
        return KeepDecision(hard=ctx.alive, soft=soft, soft_on="ffn_input", aux={"scores": scores.detach(), "ranks": ranks})


class ExtractSelector(TokenSelector):
    """Retrain stage and inference: keeps [CLS] and the ``k - 1`` best other alive tokens."""

    def __init__(self, layer: int, store: _RetentionStore | None, heads: int, retention_length: int | None, count: int | None = None):
        super().__init__()
        self.layer = layer
        self.store = store
        self.heads = heads
        self.retention_length = retention_length
        self.count = count

    def keep_count(self, input_lengths: torch.Tensor) -> torch.Tensor:
        """Tokens to keep per example, [CLS] included (before clamping to the alive count)."""
        if self.count is not None:
            k = self.count
        else:
            if self.store is None or not self.store.has_retention():
                raise RuntimeError("power_bert: no retention configuration yet; run the 'search' stage first")
            k = int(self.store.retention[self.layer])
        if self.retention_length is None:
            return torch.full_like(input_lengths, k)
        scaled = torch.ceil(input_lengths.to(torch.float64) * k / self.retention_length).long()
        return scaled.clamp_min(1)

    def forward(self, ctx: LayerContext) -> KeepDecision:
        _check_heads(ctx, self.heads)
        scores = power_bert_scores(ctx.attention_probs, ctx.alive)
        k = self.keep_count(ctx.input_lengths)
        return KeepDecision(hard=keep_top_k(scores, ctx.alive, k), aux={"scores": scores, "k": k})


def derive_retention(weights: torch.Tensor, used_ranks: int, rule: str = "mass", count_threshold: float = 0.5) -> list[int]:
    """The retention configuration from learned weights (reference ``get_configuration``).

    Args:
        weights: ``[L, R]`` retention weights of ranks ``1 .. R`` ([CLS] excluded), in [0, 1].
        used_ranks: how many of them some input reached (longest input seen minus [CLS]).
        rule: ``"mass"``: ``1 + floor(sum)``; ``"count"``: ``1 + #(weights > count_threshold)``.

    Returns:
        One count per layer ([CLS] included), made non-increasing by a running minimum.
    """
    if rule not in RULES:
        raise ValueError(f"power_bert: retention_rule must be one of {RULES}, got {rule!r}")
    used = weights.detach().float().clamp(0.0, 1.0)[:, : max(0, used_ranks)]
    if rule == "mass":
        raw = [1 + int(math.floor(float(row.sum()) + 1e-6)) for row in used]
    else:
        raw = [1 + int((row > count_threshold).sum()) for row in used]
    counts: list[int] = []
    for k in raw:
        counts.append(k if not counts else min(k, counts[-1]))
    return counts


class PoWERBERT(PruningMethod):
    """PoWER-BERT. Settings: :class:`PoWERBERTSettings`. Stages: ``search``, ``retrain`` (only
    ``retrain`` with an explicit retention)."""

    name = "power_bert"
    settings_class = PoWERBERTSettings

    def __init__(self, model_config, settings: Mapping[str, Any] | None = None):
        super().__init__(model_config, settings)
        self.resolved = PoWERBERTSettings.from_dict(self.settings)
        max_length = self.resolved.max_length or int(getattr(model_config, "max_position_embeddings", 512))
        self.store = _RetentionStore(self.dims.num_layers, max_length)
        self.module.store = self.store
        if self.resolved.retention is not None:
            self.set_retention(self.resolved.retention)

    # -- retention -------------------------------------------------------------------------------
    def set_retention(self, retention: Sequence[int]) -> list[int]:
        """Validate and store a retention configuration."""
        counts = validate_retention(retention, self.dims.num_layers)
        self.store.retention.copy_(torch.tensor(counts, dtype=torch.long))
        return counts

    def retention(self) -> list[int] | None:
        return [int(v) for v in self.store.retention.tolist()] if self.store.has_retention() else None

    # -- training ---------------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        stages = [] if self.resolved.retention is not None else [Stage("search", self.resolved.search_epochs)]
        if self.resolved.retrain_epochs > 0:
            stages.append(Stage("retrain", self.resolved.retrain_epochs))
        return stages

    def selectors(self, stage: str) -> dict[int, TokenSelector]:
        layers = range(self.dims.num_layers)
        if stage == "search":
            return {layer: SoftExtractSelector(layer, self.store, self.dims.heads) for layer in layers}
        if stage == "retrain":
            # Counts are read at forward time, so a resumed run picks up the restored buffer.
            return {layer: ExtractSelector(layer, self.store, self.dims.heads, self.resolved.retention_length) for layer in layers}
        raise ValueError(f"power_bert has stages 'search' and 'retrain', not {stage!r}")

    def extra_loss(self, stage: str, step: StepContext) -> tuple[torch.Tensor | None, dict[str, float]]:
        """Search stage: ``reg_lambda * sum_l (l + 1) * sum_j r_l[j]`` over the ranks reached so far."""
        if stage != "search":
            return None, {}
        used = max(0, int(self.store.max_seen) - 1)
        weights = self.store.weights[:, :used]
        depth = torch.arange(1, weights.shape[0] + 1, device=weights.device, dtype=weights.dtype)
        mass = weights.sum(dim=1)
        loss = self.resolved.reg_lambda * self.resolved.reg_lambda_scale * (depth * mass).sum()
        return loss, {"power_bert_l1": float(loss.detach()), "power_bert_mass": float(mass.detach().mean())}

    def parameter_groups(self, stage: str) -> list[dict[str, Any]]:
        if stage != "search":
            return []
        return [
            {
                "params": [self.store.weights],
                "lr": self.resolved.retention_lr * self.resolved.retention_lr_scale,
                "weight_decay": 0.0,
                "schedule": "linear",
                "warmup_ratio": RETENTION_WARMUP_RATIO,
            }
        ]

    def on_stage_end(self, stage: str) -> None:
        if stage != "search":
            return
        if int(self.store.max_seen) < 1:
            raise RuntimeError("power_bert: the search stage saw no input; cannot derive a retention configuration")
        self.store.project_()
        counts = derive_retention(self.store.weights, int(self.store.max_seen) - 1, self.resolved.retention_rule, self.resolved.count_threshold)
        self.set_retention(counts)

    # -- export / inference ---------------------------------------------------------------------
    def export(self) -> dict[str, Any]:
        retention = self.retention()
        if retention is None:
            raise RuntimeError("power_bert: nothing to export before the 'search' stage has ended")
        used = max(0, int(self.store.max_seen) - 1)
        weights = self.store.weights.detach().clamp(0, 1)[:, :used]
        return {
            "format": EXPORT_FORMAT,
            "retention": retention,
            "retention_length": self.resolved.retention_length,
            "num_layers": self.dims.num_layers,
            "source": "settings" if self.resolved.retention is not None else f"search ({self.resolved.retention_rule})",
            "score": "attention received from the other alive tokens, heads averaged",
            "keep_rule": "[CLS] + top (k - 1) by score; k absolute (min(k, n)) or ceil(k * n / retention_length)",
            "max_seen_length": int(self.store.max_seen),
            "weight_mass": [float(v) for v in weights.sum(dim=1).tolist()],
            "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.resolved).items()},
        }

    @classmethod
    def inference_selectors(cls, exported: Mapping[str, Any], model_config) -> dict[int, TokenSelector]:
        if exported.get("format", EXPORT_FORMAT) != EXPORT_FORMAT:
            raise ValueError(f"not a PoWER-BERT export (format {exported.get('format')!r}, expected {EXPORT_FORMAT!r})")
        counts = validate_retention(exported["retention"], model_config.num_hidden_layers)
        length = exported.get("retention_length")
        heads = model_config.num_attention_heads
        return {layer: ExtractSelector(layer, None, heads, None if length is None else int(length), count=k) for layer, k in enumerate(counts)}
