"""``top``: ToP, constraint-aware and ranking-distilled token pruning (Li et al., KDD 2023).

What is learned
---------------
At every pruning layer, the alive tokens other than [CLS] are ranked by the attention they
receive (:func:`~top.pruning.base.attention_token_scores`) and split into ``bin_num`` equal rank
bins: a token of rank ``r`` (0 = most important) among ``a`` candidates falls into bin
``floor(r * bin_num / a)`` (exact integer arithmetic). Each bin has a hard-concrete gate
(:class:`~top.pruning.l0.HardConcreteGate`), and each pruning layer has one more gate that
decides whether the layer prunes at all (the coarse-to-fine layer selection of ToP §3.3,
``pruner_z`` in the reference). A token's keep value is ``1 - (1 - z_bin) * g_layer`` where
``g_layer`` is the layer gate made binary with a straight-through estimator. A token whose keep
value is 0 is dropped; otherwise, in training (mask mode), the layer output is multiplied by
it, which is how the gates receive gradients from the task. At evaluation every gate is
deterministic (:meth:`HardConcreteGate.deterministic`), so a layer keeps a fixed set of rank
bins: :meth:`ToP.export` writes these 0/1 bin masks and :meth:`ToP.inference_selectors`
rebuilds selectors that make exactly the same hard decisions without any gate module.

Mapping onto this harness's layers
----------------------------------
The reference decides "at layer ``i``" with layer ``i - 1``'s attention and drops the tokens
before layer ``i`` runs. Here the selector of layer ``l`` runs right after layer ``l``'s
self-attention, with layer ``l``'s probabilities, and its dropped tokens skip layer ``l``'s
feed-forward block and every later layer. So the reference's location ``i`` is our layer
``l = i - 1``: the same scores decide, and the dropped tokens additionally save layer ``l``'s
feed-forward block (DESIGN.md FLOPs convention). The reference's default locations ``2..11``
of BERT-base become ``prune_layers = 1..L-2`` here (derived from the model's depth ``L``); its
alternative ``3..11`` is ``2..L-2``. Ranking distillation in the reference applies to the scores
of layers ``1 .. L//3 - 1`` (``range(1, len(pred_scores) // 3)``), i.e. the scores used by its
first pruning locations; the same layer indices here (``rank_distill_layers``).

Constraint (ToP §3.3, Appendix)
-------------------------------
A bin's tokens survive unless the layer prunes and the bin's gate is 0, so bin ``b`` of
pruning layer ``l`` survives with probability ``q_b = 1 - (1 - P(z_b > 0)) * P(g_l > 0)``. An
example of real length ``N`` is followed layer by layer: ``m_{-1} = N`` and, at a pruning layer
with ``a = m_{l-1} - 1`` candidates ([CLS] is always kept), ``m_l = 1 + sum_b q_b occ_b(a)``,
where ``occ_b(a) = ceil((b+1) a / B) - ceil(b a / B)`` is the exact number of candidates in
bin ``b`` (:func:`bin_occupancy`; interpolated linearly between integers, so ``m_l`` is
differentiable in the gates of this and earlier layers); ``m_l = m_{l-1}`` elsewhere. The
expected FLOPs use :mod:`top.flops` exactly as the evaluation does: attention of layer ``l`` at
``m_{l-1}``, feed-forward at ``m_l``, plus the task head; the dense FLOPs use the same formula at
``N``. For deterministic gates (``q_b`` in {0, 1}) the counts are the real ones at every
length, so the FLOPs the constraint sees are exactly those evaluated (a test checks this).

The reference uses ``m_l = 1 + (N - 1) prod_j r_j`` with a mean keep ratio ``r`` per layer,
which assumes every bin holds ``a / B`` tokens. At GLUE lengths that is far off: with 25 bins, a
13-token SST-2 training row has only 12 occupied bins, and for the same gates that formula said
0.49 sparsity where the exact count gives 0.43.

The expected sparsity ``s = 1 - sum(expected) / sum(dense)`` (``sparsity_average: per_example``
gives the reference's mean of per-example ratios) is taken over the lengths that
``flops_lengths`` names: each batch's (the reference), every training row's, or the validation
split's token counts (where FLOPs are reported). :meth:`ToP.prepare` refuses a target that
those lengths cannot reach. With the target ``t`` ramped linearly from ``start_sparsity`` to
``target_sparsity`` over ``lagrangian_warmup_epochs``, the Lagrangian
``lambda_1 (s - t) + lambda_2 (s - t)^2`` is added to the loss; the gates minimise it and the
multipliers maximise it (gradient ascent: their optimiser group has ``maximize=True``). With
``s < t`` the ascent drives ``lambda_1`` negative and ``lambda_2`` positive, so the penalty and
its pull towards sparsity grow until ``s`` reaches ``t``.

The multipliers keep ``s`` oscillating around ``t`` rather than on it, and the deterministic
gates round each layer to whole bins; with ``calibrate`` (the default) the end of the ``prune``
stage moves whole bins, greedily, until the exact FLOPs on the constraint's lengths are as
close to the target as one-bin moves get (:meth:`ToP.calibrate`). (In the SST-2 2x benchmark
run the last 130 steps' expected sparsity ranged over 0.486-0.516 for a 0.5 target: +-3% of
the reduction at 2x, +-6% at 4x.)

Losses (reference ``trainer.py``)
---------------------------------
* logit distillation ``KL(softmax(t / T) || softmax(s / T)) * T^2`` (``T = 2``), which replaces the
  task loss for classification and span extraction (the task loss keeps weight 1 and distillation
  is off for regression, as the reference does for STS-B);
* ranking distillation (:func:`~top.pruning.ranking.ranking_distillation_loss`, LambdaLoss ARP-2
  on the teacher's top-20 tokens) between the teacher's final-layer token scores and each
  distilled layer's scores, summed over layers, weighted by
  ``rank_distill_weight * max(0.01, 1 - warmup progress)``. Unlike the reference, only tokens
  still alive at the distilled layer are ranked (dropped ones have no score here);
* the Lagrangian above.

Stages: ``prune`` (model, gates and multipliers trained jointly) and, when
``finetune_epochs > 0``, ``finetune`` (the gates frozen at their deterministic values, logit
distillation only), the reference's optional fine-tuning after pruning.

The reference clamps every ``log_alpha`` into ``[log 1e-2, log 1e2]`` after each optimiser step.
The training loop has no after-step hook, so each training selector clamps its own gates in
place at the start of the forward, before they enter the graph, which is equivalent; values
are also read through the same clamp, so evaluation and export after the last step agree.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from top.flops import encoder_macs, head_macs
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
from top.pruning.l0 import LOG_ALPHA_RANGE, HardConcreteGate
from top.pruning.ranking import WEIGHTINGS, ranking_distillation_loss

logger = logging.getLogger(__name__)

EXPORT_FORMAT = "top-bins/1"
STAGES = ("prune", "finetune")
FLOPS_LENGTHS = ("batch", "train", "validation")


def default_prune_layers(num_layers: int) -> list[int]:
    """The reference's ``prune_location = 2..L-1``, shifted to this harness's layers: ``1..L-2``."""
    return list(range(1, num_layers - 1))


def default_rank_distill_layers(num_layers: int) -> list[int]:
    """The reference's ``range(1, L // 3)`` (layers 1, 2, 3 of BERT-base)."""
    return list(range(1, num_layers // 3))


@dataclass
class ToPSettings:
    """ToP's settings, with their defaults in one place.

    Defaults follow the reference's SST-2 example (``ToP/run_token_prune.sh``) and
    ``run_TokenPrune.sh``/``args.py``; per-task values belong in the configuration.

    Attributes:
        target_sparsity: fraction of the dense FLOPs to remove (0.5 = 2x fewer FLOPs).
        bin_num: rank bins per pruning layer.
        prune_layers: layers whose selector may prune (0-based, this harness's indexing; see
            the module docstring). None: ``1..L-2``.
        rank_distill_layers: layers whose scores learn the teacher's final-layer ranking. None:
            ``1..L//3-1``. Empty disables ranking distillation.
        epochs: epochs of the ``prune`` stage.
        lagrangian_warmup_epochs: epochs over which the target ramps from ``start_sparsity`` to
            ``target_sparsity`` (and the ranking-loss factor decays); 0: no ramp.
        start_sparsity: the target at step 0.
        finetune_epochs: epochs of the optional ``finetune`` stage with frozen gates (0: none).
        finetune_learning_rate: the encoder's learning rate in ``finetune`` (None: the run's
            ``train.learning_rate``, which the ``prune`` stage uses).
        reg_learning_rate: learning rate of the gates' ``log_alpha``.
        lambda_learning_rate: learning rate of the multipliers (gradient ascent). None: the same
            as ``reg_learning_rate`` (the reference uses ``-reg_learning_rate``).
        droprate_init: initial drop probability of the bin gates (log_alpha = log(0.99/0.01) =
            4.6, the reference's effective start after its clamp).
        layer_droprate_init: initial drop probability of the layer gates (0.99: layers start
            off; the reference initialises them at -10, clamped to -4.6 after the first step).
        temperature: hard-concrete temperature ``beta``.
        magical_number: scale in the deterministic mask (ordering only).
        log_alpha_range: ``[low, high]`` clamp of ``log_alpha`` (reference: ``[log 1e-2,
            log 1e2]``); None disables it.
        rank_distill_weight: weight of the ranking loss (``distill_ce_loss_alpha`` in the
            reference, grid 1e-2 .. 1e-5).
        rank_distill_floor: the ranking weight decays as ``max(floor, 1 - warmup progress)``.
        rank_topk: teacher's top-k tokens ranked per example (None: all).
        rank_weighting: ``"arp2"`` (reference) or ``"ndcg2"``.
        logit_distill_weight: weight of logit distillation. None: 1, or 0 for regression.
        distill_temperature: softmax temperature ``T`` of logit distillation.
        task_loss_weight: weight of the task loss. None: 0 when logits are distilled (the
            reference trains on distillation alone), else 1.
        sparsity_average: ``"pooled"`` (1 - sum expected / sum dense over the batch, as FLOPs are
            reported) or ``"per_example"`` (1 - mean of ratios, as the reference).
        flops_lengths: the real lengths the constraint's expected FLOPs are computed at:
            ``"batch"`` (each training batch's, as the reference), ``"train"`` (every training
            row's, without the batch-to-batch noise) or ``"validation"`` (the evaluation split's
            token counts, where the FLOPs are reported; no texts or labels are used). They
            differ when the splits' lengths differ, e.g. SST-2 trains on phrases (13 tokens on
            average with MiniLM's tokenizer) and evaluates on sentences (25).
        calibrate: at the end of the ``prune`` stage, move the deterministic gates' bin counts
            by whole bins until the exact FLOPs on the constraint's lengths are as close to the
            target as they get (:meth:`ToP.calibrate`).
    """

    target_sparsity: float = 0.5
    bin_num: int = 50
    prune_layers: list[int] | None = None
    rank_distill_layers: list[int] | None = None
    epochs: float = 40.0
    lagrangian_warmup_epochs: float = 10.0
    start_sparsity: float = 0.0
    finetune_epochs: float = 0.0
    finetune_learning_rate: float | None = None
    reg_learning_rate: float = 0.02
    lambda_learning_rate: float | None = None
    droprate_init: float = 0.01
    layer_droprate_init: float = 0.99
    temperature: float = 2.0 / 3.0
    magical_number: float = 0.8
    log_alpha_range: list[float] | None = dataclasses.field(default_factory=lambda: list(LOG_ALPHA_RANGE))
    rank_distill_weight: float = 0.01
    rank_distill_floor: float = 0.01
    rank_topk: int | None = 20
    rank_weighting: str = "arp2"
    logit_distill_weight: float | None = None
    distill_temperature: float = 2.0
    task_loss_weight: float | None = None
    sparsity_average: str = "pooled"
    flops_lengths: str = "batch"
    calibrate: bool = True

    @classmethod
    def resolve(cls, values: Mapping[str, Any], num_layers: int, num_labels: int) -> "ToPSettings":
        """Validate ``values`` (unknown keys are errors) and fill the derived defaults."""
        reject_unknown_settings("top", values, cls)
        s = cls(**dict(values))
        regression = num_labels == 1
        if s.prune_layers is None:
            s.prune_layers = default_prune_layers(num_layers)
        if s.rank_distill_layers is None:
            s.rank_distill_layers = default_rank_distill_layers(num_layers)
        if s.lambda_learning_rate is None:
            s.lambda_learning_rate = s.reg_learning_rate
        if s.logit_distill_weight is None:
            s.logit_distill_weight = 0.0 if regression else 1.0
        if s.task_loss_weight is None:
            s.task_loss_weight = 0.0 if s.logit_distill_weight > 0 else 1.0
        s.prune_layers = _layer_list("prune_layers", s.prune_layers, num_layers)
        s.rank_distill_layers = _layer_list("rank_distill_layers", s.rank_distill_layers, num_layers)
        if s.log_alpha_range is not None:
            s.log_alpha_range = [float(v) for v in s.log_alpha_range]
            if len(s.log_alpha_range) != 2 or not s.log_alpha_range[0] < s.log_alpha_range[1]:
                raise ValueError(f"log_alpha_range must be [low, high] with low < high, got {s.log_alpha_range}")
        s._validate()
        return s

    def _validate(self) -> None:
        if not 0.0 < self.target_sparsity < 1.0:
            raise ValueError(
                f"target_sparsity must be in (0, 1), the fraction of FLOPs to remove (0.5 = 2x fewer), got {self.target_sparsity}"
            )
        if not 0.0 <= self.start_sparsity < 1.0:
            raise ValueError(f"start_sparsity must be in [0, 1), got {self.start_sparsity}")
        if int(self.bin_num) != self.bin_num or self.bin_num < 1:
            raise ValueError(f"bin_num must be a positive integer, got {self.bin_num}")
        self.bin_num = int(self.bin_num)
        if self.epochs <= 0:
            raise ValueError(f"epochs must be positive, got {self.epochs}")
        for key in ("lagrangian_warmup_epochs", "finetune_epochs", "rank_distill_weight", "rank_distill_floor",
                    "logit_distill_weight", "task_loss_weight"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be non-negative, got {getattr(self, key)}")
        positive = ("reg_learning_rate", "lambda_learning_rate", "temperature", "magical_number", "distill_temperature")
        if self.finetune_learning_rate is not None:
            positive += ("finetune_learning_rate",)
        for key in positive:
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be positive, got {getattr(self, key)}")
        for key in ("droprate_init", "layer_droprate_init"):
            if not 0.0 < getattr(self, key) < 1.0:
                raise ValueError(f"{key} must be in (0, 1), got {getattr(self, key)}")
        if self.rank_topk is not None and (int(self.rank_topk) != self.rank_topk or self.rank_topk < 2):
            raise ValueError(f"rank_topk must be an integer >= 2 or null, got {self.rank_topk}")
        if self.rank_weighting not in WEIGHTINGS:
            raise ValueError(f"rank_weighting must be one of {WEIGHTINGS}, got {self.rank_weighting!r}")
        if self.flops_lengths not in FLOPS_LENGTHS:
            raise ValueError(f"flops_lengths must be one of {FLOPS_LENGTHS}, got {self.flops_lengths!r}")
        if self.sparsity_average not in ("pooled", "per_example"):
            raise ValueError(f"sparsity_average must be 'pooled' or 'per_example', got {self.sparsity_average!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _layer_list(key: str, layers: Sequence[int], num_layers: int) -> list[int]:
    out = sorted({int(layer) for layer in layers})
    if len(out) != len(list(layers)):
        raise ValueError(f"{key} has duplicates: {list(layers)}")
    for layer in out:
        if not 0 <= layer < num_layers:
            raise ValueError(f"{key}: layer {layer} is outside 0..{num_layers - 1}")
    return out


# --------------------------------------------------------------------------------- bins


def rank_bins(scores: torch.Tensor, alive: torch.Tensor, bin_num: int) -> torch.Tensor:
    """Rank bin of every token slot.

    Args:
        scores: ``[B, n]`` importance (higher first); ties are broken by slot order.
        alive: ``[B, n]`` bool.
        bin_num: number of bins.

    Returns:
        ``[B, n]`` long: ``floor(rank * bin_num / a)`` for the ``a`` alive slots other than slot 0
        ([CLS]), ranked from 0; ``bin_num`` for slot 0 and for slots that are not alive.
    """
    candidates = alive.clone()
    candidates[:, 0] = False
    keyed = scores.detach().masked_fill(~candidates, float("-inf"))
    order = keyed.argsort(dim=1, descending=True, stable=True)
    rank = order.argsort(dim=1)
    count = candidates.sum(dim=1, keepdim=True).clamp_min(1)
    bins = torch.div(rank * bin_num, count, rounding_mode="floor")
    return torch.where(candidates, bins, torch.full_like(bins, bin_num))


def bin_occupancy(candidates: torch.Tensor, bin_num: int) -> torch.Tensor:
    """Number of candidates that fall into each rank bin (:func:`rank_bins`).

    With ``a`` candidates, bin ``b`` holds the ranks ``r`` with ``floor(r B / a) = b``, that is
    ``ceil((b + 1) a / B) - ceil(b a / B)`` of them (``B = bin_num``; some bins are empty when
    ``a < B``). A fractional ``a`` (an expected count) interpolates linearly between
    ``floor(a)`` and ``floor(a) + 1``, so the result is exact at integers and differentiable in
    ``a`` between them.

    Args:
        candidates: ``[...]`` float, non-negative.
        bin_num: ``B``.

    Returns:
        ``[..., B]`` float (same dtype as ``candidates``); sums to ``candidates``.
    """
    low = candidates.detach().floor()
    frac = candidates - low  # carries the gradient
    edges = torch.arange(bin_num + 1, device=candidates.device, dtype=torch.long)

    def occupancy(a: torch.Tensor) -> torch.Tensor:
        a = a.to(torch.long)[..., None]
        ceil = torch.div(edges * a + bin_num - 1, bin_num, rounding_mode="floor")  # ceil(b a / B)
        return (ceil[..., 1:] - ceil[..., :-1]).to(candidates.dtype)

    lower, upper = occupancy(low), occupancy(low + 1)
    return lower + frac[..., None] * (upper - lower)


def bin_keep_values(scores: torch.Tensor, alive: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Each slot's keep value: ``values[bin]`` for candidates, 1 for [CLS], 0 if not alive.

    Args:
        scores, alive: ``[B, n]``; values: ``[bin_num]`` keep value of every bin (differentiable).

    Returns:
        ``[B, n]`` float.
    """
    bins = rank_bins(scores, alive, values.shape[0])
    padded = torch.cat([values, values.new_ones(1)])  # index bin_num: [CLS] (and dead slots)
    keep = padded[bins]
    return torch.where(alive, keep, torch.zeros_like(keep))


# --------------------------------------------------------------------------------- gates


class ToPLayerGates(nn.Module):
    """The gates of one pruning layer: ``bins`` (one per rank bin) and ``layer`` (prune or not)."""

    def __init__(self, s: ToPSettings):
        super().__init__()
        common = dict(
            temperature=s.temperature,
            magical_number=s.magical_number,
            log_alpha_range=None if s.log_alpha_range is None else tuple(s.log_alpha_range),
        )
        self.bins = HardConcreteGate(s.bin_num, droprate_init=s.droprate_init, **common)
        self.layer = HardConcreteGate(1, droprate_init=s.layer_droprate_init, **common)
        #: Bins added to (or, if negative, removed from) ``round(bin_num * r)`` by the FLOPs
        #: calibration at the end of the ``prune`` stage (:meth:`ToP.calibrate`).
        self.register_buffer("bin_offset", torch.zeros((), dtype=torch.long))

    def constrain_(self) -> None:
        self.bins.constrain_()
        self.layer.constrain_()

    def sampled_keep(self) -> torch.Tensor:
        """``[bin_num]`` training keep values: sampled bins, straight-through binary layer gate."""
        z = self.bins.sample()
        g = self.layer.sample()
        g_hard = (g > 0).to(g.dtype)
        g = g_hard + (g - g.detach())  # forward: 0/1; backward: d/dg = 1
        return 1.0 - (1.0 - z) * g

    @torch.no_grad()
    def deterministic_keep(self) -> torch.Tensor:
        """``[bin_num]`` 0/1 evaluation keep values: the ``round(bin_num * r)`` bins with the
        largest ``log_alpha``, where ``r`` is the expected keep ratio (:meth:`keep_ratio`).

        The reference thresholds the layer gate and the bin gates separately; a layer gate with
        ``P(g > 0) = 0.7`` then prunes fully at evaluation although the constraint counted it at
        70%, and the evaluated FLOPs miss the target (measured: 59% sparsity for a 50% target on
        SST-2). Keeping the expected fraction of bins makes the deterministic model's FLOPs
        those the constraint was trained to, up to one bin per layer. ``bin_offset`` (set by the
        calibration, :meth:`ToP.calibrate`) shifts the count.
        """
        size = self.bins.log_alpha.shape[-1]
        num_keep = min(max(int(torch.round(self.keep_ratio() * size)) + int(self.bin_offset), 0), size)
        order = self.bins.log_alpha.detach().argsort(descending=True, stable=True)
        keep = torch.zeros(size, dtype=self.bins.log_alpha.dtype, device=self.bins.log_alpha.device)
        keep[order[:num_keep]] = 1.0
        return keep

    def bin_keep_probability(self, deterministic: bool = False) -> torch.Tensor:
        """``[bin_num]`` probability that each bin's tokens survive: ``1 - (1 - P(z_b>0)) P(g>0)``
        (a bin is dropped only when the layer prunes and the bin's gate is 0); the 0/1
        :meth:`deterministic_keep` values if ``deterministic``."""
        if deterministic:
            return self.deterministic_keep()
        return 1.0 - (1.0 - self.bins.prob_nonzero()) * self.layer.prob_nonzero()[0]

    def keep_ratio(self, deterministic: bool = False) -> torch.Tensor:
        """Expected fraction of bins kept (scalar): the mean of :meth:`bin_keep_probability`."""
        return self.bin_keep_probability(deterministic).mean()


class ToPGates(nn.Module):
    """Everything ToP learns besides the encoder: per pruning layer gates and the multipliers."""

    def __init__(self, s: ToPSettings):
        super().__init__()
        self.layers = nn.ModuleDict({str(layer): ToPLayerGates(s) for layer in s.prune_layers})
        self.lambda_1 = nn.Parameter(torch.zeros(()))
        self.lambda_2 = nn.Parameter(torch.zeros(()))

    def gate_parameters(self) -> list[nn.Parameter]:
        return list(self.layers.parameters())

    def lambda_parameters(self) -> list[nn.Parameter]:
        return [self.lambda_1, self.lambda_2]


# --------------------------------------------------------------------------------- selectors


class ToPSelector(TokenSelector):
    """A pruning layer's selector backed by the method's gates (or, without gates, a scorer).

    In training mode it samples the gates (after clamping their ``log_alpha``); in eval mode,
    or when ``frozen``, it uses the deterministic gates. ``aux`` carries the layer's token scores
    (with gradient, for ranking distillation), ``alive`` and ``positions``. Without gates it keeps
    every alive token and only records the scores (a ranking-distillation layer that does not
    prune).
    """

    def __init__(self, layer: int, gates: ToPLayerGates | None, frozen: bool = False):
        super().__init__()
        self.layer = layer
        self.gates = gates
        self.frozen = frozen

    def forward(self, ctx: LayerContext) -> KeepDecision:
        scores = attention_token_scores(ctx.attention_probs, ctx.alive)
        aux = {"scores": scores, "alive": ctx.alive, "positions": ctx.positions}
        if self.gates is None:
            return KeepDecision(hard=ctx.alive.clone(), aux=aux)
        if self.training and not self.frozen:
            self.gates.constrain_()
            values = self.gates.sampled_keep()
        else:
            values = self.gates.deterministic_keep()
        soft = bin_keep_values(scores, ctx.alive, values.to(scores.dtype))
        aux["bin_values"] = values
        return KeepDecision(hard=(soft > 0) & ctx.alive, soft=soft, aux=aux)


class ToPInferenceSelector(TokenSelector):
    """Deterministic selector rebuilt from :meth:`ToP.export`: keeps the tokens of the kept bins."""

    def __init__(self, layer: int, bin_mask: Sequence[int]):
        super().__init__()
        self.layer = layer
        self.register_buffer("bin_mask", torch.tensor([float(bool(v)) for v in bin_mask]))

    def forward(self, ctx: LayerContext) -> KeepDecision:
        scores = attention_token_scores(ctx.attention_probs, ctx.alive)
        keep = bin_keep_values(scores, ctx.alive, self.bin_mask.to(device=scores.device, dtype=scores.dtype))
        return KeepDecision(hard=(keep > 0) & ctx.alive, aux={"scores": scores})


# --------------------------------------------------------------------------------- losses


def logit_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Distillation of the task head's outputs (reference ``calculate_distillation_loss``).

    * classification ``[B, C]``: ``KL(softmax(t/T) || softmax(s/T)) * T^2``, batch mean;
    * regression ``[B, 1]``: mean squared error between the two outputs;
    * span extraction ``[B, L, 2]``: the KL above over positions for the start and the end logits,
      averaged; padding positions (``attention_mask`` 0) are excluded.
    """
    teacher_logits = teacher_logits.detach()
    if student_logits.dim() == 3:
        if attention_mask is not None:
            pad = ~attention_mask.bool()[..., None]
            student_logits = student_logits.masked_fill(pad, -1e4)
            teacher_logits = teacher_logits.masked_fill(pad, -1e4)
        losses = [
            logit_distillation_loss(student_logits[..., i], teacher_logits[..., i], temperature)
            for i in range(student_logits.shape[-1])
        ]
        return torch.stack(losses).mean()
    if student_logits.shape[-1] == 1:
        return F.mse_loss(student_logits, teacher_logits)
    t = temperature
    return F.kl_div(
        F.log_softmax(student_logits / t, dim=-1), F.softmax(teacher_logits / t, dim=-1), reduction="batchmean"
    ) * (t * t)


# --------------------------------------------------------------------------------- method


class ToP(PruningMethod):
    """ToP. Settings: see :class:`ToPSettings`. Stages: ``prune`` [, ``finetune``]."""

    name = "top"

    def __init__(self, model_config, settings: Mapping[str, Any] | None = None):
        super().__init__(model_config, settings)
        num_labels = int(getattr(model_config, "num_labels", 2))
        #: The validated settings with derived defaults filled in (:class:`ToPSettings`).
        self.resolved = ToPSettings.resolve(self.settings, self.dims.num_layers, num_labels)
        self.module: ToPGates = ToPGates(self.resolved)
        #: ``[N]`` real lengths the constraint uses when ``flops_lengths`` is not ``"batch"``
        #: (set by :meth:`prepare`).
        self.constraint_lengths: torch.Tensor | None = None

    def prepare(self, lengths: Mapping[str, torch.Tensor], head_kind: str) -> None:
        """Check that ``target_sparsity`` is reachable on the lengths the constraint uses, and
        keep those lengths unless ``flops_lengths`` is ``"batch"``.

        Raises:
            ValueError: naming the target, the reachable maximum and the prune layers.
        """
        c = self.resolved
        split = "train" if c.flops_lengths == "batch" else c.flops_lengths
        if split not in lengths:
            raise ValueError(f"ToP (flops_lengths={c.flops_lengths!r}) needs the {split!r} lengths")
        chosen = torch.as_tensor(lengths[split], dtype=torch.float64)
        most = self.max_sparsity(chosen, head_kind)
        if c.target_sparsity >= most - 0.01:
            raise ValueError(
                f"target_sparsity {c.target_sparsity} ({1 / (1 - c.target_sparsity):.2f}x fewer FLOPs) is out of "
                f"reach: with prune_layers {c.prune_layers} the most ToP can remove on the {split} inputs is "
                f"{most:.3f} ({1 / (1 - most):.2f}x, everything but [CLS] dropped), and the target needs a margin "
                "of 0.01 below it; lower target_sparsity or prune earlier layers"
            )
        self.constraint_lengths = None if c.flops_lengths == "batch" else chosen
        self._calibration = (chosen, head_kind)

    def on_stage_end(self, stage: str) -> None:
        if stage == "prune" and self.resolved.calibrate and getattr(self, "_calibration", None) is not None:
            self.calibrate(*self._calibration)

    @torch.no_grad()
    def calibrate(self, lengths: torch.Tensor, head_kind: str = "classification") -> float:
        """Project the deterministic gates onto the FLOPs target, a whole bin at a time.

        The Lagrangian keeps the expected sparsity near the target but oscillates around it,
        and the deterministic gates round each layer's keep ratio to whole bins. This greedy
        search changes one pruning layer's kept-bin count by one bin (the next in ``log_alpha``
        order) at a time, taking the change that brings the exact pooled sparsity on
        ``lengths`` ``[N]`` closest to ``target_sparsity``, until no change helps. The result is
        stored as each layer's ``bin_offset`` buffer, so export, evaluation and a resumed run
        all see it.

        Returns:
            The calibrated deterministic sparsity.
        """
        c = self.resolved
        layers = [self.module.layers[str(layer)] for layer in c.prune_layers]

        def sparsity() -> float:
            return float(self.sparsity(*self.expected_flops_at_lengths(lengths, head_kind, deterministic=True)))

        start = sparsity()
        current = abs(start - c.target_sparsity)
        for _ in range(c.bin_num * len(layers)):
            best = None
            for gates in layers:
                kept = int(gates.deterministic_keep().sum())
                for step in (-1, 1):
                    if not 0 <= kept + step <= c.bin_num:
                        continue
                    gates.bin_offset += step
                    candidate = abs(sparsity() - c.target_sparsity)
                    gates.bin_offset -= step
                    if candidate < current - 1e-12 and (best is None or candidate < best[0]):
                        best = (candidate, gates, step)
            if best is None:
                break
            current, gates, step = best
            gates.bin_offset += step
        achieved = sparsity()
        offsets = {layer: int(self.module.layers[str(layer)].bin_offset) for layer in c.prune_layers}
        logger.info("ToP calibration: deterministic sparsity %.4f -> %.4f (target %.4f); bin offsets %s",
                    start, achieved, c.target_sparsity, offsets)
        moved = sum(abs(offset) for offset in offsets.values())
        if moved > len(layers):
            logger.warning(
                "ToP calibration moved %d bins (more than one per pruning layer): the constraint had not settled "
                "by the end of pruning (deterministic sparsity %.4f for a target of %.4f), so the model was not "
                "trained with the gates it now has; train longer or add finetune_epochs", moved, start, c.target_sparsity,
            )
        return achieved

    # -- stages ---------------------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        out = [Stage("prune", float(self.resolved.epochs))]
        if self.resolved.finetune_epochs > 0:
            out.append(Stage("finetune", float(self.resolved.finetune_epochs), self.resolved.finetune_learning_rate))
        return out

    @staticmethod
    def _check_stage(stage: str) -> None:
        if stage not in STAGES:
            raise ValueError(f"ToP has stages {STAGES}, not {stage!r}")

    def selectors(self, stage: str) -> dict[int, TokenSelector]:
        self._check_stage(stage)
        frozen = stage == "finetune"
        out: dict[int, TokenSelector] = {
            layer: ToPSelector(layer, self.module.layers[str(layer)], frozen=frozen)
            for layer in self.resolved.prune_layers
        }
        if stage == "prune" and self._ranks():
            for layer in self.resolved.rank_distill_layers:
                out.setdefault(layer, ToPSelector(layer, None))
        return out

    def parameter_groups(self, stage: str) -> list[dict[str, Any]]:
        self._check_stage(stage)
        if stage != "prune":
            return []
        return [
            {"params": self.module.gate_parameters(), "lr": self.resolved.reg_learning_rate, "weight_decay": 0.0},
            {
                "params": self.module.lambda_parameters(),
                "lr": self.resolved.lambda_learning_rate,
                "weight_decay": 0.0,
                "maximize": True,
            },
        ]

    def teacher_signals(self, stage: str) -> tuple[str, ...]:
        self._check_stage(stage)
        signals = ("logits",) if self.resolved.logit_distill_weight > 0 else ()
        if stage == "prune" and self._ranks():
            signals += ("attentions",)
        return signals

    def task_loss_weight(self, stage: str) -> float:
        return float(self.resolved.task_loss_weight)

    def _ranks(self) -> bool:
        return self.resolved.rank_distill_weight > 0 and bool(self.resolved.rank_distill_layers)

    # -- constraint ---------------------------------------------------------------------------
    def keep_ratios(self, deterministic: bool = False) -> torch.Tensor:
        """``[num_layers]`` float64 expected fraction of candidates each layer keeps (1 where it
        cannot prune); differentiable unless ``deterministic``."""
        device = self.module.lambda_1.device
        ratios = [torch.ones((), dtype=torch.float64, device=device) for _ in range(self.dims.num_layers)]
        for layer in self.resolved.prune_layers:
            ratios[layer] = self.module.layers[str(layer)].keep_ratio(deterministic).to(torch.float64)
        return torch.stack(ratios)

    def expected_flops(
        self, attention_mask: torch.Tensor, head_kind: str = "classification", *, deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Expected and dense FLOPs of each example, with :mod:`top.flops`' formula.

        Tokens are followed layer by layer: ``m_{-1} = N`` (the real length) and, at a pruning
        layer with ``a = m_{l-1} - 1`` candidates, ``m_l = 1 + sum_b q_b occ_b(a)``, where ``q_b``
        is the probability that bin ``b`` survives (:meth:`ToPLayerGates.bin_keep_probability`)
        and ``occ_b(a)`` the exact number of candidates in bin ``b`` (:func:`bin_occupancy`);
        elsewhere ``m_l = m_{l-1}``. For deterministic gates this is the real count of every
        example at every length, so the evaluated FLOPs are exactly those the constraint saw.

        Args:
            attention_mask: ``[B, L]`` (1 for real tokens).
            head_kind: ``"classification"`` or ``"qa"`` (the head is counted as in
                :func:`top.flops.example_flops`).
            deterministic: use the evaluation gates (0/1) instead of their probabilities.

        Returns:
            ``(expected, dense)``, each ``[B]`` float64 FLOPs (2 x MACs); ``expected`` is
            differentiable in the gates unless ``deterministic``.
        """
        device = self.module.lambda_1.device
        n = attention_mask.to(device).sum(dim=1).to(torch.float64)  # [B]
        return self.expected_flops_at_lengths(n, head_kind, deterministic=deterministic)

    def expected_flops_at_lengths(
        self, lengths: torch.Tensor, head_kind: str = "classification", *, deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`expected_flops` from the real lengths ``[B]`` instead of an attention mask."""
        n = lengths.to(device=self.module.lambda_1.device, dtype=torch.float64)
        probabilities = {
            layer: self.module.layers[str(layer)].bin_keep_probability(deterministic).to(torch.float64)
            for layer in self.resolved.prune_layers
        }

        def survivors(layer: int, entering: torch.Tensor) -> torch.Tensor:
            candidates = (entering - 1.0).clamp_min(0.0)
            return 1.0 + (bin_occupancy(candidates, self.resolved.bin_num) * probabilities[layer]).sum(-1)

        return self._flops(n, head_kind, survivors)

    def max_sparsity(self, lengths: torch.Tensor, head_kind: str = "classification") -> float:
        """The largest pooled FLOPs sparsity ToP can reach with these ``prune_layers`` on inputs
        of real ``lengths`` ``[N]``: every pruning layer keeps only [CLS]. A ``target_sparsity``
        at or above it cannot be met (e.g. 4x on a 6-layer model whose first pruning layer is 1
        and whose inputs average 25 tokens: at most 3.9x)."""
        least, dense = self._flops(lengths.to(torch.float64), head_kind, lambda layer, entering: torch.ones_like(entering))
        return float(1.0 - least.sum() / dense.sum())

    def _flops(self, n: torch.Tensor, head_kind: str, survivors) -> tuple[torch.Tensor, torch.Tensor]:
        """FLOPs ``[B]`` when ``survivors(layer, entering)`` tokens leave each pruning layer, and
        the dense FLOPs at the same lengths ``n`` ``[B]``."""
        entering, kept = [], []
        current = n
        for layer in range(self.dims.num_layers):
            entering.append(current)
            if layer in self.resolved.prune_layers:
                current = survivors(layer, current)
            kept.append(current)
        entering_t, kept_t = torch.stack(entering, dim=1), torch.stack(kept, dim=1)  # [B, layers]
        full = n[:, None].expand_as(kept_t)
        head = head_macs(self.model_config, head_kind, n)
        expected = 2.0 * (encoder_macs(entering_t, kept_t, self.dims) + head)
        dense = 2.0 * (encoder_macs(full, full, self.dims) + head)
        return expected, dense

    def sparsity(self, expected: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """FLOPs sparsity of a batch: ``1 - expected / dense`` (pooled or per-example mean)."""
        if self.resolved.sparsity_average == "per_example":
            return 1.0 - (expected / dense).mean()
        return 1.0 - expected.sum() / dense.sum()

    def warmup_progress(self, step: int, total_steps: int) -> float:
        """Fraction of the Lagrangian warm-up done at ``step`` of a ``total_steps`` prune stage."""
        warmup_steps = total_steps * self.resolved.lagrangian_warmup_epochs / self.resolved.epochs
        if warmup_steps <= 0:
            return 1.0
        return min(1.0, step / warmup_steps)

    def target_sparsity(self, progress: float) -> float:
        """The ramped target: ``start + (target - start) * progress``."""
        c = self.resolved
        return c.start_sparsity + (c.target_sparsity - c.start_sparsity) * progress

    def lagrangian(self, sparsity: torch.Tensor, target: float) -> torch.Tensor:
        """``lambda_1 (s - t) + lambda_2 (s - t)^2``."""
        gap = sparsity.to(self.module.lambda_1.dtype) - target
        return self.module.lambda_1 * gap + self.module.lambda_2 * gap * gap

    # -- losses -------------------------------------------------------------------------------
    def rank_loss(self, student, teacher, attention_mask: torch.Tensor) -> torch.Tensor:
        """Ranking distillation summed over ``rank_distill_layers`` (see module docstring)."""
        if teacher is None or not getattr(teacher, "attentions", None):
            raise ValueError("ToP's ranking distillation needs the teacher's attentions (teacher_signals)")
        alive = attention_mask.to(teacher.attentions[-1].device).bool()
        teacher_scores = attention_token_scores(teacher.attentions[-1], alive)  # [B, L]
        total = student.logits.new_zeros(())
        for layer in self.resolved.rank_distill_layers:
            decision = student.decisions[layer]
            if decision is None or "scores" not in decision.aux:
                continue
            valid = decision.aux["alive"].clone()
            valid[:, 0] = False
            target = teacher_scores.gather(1, decision.aux["positions"])
            total = total + ranking_distillation_loss(
                decision.aux["scores"], target, valid,
                topk=self.resolved.rank_topk, weighting=self.resolved.rank_weighting,
            )
        return total

    def extra_loss(self, stage: str, step: StepContext) -> tuple[torch.Tensor | None, dict[str, float]]:
        self._check_stage(stage)
        c = self.resolved
        student = step.student
        mask = step.batch["attention_mask"].to(student.logits.device)
        total = student.logits.new_zeros(())
        logs: dict[str, float] = {}
        if stage == "prune":
            progress = self.warmup_progress(step.step, step.total_steps)
            target = self.target_sparsity(progress)
            head_kind = "qa" if student.logits.dim() == 3 else "classification"
            lengths = self.constraint_lengths
            if lengths is None:
                lengths = mask.sum(dim=1)
            expected, dense = self.expected_flops_at_lengths(lengths, head_kind)
            sparsity = self.sparsity(expected, dense)
            lagrangian = self.lagrangian(sparsity, target)
            total = total + lagrangian
            with torch.no_grad():
                hard_sparsity = self.sparsity(*self.expected_flops_at_lengths(lengths, head_kind, deterministic=True))
            logs.update(
                expected_sparsity=float(sparsity.detach()),
                deterministic_sparsity=float(hard_sparsity),
                target_sparsity=float(target),
                lagrangian_loss=float(lagrangian.detach()),
                lambda_1=float(self.module.lambda_1.detach()),
                lambda_2=float(self.module.lambda_2.detach()),
                expected_flops=float(expected.detach().mean()),
                dense_flops=float(dense.mean()),
            )
            if self._ranks():
                rank = self.rank_loss(student, step.teacher, mask)
                weight = c.rank_distill_weight * max(c.rank_distill_floor, 1.0 - progress)
                total = total + weight * rank
                logs.update(rank_loss=float(rank.detach()), rank_weight=float(weight))
        if c.logit_distill_weight > 0:
            if step.teacher is None:
                raise ValueError("ToP's logit distillation needs the teacher's logits (teacher_signals)")
            distill = logit_distillation_loss(student.logits, step.teacher.logits, c.distill_temperature, mask)
            total = total + c.logit_distill_weight * distill
            logs["distill_loss"] = float(distill.detach())
        return total, logs

    # -- export / inference ---------------------------------------------------------------------
    @torch.no_grad()
    def export(self) -> dict[str, Any]:
        """Plain JSON: per pruning layer whether it prunes and its deterministic 0/1 bin mask."""
        layers = []
        for layer in self.resolved.prune_layers:
            gates = self.module.layers[str(layer)]
            bin_mask = [int(v) for v in gates.deterministic_keep().tolist()]
            prunes = not all(bin_mask)
            layers.append(
                {
                    "layer": layer,
                    "prunes": prunes,
                    "bin_mask": bin_mask,
                    "kept_bins": sum(bin_mask),
                    "bin_keep_probability": [round(float(p), 6) for p in gates.bins.prob_nonzero().tolist()],
                    "layer_probability": round(float(gates.layer.prob_nonzero()[0]), 6),
                }
            )
        ratios = self.keep_ratios(deterministic=True)
        return {
            "format": EXPORT_FORMAT,
            "num_layers": self.dims.num_layers,
            "bin_num": self.resolved.bin_num,
            "layers": layers,
            "keep_ratios": [float(r) for r in ratios.tolist()],
            "cumulative_keep_ratios": [float(r) for r in torch.cumprod(ratios, 0).tolist()],
            "lambda_1": float(self.module.lambda_1.detach()),
            "lambda_2": float(self.module.lambda_2.detach()),
            "settings": self.resolved.to_dict(),
        }

    @classmethod
    def flops_target(cls, exported: Mapping[str, Any]) -> float | None:
        return float(exported["settings"]["target_sparsity"])

    @classmethod
    def inference_selectors(cls, exported: Mapping[str, Any], model_config) -> dict[int, TokenSelector]:
        if exported.get("format") != EXPORT_FORMAT:
            raise ValueError(f"not a ToP export (format {exported.get('format')!r}, expected {EXPORT_FORMAT!r})")
        num_layers = model_config.num_hidden_layers
        if int(exported["num_layers"]) != num_layers:
            raise ValueError(f"export is for {exported['num_layers']} layers, the model has {num_layers}")
        bin_num = int(exported["bin_num"])
        out: dict[int, TokenSelector] = {}
        for entry in exported["layers"]:
            layer, mask = int(entry["layer"]), list(entry["bin_mask"])
            if len(mask) != bin_num:
                raise ValueError(f"layer {layer}: bin_mask has {len(mask)} entries, bin_num is {bin_num}")
            if entry["prunes"] and not all(mask):  # a layer keeping every bin keeps every token
                out[layer] = ToPInferenceSelector(layer, mask)
        return out
