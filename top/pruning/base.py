"""The one interface every token-pruning method implements.

A *selector* sits at one encoder layer. After that layer's self-attention it sees a
:class:`LayerContext` and returns a :class:`KeepDecision` saying which tokens survive into the
layer's feed-forward block and every later layer. A *method* (:class:`PruningMethod`) owns the
selectors, its extra training loss, its parameter groups and the export of its learned
decisions to plain JSON, from which :meth:`PruningMethod.inference_selectors` rebuilds
deterministic selectors for evaluation and latency.

Conventions (docs/design.md, "One interface for all methods"):

* ``B`` is the batch, ``n`` the number of token slots entering the layer (in gather mode the
  padded width of the already-shrunk sequence), ``H`` heads.
* Slot 0 is always [CLS] and always kept; the encoder enforces this whatever a selector says.
* Decisions cascade: a token dropped at layer ``l`` is never seen again; the encoder ANDs every
  hard decision with the tokens still alive.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from top.measure.flops import ModelDims


@dataclass
class LayerContext:
    """What a selector sees at layer ``layer`` (0-based), after self-attention.

    Attributes:
        layer: index of the encoder layer.
        attention_probs: ``[B, H, n, n]`` softmax attention probabilities of this layer (keys
            that are not alive have probability exactly 0), or None when the selector declared
            it does not read them (:attr:`TokenSelector.needs_attention_probs`) and nothing else
            asked for them.
        hidden: ``[B, n, d]`` output of the attention sublayer (after its residual LayerNorm).
        alive: ``[B, n]`` bool, the tokens entering this layer (padding and earlier drops are
            False).
        positions: ``[B, n]`` long, each slot's position in the original input.
        input_lengths: ``[B]`` long, each example's real (unpadded) input length.
        token_scores: ``[B, n]``, :func:`attention_token_scores` of this layer's probabilities,
            filled by the encoder for selectors that read only that
            (``needs_attention_probs = False``); None otherwise. Read it through
            :meth:`attention_token_scores`, which computes it from ``attention_probs`` when the
            context was built by hand.
        all_alive: every slot is alive (no padding, nothing dropped before: batch 1 in gather
            mode), so a selector may skip masking; False when unknown.
        protected: ``[B, n]`` bool, the alive slots the encoder keeps whatever the selector
            decides (``protect_mask``, e.g. a SQuAD question with its separators; [CLS] is kept
            in any case); None when nothing is protected. A selector whose decision depends on
            how many tokens it may drop (ToP's rank bins) leaves them out of its candidates.
    """

    layer: int
    attention_probs: torch.Tensor | None
    hidden: torch.Tensor
    alive: torch.Tensor
    positions: torch.Tensor
    input_lengths: torch.Tensor
    token_scores: torch.Tensor | None = None
    all_alive: bool = False
    protected: torch.Tensor | None = None

    def attention_token_scores(self) -> torch.Tensor:
        """``[B, n]`` attention each token receives (:func:`attention_token_scores`)."""
        if self.token_scores is not None:
            return self.token_scores
        if self.attention_probs is None:
            raise ValueError(f"layer {self.layer}: the context has neither token_scores nor attention_probs")
        return attention_token_scores(self.attention_probs, self.alive)


@dataclass
class KeepDecision:
    """A selector's answer for one layer.

    Attributes:
        hard: ``[B, n]`` bool, tokens that survive (gather mode keeps exactly these).
        soft: ``[B, n]`` float or None. In mask mode the encoder multiplies each token's hidden
            state by it, which is how differentiable methods (LTP's soft stage, ToP's gates,
            PoWER-BERT's soft-extract) get gradients. It has no effect in gather mode.
        aux: anything the method's loss needs later (scores, gate values, ...), keyed by name.
        soft_on: where ``soft`` is applied in mask mode: ``"layer_output"`` (the default: the
            layer's output, after its feed-forward block, as LTP's soft mask) or
            ``"ffn_input"`` (the attention sublayer's output, after its LayerNorm, which then
            enters the feed-forward block and its residual, as PoWER-BERT's Soft-Extract does).
            The two are not equivalent: the feed-forward residual's LayerNorm renormalises a
            scaled input.
    """

    hard: torch.Tensor
    soft: torch.Tensor | None = None
    aux: dict[str, Any] = field(default_factory=dict)
    soft_on: str = "layer_output"


#: The places where :attr:`KeepDecision.soft` can be applied (see ``soft_on``).
SOFT_PLACEMENTS = ("layer_output", "ffn_input")


def attention_token_scores(attention_probs: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """Importance of each token as the attention it receives.

    Average over heads and over the alive queries of the probability mass each key receives
    (ToP §3.2; PoWER-BERT §3.2 sums instead of averaging, which ranks identically).

    Args:
        attention_probs: ``[B, H, n, n]`` (queries on dim 2, keys on dim 3).
        alive: ``[B, n]`` bool.

    Returns:
        ``[B, n]`` float; not-alive slots get ``-inf`` so that they rank last.
    """
    query_weight = alive.to(attention_probs.dtype)  # [B, n]
    received = attention_probs.mean(dim=1)  # [B, n_query, n_key]
    received = (received * query_weight[:, :, None]).sum(dim=1)
    received = received / query_weight.sum(dim=1, keepdim=True).clamp_min(1.0)
    return received.masked_fill(~alive, float("-inf"))


def keep_top_k(scores: torch.Tensor, alive: torch.Tensor, k: torch.Tensor, *, all_alive: bool = False) -> torch.Tensor:
    """Keep [CLS] plus the ``k - 1`` best-scoring other alive tokens of each example.

    A stable sort rather than ``topk``, so that ``k`` never has to be read on the host (no
    device synchronisation); equal scores keep the earlier slot.

    Args:
        scores: ``[B, n]``, higher is more important.
        alive: ``[B, n]`` bool.
        k: ``[B]`` long, how many tokens to keep per example, [CLS] included (clamped to
            ``[1, alive count]``).
        all_alive: every slot is known to be alive (:attr:`LayerContext.all_alive`): nothing
            to mask. Same result.

    Returns:
        ``[B, n]`` bool keep mask, a subset of ``alive`` that always contains slot 0.
    """
    scores = scores.clone() if all_alive else scores.masked_fill(~alive, float("-inf"))
    scores[:, 0] = float("inf")  # [CLS] first, whatever its score
    k = k.clamp_min(1) if all_alive else torch.minimum(k.clamp_min(1), alive.sum(dim=1))
    order = scores.argsort(dim=1, descending=True, stable=True)  # [B, n], best first
    wanted = torch.arange(order.shape[1], device=k.device)[None, :] < k[:, None]
    keep = torch.zeros_like(alive).scatter(1, order, wanted)
    return keep if all_alive else keep & alive


def reject_unknown_settings(method: str, values: Mapping[str, Any], settings_class: type) -> None:
    """Raise ``ValueError`` naming any key of ``values`` that is not a field of the dataclass
    ``settings_class`` (a typo in a config must not be silently ignored)."""
    known = {f.name for f in dataclasses.fields(settings_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"{method}: unknown settings {unknown}; known: {sorted(known) or 'none'} (a misspelt setting would be ignored: correct or remove it)"
        )


class TokenSelector(nn.Module, abc.ABC):
    """Decides, at one layer, which tokens survive. Subclasses implement :meth:`forward`.

    :attr:`needs_attention_probs` says what the selector reads from its :class:`LayerContext`:
    True (the default, safe for any selector): ``ctx.attention_probs``, the full ``[B, H, n, n]``
    probabilities, so the layer runs eager attention and keeps them. False: at most
    ``ctx.attention_token_scores()`` (the attention each token receives); the encoder then
    computes only those scores and passes ``attention_probs=None`` unless something else asked
    for the probabilities. Neither changes what a selector decides; it decides how much the
    layer computes (docs/design.md, "Latency protocol").
    """

    needs_attention_probs: ClassVar[bool] = True

    @abc.abstractmethod
    def forward(self, ctx: LayerContext) -> KeepDecision | None:
        """Return the decision for this layer, or None to keep every alive token."""

    def kept_slots(self, ctx: LayerContext) -> torch.Tensor | None:
        """Optional fast path for gather mode at batch 1 with every slot alive
        (``ctx.all_alive``, no protected tokens): the indices ``[n']`` of the slots to keep, in
        increasing order, exactly the slots :meth:`forward`'s decision keeps ([CLS], slot 0,
        included). The encoder then gathers them without a decision (its entry in
        ``EncoderOutput.decisions`` is None). None, the default: the encoder calls
        :meth:`forward`. Saves building a mask only to find its nonzero slots again; a test
        must show that both paths keep the same slots."""
        return None


#: What a method can ask the frozen teacher for (:meth:`PruningMethod.teacher_signals`).
TEACHER_SIGNALS = ("logits", "final_token_scores")


@dataclass
class TeacherSignals:
    """The frozen teacher's outputs on one training batch, only those the method asked for.

    The teacher runs in eval mode without selectors, so these depend only on each example's own
    tokens: the training loop may compute them once per example and reuse them every epoch
    (:class:`top.teacher.TeacherCache`). Slots past an example's real length are padding.

    Attributes:
        logits: ``"logits"``: the task head's outputs, ``[B, C]`` (classification, regression)
            or ``[B, L, 2]`` (span extraction; padding positions hold 0 when cached, so a loss
            must mask them); None when not asked for.
        final_token_scores: ``"final_token_scores"``: ``[B, L]``,
            :func:`attention_token_scores` of the last layer's attention probabilities (the
            attention each token receives, averaged over heads and real queries); ``-inf`` on
            padding. None when not asked for.
    """

    logits: torch.Tensor | None = None
    final_token_scores: torch.Tensor | None = None


@dataclass
class StepContext:
    """What a method's :meth:`PruningMethod.extra_loss` sees at one training step.

    Attributes:
        student: the trained model's :class:`top.encoder.EncoderOutput` (mask mode).
        teacher: the frozen fine-tuned teacher's :class:`TeacherSignals` on the same batch (eval
            mode, no selectors), or None when the method asks for no teacher signal.
        batch: the collated batch (``input_ids``, ``attention_mask``, ``labels``, ...).
        task_loss: the task loss (cross-entropy, or MSE for regression), a scalar.
        step: 0-based optimiser step within the stage; total_steps: steps in the stage.
    """

    student: Any
    teacher: Any
    batch: Mapping[str, torch.Tensor]
    task_loss: torch.Tensor
    step: int
    total_steps: int


@dataclass
class Stage:
    """One training stage of a method.

    Attributes:
        name: e.g. ``"prune"``, ``"soft"``, ``"hard"``, ``"search"``, ``"retrain"``.
        epochs: passes over the training data (may be fractional).
        learning_rate: the encoder's peak learning rate in this stage; None: the run's
            ``train.learning_rate``.
    """

    name: str
    epochs: float
    learning_rate: float | None = None


class PruningMethod(abc.ABC):
    """A token-pruning method: its stages, selectors, extra loss, parameter groups and export.

    Subclasses set :attr:`name` and implement the abstract methods. ``settings`` is the
    method's block of the workflow configuration (already validated by the schema).
    """

    name: ClassVar[str]
    #: Why the method cannot train with ``protect_mask`` (tokens kept whatever its selectors
    #: decide, SQuAD's ``qa.protect_question``), or None if it can. Configuration validation
    #: refuses such a method with that option before any job runs.
    protected_tokens_unsupported: ClassVar[str | None] = None
    #: The dataclass whose fields are the method's settings: any other key in its settings is
    #: refused (:meth:`check_setting_names`), before any job runs and again when it is built.
    settings_class: ClassVar[type | None] = None

    def __init__(self, model_config, settings: Mapping[str, Any] | None = None):
        self.model_config = model_config
        self.dims = ModelDims.from_config(model_config)
        self.settings = dict(settings or {})
        #: Every learned parameter and buffer of the method (gates, thresholds, multipliers).
        #: The training loop moves it to the device and saves it in checkpoints; selectors hold
        #: references to its submodules.
        self.module = nn.Module()

    @classmethod
    def check_setting_names(cls, values: Mapping[str, Any]) -> None:
        """Refuse keys of ``values`` that are not settings of the method (:attr:`settings_class`);
        needs no model, so configuration validation runs it for every method."""
        if cls.settings_class is not None:
            reject_unknown_settings(cls.name, values, cls.settings_class)

    # -- training ---------------------------------------------------------------------------
    @abc.abstractmethod
    def stages(self) -> list[Stage]:
        """The training stages, in order (an empty list: nothing to train)."""

    @abc.abstractmethod
    def selectors(self, stage: str) -> dict[int, TokenSelector]:
        """Selectors to install for training stage ``stage``, keyed by layer index."""

    def extra_loss(self, stage: str, step: StepContext) -> tuple[torch.Tensor | None, dict[str, float]]:
        """The method's loss added to the weighted task loss, and scalars to log (floats or 0-dim
        tensors; the loop reads them only at the steps it logs). Default: none."""
        return None, {}

    def task_loss_weight(self, stage: str) -> float:
        """Weight of the task loss in ``stage`` (distillation-heavy methods lower it)."""
        return 1.0

    def parameter_groups(self, stage: str) -> list[dict[str, Any]]:
        """Optimiser groups for the method's own parameters (each with its own ``lr``).

        They form the stage's second optimiser (the encoder has its own). A group may set
        ``"maximize": True`` (gradient ascent, e.g. Lagrange multipliers), ``"clip": False``
        (its gradients are never clipped; by default the method's groups are clipped together,
        apart from the model's, to ``max_grad_norm``) and a learning-rate schedule over the
        stage's steps: ``"schedule": "constant"`` (the default) or ``"linear"`` (linear warm-up
        over ``"warmup_ratio"`` of the steps, default the run's ``train.warmup_ratio``, then
        linear decay to 0: the encoder's schedule, :func:`top.optim.linear_factor`).
        Default: none.
        """
        return []

    def frozen_model_parameters(self, stage: str) -> tuple[str, ...]:
        """Name fragments of encoder parameters (as ``model.hf.named_parameters()`` spells them)
        that the optimiser leaves unchanged in ``stage``: a parameter whose name contains one is
        left out of the model's optimiser. Its gradient is still computed and counts in the
        model's clipping norm, as for a parameter a reference trainer leaves out of its
        optimiser. Default: none."""
        return ()

    def trains_model_weights(self, stage: str) -> bool:
        """Whether the encoder's own weights are updated in ``stage``. Default: yes."""
        return True

    def teacher_signals(self, stage: str) -> tuple[str, ...]:
        """What the method needs from the frozen teacher in ``stage``, any of
        :data:`TEACHER_SIGNALS` (the fields of :class:`TeacherSignals`): ``"logits"``,
        ``"final_token_scores"``. Only these are computed (and, with ``train.teacher_cache``,
        kept per example). Empty (the default): the teacher is not run."""
        return ()

    def prepare(self, lengths: Mapping[str, torch.Tensor], head_kind: str) -> None:
        """Hook before training: the real token counts of the ``"train"`` split (the rows the
        run trains on) and of the ``"validation"`` split, ``[N]`` long each (counts only, never
        texts or labels); ``head_kind`` is ``"classification"`` or ``"qa"``. When the inputs
        protect tokens (``protect_mask``, SQuAD's ``qa.protect_question``), ``lengths`` also
        holds ``"train_protected"`` and ``"validation_protected"``: ``[N]`` the tokens each
        example keeps whatever the method decides ([CLS] and its protected tokens).

        Methods with a FLOPs constraint check here that their target is reachable (raising a
        ``ValueError`` before any training) and may evaluate the constraint on these counts.
        It runs again when a run resumes, so anything it sets need not be checkpointed.
        Default: nothing."""

    def on_stage_end(self, stage: str) -> None:
        """Hook after a stage finishes (e.g. derive a configuration from learned weights).

        Anything it derives must be stored in :attr:`module` (a buffer), because a run resumed
        from a checkpoint after this stage restores :attr:`module` and does not call the hook
        again."""

    def compare_stage_end(self, stage: str) -> bool:
        """Whether the dev record (:mod:`top.selection`) should score the decisions both before
        and after :meth:`on_stage_end` for ``stage``, to show what the hook changed (ToP: its
        calibration). One extra dev evaluation per run. Default: no."""
        return False

    # -- export / inference ---------------------------------------------------------------------
    @abc.abstractmethod
    def export(self) -> dict[str, Any]:
        """The learned decisions as plain JSON-serialisable data."""

    @classmethod
    def flops_target(cls, exported: Mapping[str, Any]) -> float | None:
        """The FLOPs sparsity (fraction of dense FLOPs removed) the method was trained to meet,
        read from its export; None for methods without a FLOPs constraint."""
        return None

    @classmethod
    @abc.abstractmethod
    def inference_selectors(cls, exported: Mapping[str, Any], model_config) -> dict[int, TokenSelector]:
        """Deterministic selectors rebuilt from :meth:`export`'s output."""
