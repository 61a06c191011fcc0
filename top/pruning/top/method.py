"""The ToP method (:mod:`top.pruning.top` describes it): logit and ranking distillation, the
expected-FLOPs constraint with its Lagrangian, end-of-prune calibration, and the export that
evaluation rebuilds deterministic selectors from (:mod:`top.pruning.top.selectors`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from top.measure.flops import encoder_macs, head_macs
from top.measure.flops import head_kind as config_head_kind
from top.pruning.base import (
    PruningMethod,
    Stage,
    StepContext,
    TokenSelector,
)
from top.pruning.ranking import ranking_distillation_loss
from top.pruning.top.gates import ToPGates, bin_occupancy
from top.pruning.top.selectors import ToPInferenceSelector, ToPSelector, protected_counts
from top.pruning.top.settings import EXPORT_FORMAT, STAGES, ToPSettings

logger = logging.getLogger(__name__)


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
        losses = [logit_distillation_loss(student_logits[..., i], teacher_logits[..., i], temperature) for i in range(student_logits.shape[-1])]
        return torch.stack(losses).mean()
    if student_logits.shape[-1] == 1:
        return F.mse_loss(student_logits, teacher_logits)
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.softmax(teacher_logits / t, dim=-1), reduction="batchmean") * (t * t)


# --------------------------------------------------------------------------------- method


class ToP(PruningMethod):
    """ToP. Settings: see :class:`ToPSettings`. Stages: ``prune`` [, ``finetune``]."""

    name = "top"
    settings_class = ToPSettings

    def __init__(self, model_config, settings: Mapping[str, Any] | None = None):
        super().__init__(model_config, settings)
        num_labels = int(getattr(model_config, "num_labels", 2))
        #: The validated settings with derived defaults filled in (:class:`ToPSettings`).
        self.resolved = ToPSettings.resolve(self.settings, self.dims.num_layers, num_labels)
        self.module: ToPGates = ToPGates(self.resolved)
        #: ``[N]`` real lengths the constraint uses when ``flops_lengths`` is not ``"batch"``
        #: (set by :meth:`prepare`).
        self.constraint_lengths: torch.Tensor | None = None
        #: ``"classification"`` or ``"qa"``: the head the constraint counts (from the saved
        #: config's architecture; :meth:`prepare` sets the task's).
        self.head_kind: str = config_head_kind(model_config)
        #: The lengths that :meth:`calibrate` meets the target on, at the end of ``prune``
        #: (set by :meth:`prepare`; without it there is no calibration).
        self.calibration_lengths: torch.Tensor | None = None
        #: Whether the inputs protect tokens (``protect_mask``, SQuAD's ``qa.protect_question``):
        #: set by :meth:`prepare` when it receives protected counts; exported, so that evaluation
        #: refuses inputs that disagree.
        self.protected_tokens: bool = False
        #: ``[N]`` tokens each of :attr:`constraint_lengths`' examples keeps whatever the gates
        #: say ([CLS] and the protected ones; :func:`protected_counts`), or None (only [CLS]).
        self.constraint_protected: torch.Tensor | None = None
        #: The same for :attr:`calibration_lengths`.
        self.calibration_protected: torch.Tensor | None = None

    def prepare(self, lengths: Mapping[str, torch.Tensor], head_kind: str) -> None:
        """Check that ``target_sparsity`` is reachable on the lengths the constraint uses, and
        keep those lengths unless ``flops_lengths`` is ``"batch"``.

        ``lengths`` holds ``"train"`` and ``"validation"`` ``[N]`` real lengths and, when the
        inputs protect tokens (``qa.protect_question``), ``"train_protected"`` and
        ``"validation_protected"``: ``[N]`` tokens each example keeps whatever the gates say
        ([CLS] and its ``protect_mask`` tokens, :func:`protected_counts`). The constraint and the
        calibration then count those as kept in every layer, and only the rest as candidates.

        Raises:
            ValueError: naming the target, the reachable maximum and the prune layers; or
                protected counts that do not match the lengths.
        """
        c = self.resolved
        split = "train" if c.flops_lengths == "batch" else c.flops_lengths
        if split not in lengths:
            raise ValueError(f"ToP (flops_lengths={c.flops_lengths!r}) needs the {split!r} lengths")
        chosen = torch.as_tensor(lengths[split], dtype=torch.float64)
        self.protected_tokens = f"{split}_protected" in lengths
        protected = None
        if self.protected_tokens:
            protected = torch.as_tensor(lengths[f"{split}_protected"], dtype=torch.float64)
            if protected.shape != chosen.shape or bool((protected < 1).any()) or bool((protected > chosen).any()):
                raise ValueError(
                    f"ToP: {split}_protected must hold, for each of the {chosen.numel()} {split} examples, the number of "
                    f"tokens it protects ([CLS] included: between 1 and its length); got shape {tuple(protected.shape)}"
                )
        most = self.max_sparsity(chosen, head_kind, protected)
        if c.target_sparsity >= most - 0.01:
            kept = "everything but [CLS] and the protected tokens" if protected is not None else "everything but [CLS]"
            raise ValueError(
                f"target_sparsity {c.target_sparsity} ({1 / (1 - c.target_sparsity):.2f}x fewer FLOPs) is out of "
                f"reach: with prune_layers {c.prune_layers} the most ToP can remove on the {split} inputs is "
                f"{most:.3f} ({1 / (1 - most):.2f}x, {kept} dropped), and the target needs a margin "
                "of 0.01 below it; lower target_sparsity or prune earlier layers"
            )
        batch = c.flops_lengths == "batch"
        self.constraint_lengths = None if batch else chosen
        self.constraint_protected = None if batch else protected
        self.calibration_lengths = chosen
        self.calibration_protected = protected
        self.head_kind = head_kind

    def on_stage_end(self, stage: str) -> None:
        if stage == "prune" and self.resolved.calibrate and self.calibration_lengths is not None:
            self.calibrate(self.calibration_lengths, self.head_kind, self.calibration_protected)

    def compare_stage_end(self, stage: str) -> bool:
        """The dev record keeps the metric and FLOPs before and after the calibration."""
        return stage == "prune" and self.resolved.calibrate and self.calibration_lengths is not None

    @torch.no_grad()
    def calibrate(self, lengths: torch.Tensor, head_kind: str = "classification", protected: torch.Tensor | None = None) -> float:
        """Project the deterministic gates onto the FLOPs target, a whole bin at a time.

        The Lagrangian keeps the expected sparsity near the target but oscillates around it,
        and the deterministic gates round each layer's keep ratio to whole bins. This greedy
        search changes one pruning layer's kept-bin count by one bin (the next in ``log_alpha``
        order) at a time, taking the change that brings the exact pooled sparsity on
        ``lengths`` ``[N]`` (``protected``: ``[N]`` tokens each keeps in any case, or None:
        only [CLS]) closest to ``target_sparsity``, until no change helps. The result is
        stored as each layer's ``bin_offset`` buffer, so export, evaluation and a resumed run
        all see it.

        Returns:
            The calibrated deterministic sparsity.
        """
        c = self.resolved
        layers = [self.module.layers[str(layer)] for layer in c.prune_layers]

        def sparsity() -> float:
            return float(self.sparsity(*self.expected_flops_at_lengths(lengths, head_kind, deterministic=True, protected=protected)))

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
        logger.info("ToP calibration: deterministic sparsity %.4f -> %.4f (target %.4f); bin offsets %s", start, achieved, c.target_sparsity, offsets)
        moved = sum(abs(offset) for offset in offsets.values())
        if moved > len(layers):
            logger.warning(
                "ToP calibration moved %d bins (more than one per pruning layer): the constraint had not settled "
                "by the end of pruning (deterministic sparsity %.4f for a target of %.4f), so the model was not "
                "trained with the gates it now has; train longer or add finetune_epochs",
                moved,
                start,
                c.target_sparsity,
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
            layer: ToPSelector(layer, self.module.layers[str(layer)], frozen=frozen) for layer in self.resolved.prune_layers
        }
        if stage == "prune" and self._ranks():
            for layer in self.resolved.rank_distill_layers:
                out.setdefault(layer, ToPSelector(layer, None))
        return out

    def parameter_groups(self, stage: str) -> list[dict[str, Any]]:
        self._check_stage(stage)
        if stage != "prune":
            return []
        # The reference clips only the model's gradients (clip_grad_norm_(model.parameters())),
        # never the gates' or the multipliers'.
        return [
            {"params": self.module.gate_parameters(), "lr": self.resolved.reg_learning_rate, "weight_decay": 0.0, "clip": False},
            {
                "params": self.module.lambda_parameters(),
                "lr": self.resolved.lambda_learning_rate,
                "weight_decay": 0.0,
                "maximize": True,
                "clip": False,
            },
        ]

    def frozen_model_parameters(self, stage: str) -> tuple[str, ...]:
        self._check_stage(stage)
        return ("embeddings",) if self.resolved.freeze_embeddings else ()

    def teacher_signals(self, stage: str) -> tuple[str, ...]:
        self._check_stage(stage)
        signals = ("logits",) if self.resolved.logit_distill_weight > 0 else ()
        if stage == "prune" and self._ranks():
            signals += ("final_token_scores",)
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
        self,
        attention_mask: torch.Tensor,
        head_kind: str = "classification",
        *,
        deterministic: bool = False,
        protect_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Expected and dense FLOPs of each example, with :mod:`top.measure.flops`' formula
        (ToP §3.3, the FLOPs constraint).

        Tokens are followed layer by layer: ``m_{-1} = N`` (the real length) and, at a pruning
        layer with ``a = m_{l-1} - p`` candidates, ``m_l = p + sum_b q_b occ_b(a)``, where ``p``
        is the number of tokens the example keeps in any case ([CLS], and with ``protect_mask``
        its protected tokens), ``q_b`` the probability that bin ``b`` survives
        (:meth:`ToPLayerGates.bin_keep_probability`) and ``occ_b(a)`` the exact number of
        candidates in bin ``b`` (:func:`bin_occupancy`); elsewhere ``m_l = m_{l-1}``. For
        deterministic gates this is the real count of every example at every length, so the
        evaluated FLOPs are exactly those the constraint saw.

        Args:
            attention_mask: ``[B, L]`` (1 for real tokens).
            head_kind: ``"classification"`` or ``"qa"`` (the head is counted as in
                :func:`top.measure.flops.example_flops`).
            deterministic: use the evaluation gates (0/1) instead of their probabilities.
            protect_mask: ``[B, L]`` (1 for tokens the encoder never drops) or None.

        Returns:
            ``(expected, dense)``, each ``[B]`` float64 FLOPs (2 x MACs); ``expected`` is
            differentiable in the gates unless ``deterministic``.
        """
        device = self.module.lambda_1.device
        attention_mask = attention_mask.to(device)
        n = attention_mask.sum(dim=1).to(torch.float64)  # [B]
        protected = None if protect_mask is None else protected_counts(attention_mask, protect_mask.to(device)).to(torch.float64)
        return self.expected_flops_at_lengths(n, head_kind, deterministic=deterministic, protected=protected)

    def expected_flops_at_lengths(
        self,
        lengths: torch.Tensor,
        head_kind: str = "classification",
        *,
        deterministic: bool = False,
        protected: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`expected_flops` from the real lengths ``[B]`` instead of an attention mask;
        ``protected``: ``[B]`` tokens each example keeps in any case ([CLS] included), or None
        (only [CLS])."""
        device = self.module.lambda_1.device
        n = lengths.to(device=device, dtype=torch.float64)
        fixed = torch.ones_like(n) if protected is None else protected.to(device=device, dtype=torch.float64)
        probabilities = {
            layer: self.module.layers[str(layer)].bin_keep_probability(deterministic).to(torch.float64) for layer in self.resolved.prune_layers
        }

        def survivors(layer: int, entering: torch.Tensor) -> torch.Tensor:
            candidates = (entering - fixed).clamp_min(0.0)
            return fixed + (bin_occupancy(candidates, self.resolved.bin_num) * probabilities[layer]).sum(-1)

        return self._flops(n, head_kind, survivors)

    def max_sparsity(self, lengths: torch.Tensor, head_kind: str = "classification", protected: torch.Tensor | None = None) -> float:
        """The largest pooled FLOPs sparsity ToP can reach with these ``prune_layers`` on inputs
        of real ``lengths`` ``[N]``: every pruning layer keeps only [CLS] (and the ``protected``
        ``[N]`` tokens of each example, when given). A ``target_sparsity`` at or above it cannot
        be met (e.g. 4x on a 6-layer model whose first pruning layer is 1 and whose inputs
        average 25 tokens: at most 3.9x)."""
        lengths = lengths.to(torch.float64)
        fixed = torch.ones_like(lengths) if protected is None else protected.to(torch.float64)
        least, dense = self._flops(lengths, head_kind, lambda layer, entering: torch.minimum(fixed, entering))
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

    def scheduled_target(self, progress: float) -> float:
        """The ramped target: ``start + (target - start) * progress``."""
        c = self.resolved
        return c.start_sparsity + (c.target_sparsity - c.start_sparsity) * progress

    def lagrangian(self, sparsity: torch.Tensor, target: float) -> torch.Tensor:
        """``lambda_1 (s - t) + lambda_2 (s - t)^2``."""
        gap = sparsity.to(self.module.lambda_1.dtype) - target
        return self.module.lambda_1 * gap + self.module.lambda_2 * gap * gap

    # -- losses -------------------------------------------------------------------------------
    def rank_loss(self, student, teacher, attention_mask: torch.Tensor, protect_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Ranking distillation (ToP §3.2) summed over ``rank_distill_layers`` (see module
        docstring).

        ``teacher``: the teacher's :class:`~top.pruning.base.TeacherSignals` with
        ``final_token_scores`` ``[B, L]`` (its last layer's token scores); ``attention_mask``
        and ``protect_mask`` (or None) ``[B, L]``. Only the tokens the gates may drop are
        ranked: not [CLS], and not the protected tokens, which no rank bin holds."""
        teacher_scores = getattr(teacher, "final_token_scores", None)
        if teacher_scores is None:
            raise ValueError("ToP's ranking distillation needs the teacher's final_token_scores (teacher_signals)")
        candidates = attention_mask.to(teacher_scores.device).bool()
        if protect_mask is not None:
            candidates = candidates & ~protect_mask.to(teacher_scores.device).bool()
        candidates[:, 0] = False
        longest = int(candidates.sum(dim=1).max())  # the reference's K before the top-k cap: real tokens but [CLS] (and protected ones)
        total = student.logits.new_zeros(())
        for layer in self.resolved.rank_distill_layers:
            decision = student.decisions[layer]
            if decision is None or "scores" not in decision.aux:
                continue
            valid = decision.aux["alive"].clone()
            valid[:, 0] = False
            if decision.aux.get("protected") is not None:
                valid &= ~decision.aux["protected"]
            target = teacher_scores.gather(1, decision.aux["positions"])
            total = total + ranking_distillation_loss(
                decision.aux["scores"],
                target,
                valid,
                topk=self.resolved.rank_topk,
                weighting=self.resolved.rank_weighting,
                padding=self.resolved.rank_padding,
                list_length=longest,
            )
        return total

    def extra_loss(self, stage: str, step: StepContext) -> tuple[torch.Tensor | None, dict[str, float]]:
        self._check_stage(stage)
        c = self.resolved
        student = step.student
        protect = step.batch.get("protect_mask")
        if (protect is not None) != self.protected_tokens:
            raise ValueError(
                f"ToP was prepared {'with' if self.protected_tokens else 'without'} protected token counts, but the training batch "
                f"{'has' if protect is not None else 'has no'} protect_mask: prepare() must receive the '<split>_protected' counts "
                "exactly when the inputs protect tokens (qa.protect_question, glue.protect_separators), so that the FLOPs constraint counts them as kept"
            )
        mask = step.batch["attention_mask"].to(student.logits.device)
        if protect is not None:
            protect = protect.to(mask.device)
        total = student.logits.new_zeros(())
        logs: dict[str, float] = {}
        if stage == "prune":
            progress = self.warmup_progress(step.step, step.total_steps)
            target = self.scheduled_target(progress)
            lengths, protected = self.constraint_lengths, self.constraint_protected
            if lengths is None:
                lengths = mask.sum(dim=1)
                protected = None if protect is None else protected_counts(mask, protect)
            expected, dense = self.expected_flops_at_lengths(lengths, self.head_kind, protected=protected)
            sparsity = self.sparsity(expected, dense)
            lagrangian = self.lagrangian(sparsity, target)
            total = total + lagrangian
            with torch.no_grad():
                hard_sparsity = self.sparsity(*self.expected_flops_at_lengths(lengths, self.head_kind, deterministic=True, protected=protected))
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
                rank = self.rank_loss(student, step.teacher, mask, protect)
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
        """Plain JSON: per pruning layer whether it prunes and its deterministic 0/1 bin mask
        (with the gates' probabilities: ``layer_probability`` is 1 with ``layer_gates: false``),
        and whether the run protected tokens (``protected_tokens``: evaluation must then pass
        the same ``protect_mask``, :class:`ToPInferenceSelector`)."""
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
                    "layer_probability": round(float(gates.layer_probability()), 6),
                }
            )
        ratios = self.keep_ratios(deterministic=True)
        return {
            "format": EXPORT_FORMAT,
            "num_layers": self.dims.num_layers,
            "bin_num": self.resolved.bin_num,
            "protected_tokens": self.protected_tokens,
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
        protected = bool(exported.get("protected_tokens", False))
        out: dict[int, TokenSelector] = {}
        for entry in exported["layers"]:
            layer, mask = int(entry["layer"]), list(entry["bin_mask"])
            if len(mask) != bin_num:
                raise ValueError(f"layer {layer}: bin_mask has {len(mask)} entries, bin_num is {bin_num}")
            if entry["prunes"] and not all(mask):  # a layer keeping every bin keeps every token
                out[layer] = ToPInferenceSelector(layer, mask, protected)
        return out
