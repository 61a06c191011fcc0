"""ToP's settings (:class:`ToPSettings`), with their defaults and checks in one place; the
method is described in :mod:`top.pruning.top`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from top.pruning.base import reject_unknown_settings
from top.pruning.l0 import LOG_ALPHA_RANGE
from top.pruning.ranking import PADDINGS, WEIGHTINGS

EXPORT_FORMAT = "top-bins/1"
STAGES = ("prune", "finetune")
FLOPS_LENGTHS = ("batch", "train", "validation")
BIN_ORDERS = ("learned", "ranked")


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
            Unused with ``layer_gates: false``.
        layer_gates: learn a gate per pruning layer that decides whether it prunes at all (the
            coarse step of ToP §3.3's coarse-to-fine pruning; the reference's ``pruner_z``).
            ``false`` is an ablation: only the rank-bin gates are learned, every layer of
            ``prune_layers`` always prunes with them, and the constraint, the evaluation gates
            and the export all use ``P(g > 0) = 1``.
        bin_order: which rank bins a layer keeps. ``"learned"`` (the reference): every bin has
            its own gate, so any bins may survive, the best-ranked among the dropped ones.
            ``"ranked"`` (an ablation): the gates only count the bins that survive, and those
            are always the best-ranked (:class:`~top.pruning.top.gates.ToPLayerGates`), as
            static top-k and PoWER-BERT keep the highest-scored tokens.
        temperature: hard-concrete temperature ``beta``.
        magical_number: scale in the deterministic mask (ordering only).
        log_alpha_range: ``[low, high]`` clamp of ``log_alpha`` (reference: ``[log 1e-2,
            log 1e2]``); None disables it.
        rank_distill_weight: weight of the ranking loss (``distill_ce_loss_alpha`` in the
            reference, grid 1e-2 .. 1e-5). 0 switches ranking distillation off (an ablation of
            ToP §3.2): no ranking loss, no scoring-only selectors on ``rank_distill_layers``, and
            the teacher's final-layer token scores are not computed (only its logits).
        rank_distill_floor: the ranking weight decays as ``max(floor, 1 - warmup progress)``.
        rank_topk: teacher's top-k tokens ranked per example (None: all).
        rank_weighting: ``"arp2"`` (reference) or ``"ndcg2"``.
        rank_padding: ``"reference"``: each batch's lists have ``K = min(rank_topk, the longest
            input's tokens but [CLS])`` slots, a shorter row's filled with padding slots of relevance 0 and
            score 0, and every row's loss is divided by ``K^2`` (the reference's
            ``LambdaARPLoss2`` branch of ``trainer.py``); ``"own_tokens"``: a row ranks only its
            own ``k`` tokens, divided by ``k^2`` (:func:`~top.pruning.ranking.ranking_distillation_loss`).
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
        freeze_embeddings: leave the encoder's embeddings (every parameter whose name contains
            ``embeddings``) out of the optimiser in both stages, as the reference trainer does
            (``freeze_keywords`` in ``create_optimizer_and_scheduler``, used for pruning and for
            the fine-tuning after it); their gradients still count in the clipping norm.
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
    layer_gates: bool = True
    bin_order: str = "learned"
    temperature: float = 2.0 / 3.0
    magical_number: float = 0.8
    log_alpha_range: list[float] | None = dataclasses.field(default_factory=lambda: list(LOG_ALPHA_RANGE))
    rank_distill_weight: float = 0.01
    rank_distill_floor: float = 0.01
    rank_topk: int | None = 20
    rank_weighting: str = "arp2"
    rank_padding: str = "reference"
    logit_distill_weight: float | None = None
    distill_temperature: float = 2.0
    task_loss_weight: float | None = None
    sparsity_average: str = "pooled"
    flops_lengths: str = "batch"
    calibrate: bool = True
    freeze_embeddings: bool = True

    @classmethod
    def resolve(cls, values: Mapping[str, Any], num_layers: int, num_labels: int) -> ToPSettings:
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
            raise ValueError(f"target_sparsity must be in (0, 1), the fraction of FLOPs to remove (0.5 = 2x fewer), got {self.target_sparsity}")
        if not 0.0 <= self.start_sparsity < 1.0:
            raise ValueError(f"start_sparsity must be in [0, 1), got {self.start_sparsity}")
        if int(self.bin_num) != self.bin_num or self.bin_num < 1:
            raise ValueError(f"bin_num must be a positive integer, got {self.bin_num}")
        self.bin_num = int(self.bin_num)
        if self.epochs <= 0:
            raise ValueError(f"epochs must be positive, got {self.epochs}")
        for key in (
            "lagrangian_warmup_epochs",
            "finetune_epochs",
            "rank_distill_weight",
            "rank_distill_floor",
            "logit_distill_weight",
            "task_loss_weight",
        ):
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
        if self.rank_padding not in PADDINGS:
            raise ValueError(f"rank_padding must be one of {PADDINGS}, got {self.rank_padding!r}")
        for key in ("calibrate", "freeze_embeddings", "layer_gates"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{key} must be true or false, got {getattr(self, key)!r}")
        if self.bin_order not in BIN_ORDERS:
            raise ValueError(f"bin_order must be one of {BIN_ORDERS}, got {self.bin_order!r}")
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
