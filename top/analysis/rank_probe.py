"""Can ranking distillation teach a layer the teacher's final-layer token order (ToP §3.2)?

ToP's ranking loss (:func:`top.pruning.ranking.ranking_distillation_loss`) is meant to make the
token scores of an early layer order the tokens as the teacher's last layer does, so that the
layer prunes the tokens the finished model will not need. Its value says little about whether
it does (scores of order ``1/n`` keep the pairwise logistic loss near its all-ties value), so
this probe measures the order itself, apart from everything else ToP trains at once.

A copy of the teacher is trained on a sample of training features with

* the ranking loss at one layer alone (``task_loss: False``, ``distill_weight: 0``; only the
  layers up to that one are kept, since nothing above it reaches the loss), or
* the task loss plus the ranking loss (``task_loss: True``; ``rank_weight: 0`` gives the task
  loss alone, the drift a fine-tune causes by itself), or
* ToP's logit distillation (``distill_weight``; the teacher's outputs at ToP's temperature,
  which ToP's pruning stage trains on instead of the task loss), with or without the others,

without pruning or, to separate what pruning during training does from what ToP's gates do,
with a fixed schedule (``keep_ratios``, one ratio of the input length per layer, as top-k's)
that keeps each layer's best-scored tokens (``drop: scores``) or as many at random
(``drop: random``, about what ToP's rank bins, dropped anywhere in the ranking, amount to).
After every epoch that layer's scores (attention received, every token kept) are compared with
the teacher's last layer on dev features (:func:`top.analysis.squad_tokens.final_layer_agreement`,
over the tokens the loss ranks: every real token but [CLS]). The loss, its list (the teacher's
top ``rank_topk`` tokens) and its padding are ToP's own; the optimiser is AdamW with the run's
learning rate, as the encoder's in ToP's pruning stage.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from top.analysis.squad_tokens import final_layer_agreement, trace_token_scores
from top.encoder import PrunableModel
from top.pruning.base import KeepDecision, LayerContext, TokenSelector, attention_token_scores, keep_top_k
from top.pruning.ranking import ranking_distillation_loss
from top.pruning.top.method import logit_distillation_loss
from top.pruning.top.settings import ToPSettings
from top.pruning.topk import TopKSelector, schedule_selectors, validate_schedule
from top.train import model_inputs, task_loss

log = logging.getLogger(__name__)


@dataclass
class ProbeSettings:
    """One probe run.

    Attributes:
        layer: the layer whose scores learn the ranking (0-based; ToP's default for six
            layers: 1).
        epochs: passes over the training sample; the agreement is measured after each.
        batch_size, learning_rate: AdamW's batches and rate (no warm-up, no decay).
        rank_weight: the ranking loss's weight beside the task loss (alone, Adam makes the
            weight irrelevant).
        task_loss: train the task loss too (the whole model), or the ranking loss alone.
        rank_topk: the teacher's best tokens per feature in the loss's list.
        seed: the order of the training sample.
        distill_weight: the weight of ToP's logit distillation
            (:func:`~top.pruning.top.method.logit_distillation_loss`); above 0 the whole model
            trains.
        distill_temperature: its temperature (ToP's default).
        keep_ratios: a pruning schedule applied while training (one ratio of the input length
            per layer, 1 keeps every token), or None: no pruning. The measurement keeps every
            token whatever it is.
        drop: which tokens the schedule keeps: ``scores``, each layer's best-scored (top-k), or
            ``random``, as many chosen at random.
    """

    layer: int = 1
    epochs: int = 3
    batch_size: int = 16
    learning_rate: float = 3e-5
    rank_weight: float = 1.0
    task_loss: bool = False
    rank_topk: int = ToPSettings.rank_topk
    seed: int = 0
    distill_weight: float = 0.0
    distill_temperature: float = ToPSettings.distill_temperature
    keep_ratios: tuple[float, ...] | None = None
    drop: str = "scores"

    def __post_init__(self) -> None:
        if self.drop not in DROPS:
            raise ValueError(f"drop {self.drop!r}: one of {', '.join(DROPS)}")
        if self.keep_ratios is not None:
            self.keep_ratios = tuple(float(r) for r in self.keep_ratios)  # checked against the model by validate_schedule

    @property
    def whole_model(self) -> bool:
        """Whether a loss on the model's outputs trains every layer (else only the layers up to
        ``layer`` are kept and trained)."""
        return self.task_loss or self.distill_weight > 0


DROPS = ("scores", "random")
"""How a probe's pruning schedule picks the tokens it keeps."""


class RandomKeep(TopKSelector):
    """Keeps as many tokens as :class:`~top.pruning.topk.TopKSelector` with the same ratio
    would ([CLS] and ``ceil(ratio * input_length) - 1`` others), chosen uniformly at random
    among the alive ones (torch's global generator)."""

    def forward(self, ctx: LayerContext) -> KeepDecision:
        scores = torch.rand(ctx.alive.shape, device=ctx.alive.device)  # [B, n]
        return KeepDecision(hard=keep_top_k(scores, ctx.alive, self.keep_counts(ctx)))

    def kept_slots(self, ctx: LayerContext) -> None:
        return None


def _schedule(settings: ProbeSettings, layers: int) -> dict[int, TokenSelector]:
    """The selectors of ``settings.keep_ratios`` (layer -> selector, layers that prune only)."""
    if settings.keep_ratios is None:
        return {}
    return schedule_selectors(validate_schedule(settings.keep_ratios, layers), TopKSelector if settings.drop == "scores" else RandomKeep)


def final_layer_scores(model: PrunableModel, dataset, collate, batch_size: int) -> list[np.ndarray]:
    """Per feature ``[L_i]``: the last layer's token scores with every token kept."""
    return [scores[-1] for scores in trace_token_scores(model, dataset, collate, batch_size=batch_size)]


def _ranked_tokens(dataset) -> list[np.ndarray]:
    """Per feature ``[L_i]`` bool: the tokens the ranking loss ranks (every real token but [CLS])."""
    out = []
    for ids in dataset["input_ids"]:
        mask = np.ones(len(ids), dtype=bool)
        mask[0] = False
        out.append(mask)
    return out


def probe_ranking_distillation(
    teacher: PrunableModel, train, dev, collate, settings: ProbeSettings, *, eval_batch_size: int = 32
) -> list[dict[str, Any]]:
    """Train a copy of ``teacher`` as the module docstring says and measure, before training and
    after each epoch, how ``settings.layer``'s scores agree with the teacher's last layer on ``dev``.

    Args:
        teacher: the fine-tuned teacher (its selectors, if any, are not used).
        train, dev: training features (with ``labels`` when ``settings.task_loss``) and dev
            features of one task, as its ``collate`` pads them.

    Returns:
        One entry per measurement: ``epoch`` (0: before training), ``steps``, ``loss`` (the mean
        training loss of the epoch; None before training), ``rank_loss`` (its ranking part,
        unweighted) and the layer's :func:`final_layer_agreement` entry (``spearman``,
        ``top_spearman``, ``top_kept``).

    Raises:
        ValueError: for a layer the teacher does not have.
    """
    layers = teacher.config.num_hidden_layers
    if not 0 <= settings.layer < layers - 1:
        raise ValueError(f"layer {settings.layer}: the probe trains a layer below the teacher's last ({layers - 1})")
    reference_train = final_layer_scores(teacher, train, collate, eval_batch_size)
    reference_dev = final_layer_scores(teacher, dev, collate, eval_batch_size)
    ranked_dev = _ranked_tokens(dev)
    hf = copy.deepcopy(teacher.hf)
    selectors = _schedule(settings, layers)
    if not settings.whole_model:  # nothing above the layer reaches the ranking loss
        encoder = getattr(hf, hf.base_model_prefix).encoder
        encoder.layer = encoder.layer[: settings.layer + 1]
        hf.config.num_hidden_layers = settings.layer + 1
        selectors = {layer: selector for layer, selector in selectors.items() if layer <= settings.layer}
    student = PrunableModel(hf, selectors)  # measured through a copy without them (trace_token_scores)
    dense_teacher = PrunableModel(teacher.hf).eval()  # the logits distilled: every token kept, no dropout
    trained = [p for name, p in hf.named_parameters() if settings.whole_model or "embeddings" not in name]
    optimizer = torch.optim.AdamW(trained, lr=settings.learning_rate, weight_decay=0.0)

    def measure(epoch: int, steps: int, losses: Sequence[float], rank_losses: Sequence[float]) -> dict[str, Any]:
        scores = [layers[settings.layer : settings.layer + 1] for layers in trace_token_scores(student, dev, collate, batch_size=eval_batch_size)]
        agreement = final_layer_agreement(scores, reference_dev, ranked_dev, top=settings.rank_topk)[0]
        entry = {
            "epoch": epoch,
            "steps": steps,
            "loss": float(np.mean(losses)) if losses else None,
            "rank_loss": float(np.mean(rank_losses)) if rank_losses else None,
            **{key: agreement[key] for key in ("spearman", "top_spearman", "top_kept", "features")},
        }
        log.info("rank probe: %s", entry)
        return entry

    curve = [measure(0, 0, [], [])]
    rng = np.random.default_rng(settings.seed)
    steps = 0
    for epoch in range(1, settings.epochs + 1):
        losses, rank_losses = [], []
        order = rng.permutation(len(train)).tolist()
        for start in range(0, len(order), settings.batch_size):
            rows = order[start : start + settings.batch_size]
            batch = collate([train[i] for i in rows])
            inputs = model_inputs(batch, torch.device("cpu"))
            student.train()
            out = student(**inputs, mode="mask", output_attentions=True)
            alive = inputs["attention_mask"].bool()
            target = torch.full(alive.shape, float("-inf"))
            for i, row in enumerate(rows):
                target[i, : len(reference_train[row])] = torch.from_numpy(reference_train[row])
            ranked = alive.clone()
            ranked[:, 0] = False
            rank = ranking_distillation_loss(
                attention_token_scores(out.attentions[settings.layer], alive),
                target,
                ranked,
                topk=settings.rank_topk,
                padding="reference",
                list_length=int(ranked.sum(dim=1).max()),
            )
            loss = settings.rank_weight * rank
            if settings.task_loss:
                loss = loss + task_loss(out.logits, batch["labels"], inputs["attention_mask"])
            if settings.distill_weight > 0:
                with torch.no_grad():
                    reference = dense_teacher(**inputs, mode="mask").logits
                distill = logit_distillation_loss(out.logits, reference, settings.distill_temperature, inputs["attention_mask"])
                loss = loss + settings.distill_weight * distill
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            losses.append(float(loss.detach()))
            rank_losses.append(float(rank.detach()))
        curve.append(measure(epoch, steps, losses, rank_losses))
    return curve
