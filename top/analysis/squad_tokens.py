"""Where a pruned span-extraction model drops the answer (docs/design.md, "SQuAD token
diagnostics").

One gather-mode pass over a SQuAD dev split (the evaluation's own mode: tokens physically
removed) records, for every feature, which of its positions are alive entering each layer
(:func:`trace_survival`). Against the gold answers this gives, per layer:

* ``answer_tokens_dropped``: the share of gold-answer tokens (the token spans of every distinct
  gold answer that lies whole inside the feature's window, found as training labels are found,
  :func:`top.tasks.squad_features.answer_token_span`) not alive entering the layer, pooled over
  the features that hold an answer;
* ``answer_features_broken``: the share of those features in which no gold answer is whole;
* ``question_tokens_dropped`` (question tokens: outside the context and not special tokens) and
  ``context_tokens_dropped``, for comparison; ``tokens_in``: the mean number of tokens entering.

The same shares "after the last layer" are the tokens whose final-layer states the span head
reads; every other position gives the head the hidden state it had entering the layer that
dropped it (:mod:`top.encoder`, ``carry="entering"``). The questions are then split by whether
that happened to their answer (:data:`GROUPS`): ``answer_kept`` (some feature holds a whole gold
answer that survives the last layer), ``answer_dropped`` (answers lie inside windows but none
survives whole), ``answer_outside`` (no window holds a whole gold answer) and
``unanswerable`` (SQuAD v2.0 questions without answers). F1 and exact match are computed per
group for several span-head inputs at the dropped positions (:data:`DROPPED_STATES`: ``carry``,
as evaluated, ``zero`` and ``exclude`` from the same pass; ``carry_attention`` and
``carry_layer``, the reference's, one more pass each) and for a reference run (the dense
teacher) on the same groups, which says whether a group is simply harder.

One more pass, with every token kept, asks whether the model's own token scores single out the
answer (:func:`answer_ranking`): per layer, how often an answer token receives more attention
than a context token outside the answers (0.5: no better than chance), and the share of answer
tokens among the best-scoring context tokens at a few keep ratios; with a reference, the same
for the reference's scores. The reference's last layer is what ToP distils into its students'
early layers (§3.2), so the model's early layers show whether that ranking was learnt; each
layer's own scores are what static top-k keeps by. (The ranking loss itself says little: the
scores are attention probabilities of order ``1/n``, where the pairwise logistic loss is nearly
linear in them and its value barely moves even when the order changes.)
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from top.batching import example_lengths
from top.encoder import PrunableModel
from top.evaluate import predict
from top.files import atomic_write_text, json_text
from top.models import load_run
from top.pruning.base import attention_token_scores
from top.pruning.top.settings import ToPSettings
from top.tasks.base import QATask, get_task
from top.tasks.settings import TaskConfig
from top.tasks.squad_features import NO_OFFSET, answer_token_span
from top.tasks.squad_metrics import compute_squad_metrics
from top.tasks.squad_postprocess import QAPredictions
from top.train import model_inputs

log = logging.getLogger(__name__)

#: What the span head reads at a position dropped before the end.
DROPPED_STATES = {
    "carry": "the hidden state the position had entering the layer that dropped it (what the encoder feeds the head, as evaluated)",
    "zero": "a zero vector: the head's logits there are its bias",
    "exclude": "nothing: a dropped position can be neither the start nor the end of an answer",
    "carry_attention": "the attention-sublayer output of the layer that dropped it (computed anyway; one more pass)",
    "carry_layer": (
        "the full output of the layer that dropped it, its feed-forward block run for the dropped positions "
        "(what ToP's reference feeds its span head; extra FLOPs not counted; one more pass)"
    ),
}
#: The span-head inputs :func:`squad_token_diagnostics` scores by default (one pass).
DEFAULT_STATES = ("carry", "zero", "exclude")
#: The encoder's ``carry`` of the inputs that need a pass of their own.
_CARRY_PASSES = {"carry_attention": "attention", "carry_layer": "layer"}
#: The question groups, by what happened to their gold answer (module docstring).
GROUPS = ("answer_kept", "answer_dropped", "answer_outside", "unanswerable")
#: Keep ratios at which :func:`answer_ranking` gives the share of answer tokens kept.
RANKING_KEEP_RATIOS = (0.25, 0.5)
#: The reference's top tokens :func:`final_layer_agreement` follows: ToP's ranking-loss list.
AGREEMENT_TOP = ToPSettings.rank_topk


@dataclass
class Survival:
    """One gather-mode pass over a dev split, in dataset order.

    Attributes:
        alive: per feature, ``[num_layers + 1, L_i]`` bool over its ``L_i`` positions: row ``l``
            the tokens entering layer ``l`` (row 0: the real tokens), the last row the tokens
            that survive the last layer's selector.
        logits: ``"carry"`` (the encoder's carried states, as the pass's ``carry`` says) and
            ``"zero"`` (:data:`DROPPED_STATES`): ``[N, W, 2]`` float32 start and end logits,
            ``-inf`` past a feature's length (as :func:`top.evaluate.predict`).
        lengths_in, lengths_kept: ``[N, num_layers]`` int64 tokens entering and surviving
            each layer.
    """

    alive: list[np.ndarray]
    logits: dict[str, np.ndarray]
    lengths_in: np.ndarray
    lengths_kept: np.ndarray


def sorted_batches(dataset, lengths: Sequence[int], collate, batch_size: int):
    """Yield ``(rows, batch)``: the features sorted by length, longest first (as
    :func:`top.evaluate.predict` forms its batches), ``rows`` their indices in ``dataset``."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, sampler=order.tolist(), collate_fn=collate)
    start = 0
    for batch in loader:
        rows = order[start : start + batch["input_ids"].shape[0]]
        start += len(rows)
        yield rows, batch


def _answer_mask(spans: Sequence[tuple[int, int]], length: int) -> np.ndarray:
    """``[length]`` bool, the positions inside any of the ``(first, last)`` token spans."""
    answer = np.zeros(length, dtype=bool)
    for first, last in spans:
        answer[first : last + 1] = True
    return answer


@torch.inference_mode()
def trace_survival(
    model: PrunableModel, dataset, collate, *, batch_size: int = 32, device: torch.device | str = "cpu", carry: str = "entering"
) -> Survival:
    """Run a span-extraction ``model`` over ``dataset`` in gather mode, recording every
    position's survival (:class:`Survival`); ``carry``: what dropped positions carry to the head
    (:meth:`top.encoder.PrunableModel.forward`).

    The batches are formed from the features sorted by length, longest first, as
    :func:`top.evaluate.predict` forms them; an example's outputs do not depend on its batch.

    Raises:
        ValueError: for a model without a span-extraction head.
    """
    if model.head_kind != "qa":
        raise ValueError(f"token diagnostics need a span-extraction (question answering) model, got a {model.head_kind!r} head")
    model.to(device).eval()
    lengths = example_lengths(dataset)
    n = len(lengths)
    width = max(lengths) if n else 0
    logits = {policy: np.full((n, width, 2), -np.inf, dtype=np.float32) for policy in ("carry", "zero")}
    alive: list[np.ndarray | None] = [None] * n
    layers = model.config.num_hidden_layers
    lengths_in = np.zeros((n, layers), dtype=np.int64)
    lengths_kept = np.zeros((n, layers), dtype=np.int64)
    for rows, batch in sorted_batches(dataset, lengths, collate, batch_size):
        out = model(**model_inputs(batch, torch.device(device)), mode="gather", record=True, carry=carry)
        real = batch["attention_mask"].bool().to(out.hidden.device)
        survived = out.kept[-1]  # [B, L] over original positions
        zeroed = model.hf.qa_outputs(out.hidden * survived[..., None].to(out.hidden.dtype))
        masks = torch.stack([real, *out.kept], dim=1).cpu().numpy()  # [B, layers + 1, L]
        for policy, block in (("carry", out.logits), ("zero", zeroed)):
            block = block.float().masked_fill(~real[..., None], float("-inf")).cpu().numpy()
            for i, row in enumerate(rows):
                logits[policy][row, : lengths[row]] = block[i, : lengths[row]]
        for i, row in enumerate(rows):
            alive[row] = masks[i, :, : lengths[row]].copy()
        lengths_in[rows] = out.lengths_in.cpu().numpy()
        lengths_kept[rows] = out.lengths_kept.cpu().numpy()
    return Survival(alive=alive, logits=logits, lengths_in=lengths_in, lengths_kept=lengths_kept)


@torch.inference_mode()
def trace_token_scores(model: PrunableModel, dataset, collate, *, batch_size: int = 32, device: torch.device | str = "cpu") -> list[np.ndarray]:
    """The attention each position receives in every layer of ``model`` run dense.

    One mask-mode pass with every token kept (the model's selectors are not used), as ToP's
    teacher runs for its distillation target (:mod:`top.teacher`): per layer,
    :func:`top.pruning.base.attention_token_scores` over the feature's real tokens.

    Returns:
        Per feature, in dataset order, ``[num_layers, L_i]`` float32 over its ``L_i`` positions.
    """
    dense = PrunableModel(model.hf).to(device).eval()
    lengths = example_lengths(dataset)
    out_scores: list[np.ndarray | None] = [None] * len(lengths)
    for rows, batch in sorted_batches(dataset, lengths, collate, batch_size):
        inputs = model_inputs(batch, torch.device(device))
        out = dense(**inputs, mode="mask", output_attentions=True)
        alive = inputs["attention_mask"].bool()
        scores = torch.stack([attention_token_scores(probs.float(), alive) for probs in out.attentions], dim=1).cpu().numpy()
        for i, row in enumerate(rows):
            out_scores[row] = scores[i, :, : lengths[row]].astype(np.float32)
    return out_scores


def answer_ranking(
    scores: Sequence[np.ndarray],
    spans: Sequence[Sequence[tuple[int, int]]],
    candidates: Sequence[np.ndarray],
    keep_ratios: Sequence[float] = RANKING_KEEP_RATIOS,
) -> list[dict[str, Any]]:
    """How well each layer's token scores single out the gold answer among the candidates.

    Counted over the features that hold a gold answer and at least one candidate outside it;
    a feature's answer tokens are the candidates inside any of its gold spans.

    Args:
        scores: per feature ``[num_layers, L_i]``, higher is more important
            (:func:`trace_token_scores`).
        spans: per feature its gold spans (:func:`gold_spans`).
        candidates: per feature ``[L_i]`` bool, the tokens ranked (the context tokens,
            :func:`token_roles`).
        keep_ratios: shares of a feature's candidates kept by score.

    Returns:
        One dict per layer: ``answer_auc``, the mean over features of the probability that an
        answer token outscores a candidate outside the answers (ties count half; 0.5 is
        chance); ``answer_kept`` (keyed by ratio as a string), the pooled share of answer tokens
        among the ``ceil(r * n)`` best-scoring of a feature's ``n`` candidates (chance: ``r``);
        ``features``, the features counted.
    """
    layers = scores[0].shape[0] if scores else 0
    out = []
    for layer in range(layers):
        aucs = []
        kept = dict.fromkeys(keep_ratios, 0)
        answer_tokens = 0
        for feature_scores, feature_spans, is_candidate in zip(scores, spans, candidates):
            answer = _answer_mask(feature_spans, len(is_candidate)) & is_candidate
            if not answer.any() or answer.sum() == is_candidate.sum():
                continue
            ranked = feature_scores[layer][is_candidate]
            is_answer = answer[is_candidate]
            aucs.append(roc_auc_score(is_answer, ranked))
            order = np.argsort(-ranked, kind="stable")  # equal scores: the earlier token first
            for ratio in keep_ratios:
                kept[ratio] += int(is_answer[order[: math.ceil(ratio * len(ranked))]].sum())
            answer_tokens += int(is_answer.sum())
        out.append(
            {
                "layer": layer,
                "answer_auc": float(np.mean(aucs)) if aucs else None,
                "answer_kept": {str(ratio): _share(count, answer_tokens) for ratio, count in kept.items()},
                "features": len(aucs),
            }
        )
    return out


def final_layer_agreement(
    scores: Sequence[np.ndarray],
    reference_final: Sequence[np.ndarray],
    candidates: Sequence[np.ndarray],
    *,
    top: int = AGREEMENT_TOP,
    keep_ratios: Sequence[float] = RANKING_KEEP_RATIOS,
) -> list[dict[str, Any]]:
    """How closely each layer's token scores order a feature's tokens as the reference's last
    layer does: the ranking ToP distils into its students' early layers (§3.2).

    Args:
        scores: per feature ``[num_layers, L_i]``, the model's scores (:func:`trace_token_scores`).
        reference_final: per feature ``[L_i]``, the reference's last-layer scores.
        candidates: per feature ``[L_i]`` bool, the tokens ranked (question and context tokens).
        top: the reference's best tokens of a feature that its ranking loss orders
            (``rank_topk``); a feature with fewer candidates uses them all.
        keep_ratios: shares of a feature's candidates kept by the layer's scores.

    Returns:
        One dict per layer: ``spearman``, the mean over features of the rank correlation
        (Spearman's rho; ties take their mean rank) between the layer's and the reference's
        scores over every candidate; ``top_spearman``, the same over the reference's ``top``
        tokens only (what the ranking loss orders); ``top_kept`` (keyed by ratio as a string),
        the pooled share of the reference's ``top`` tokens among the layer's ``ceil(r * n)``
        best of ``n`` candidates (chance: ``r``); ``features``, the features with at least
        three candidates. A feature whose scores are constant over the tokens compared has no
        rank correlation and is left out of that mean (``spearman_features``,
        ``top_spearman_features``: the features in each mean).
    """
    layers = scores[0].shape[0] if scores else 0
    out = []
    for layer in range(layers):
        rhos, top_rhos, features, top_tokens = [], [], 0, 0
        kept = dict.fromkeys(keep_ratios, 0)
        for feature_scores, target, is_candidate in zip(scores, reference_final, candidates):
            own, ref = feature_scores[layer][is_candidate], np.asarray(target)[is_candidate]
            if len(own) < 3:
                continue
            features += 1
            best = np.argsort(-ref, kind="stable")[: min(top, len(ref))]
            for values, into in (((own, ref), rhos), ((own[best], ref[best]), top_rhos)):
                if np.ptp(values[0]) > 0 and np.ptp(values[1]) > 0:
                    into.append(float(spearmanr(*values).statistic))
            is_top = np.zeros(len(ref), dtype=bool)
            is_top[best] = True
            order = np.argsort(-own, kind="stable")  # equal scores: the earlier token first
            for ratio in keep_ratios:
                kept[ratio] += int(is_top[order[: math.ceil(ratio * len(own))]].sum())
            top_tokens += len(best)
        out.append(
            {
                "layer": layer,
                "spearman": float(np.mean(rhos)) if rhos else None,
                "top_spearman": float(np.mean(top_rhos)) if top_rhos else None,
                "top_kept": {str(ratio): _share(count, top_tokens) for ratio, count in kept.items()},
                "features": features,
                "spearman_features": len(rhos),
                "top_spearman_features": len(top_rhos),
            }
        )
    return out


def ranking_diagnostics(
    model: PrunableModel,
    dataset,
    collate,
    spans: Sequence[Sequence[tuple[int, int]]],
    questions: Sequence[np.ndarray],
    contexts: Sequence[np.ndarray],
    *,
    reference: PrunableModel | None = None,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """The token-score part of the diagnostics, with every token kept: ``ranking``
    (:func:`answer_ranking` of the model's scores over the context tokens), and with a
    reference ``reference_ranking`` (the same for the reference) and ``agreement``
    (:func:`final_layer_agreement` of the model's layers with the reference's last layer over
    the question and context tokens); both None without one. One pass per model."""
    scores = trace_token_scores(model, dataset, collate, batch_size=batch_size, device=device)
    out: dict[str, Any] = {"ranking": answer_ranking(scores, spans, contexts), "reference_ranking": None, "agreement": None}
    if reference is not None:
        reference_scores = trace_token_scores(reference, dataset, collate, batch_size=batch_size, device=device)
        out["reference_ranking"] = answer_ranking(reference_scores, spans, contexts)
        tokens = [question | context for question, context in zip(questions, contexts)]
        out["agreement"] = final_layer_agreement(scores, [feature[-1] for feature in reference_scores], tokens)
    return out


def _ranking_summary(ranking: Mapping[str, Any]) -> dict[str, Any]:
    """The per-layer headline numbers of :func:`ranking_diagnostics`."""
    summary = {"answer_auc_by_layer": [entry["answer_auc"] for entry in ranking["ranking"]]}
    if ranking["reference_ranking"]:
        summary["reference_answer_auc_by_layer"] = [entry["answer_auc"] for entry in ranking["reference_ranking"]]
        summary["final_layer_spearman_by_layer"] = [entry["spearman"] for entry in ranking["agreement"]]
        summary["final_layer_top_spearman_by_layer"] = [entry["top_spearman"] for entry in ranking["agreement"]]
    return summary


def token_roles(dataset, special_ids: Sequence[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per feature, ``[L_i]`` bool masks of its question tokens and of its context tokens.

    Context tokens have a character span (``offset_mapping`` not :data:`NO_OFFSET`); question
    tokens are the other tokens that are not special tokens (``special_ids``: [CLS], [SEP], ...).
    """
    questions, contexts = [], []
    special = np.asarray(sorted(set(special_ids)), dtype=np.int64)
    for ids, offsets in zip(dataset["input_ids"], dataset["offset_mapping"]):
        context = np.asarray([tuple(offset) != NO_OFFSET for offset in offsets], dtype=bool)
        questions.append(~context & ~np.isin(np.asarray(ids, dtype=np.int64), special))
        contexts.append(context)
    return questions, contexts


def gold_spans(rows, dataset) -> list[list[tuple[int, int]]]:
    """Per feature, the ``(first, last)`` token spans of the distinct gold answers of its question
    that lie whole inside its window (:func:`top.tasks.squad_features.answer_token_span`).

    Args:
        rows: the dev questions (``id``, ``answers``) the features were built from.
        dataset: the evaluation features (``example_id``, ``offset_mapping``).

    Raises:
        ValueError: for a feature whose question is not among ``rows``.
    """
    answers = {row["id"]: row["answers"] for row in rows}
    out = []
    for index, (example_id, offsets) in enumerate(zip(dataset["example_id"], dataset["offset_mapping"])):
        if example_id not in answers:
            raise ValueError(f"feature {index} belongs to question {example_id!r}, which is not among the dev questions")
        gold = answers[example_id]
        spans: list[tuple[int, int]] = []
        for text, start in sorted(set(zip(gold["text"], gold["answer_start"]))):
            span = answer_token_span(offsets, text, int(start))
            if span is not None and span not in spans:
                spans.append(span)
        out.append(spans)
    return out


def _share(part: int, total: int) -> float | None:
    return None if total == 0 else part / total


def layer_shares(
    alive: Sequence[np.ndarray], spans: Sequence[Sequence[tuple[int, int]]], questions: Sequence[np.ndarray], contexts: Sequence[np.ndarray]
) -> list[dict[str, Any]]:
    """The shares of the module docstring for every row of ``alive`` (entering each layer, then
    after the last one), pooled over the features.

    Args:
        alive: per feature ``[rows, L_i]`` bool (:attr:`Survival.alive`).
        spans: per feature its gold spans (:func:`gold_spans`).
        questions, contexts: per feature ``[L_i]`` bool (:func:`token_roles`).

    Returns:
        One dict per row: ``tokens_in`` (mean alive tokens), ``answer_tokens_dropped``,
        ``answer_features_broken``, ``question_tokens_dropped``, ``context_tokens_dropped``
        (None where nothing is counted), and the counts behind them.
    """
    if not alive:
        return []
    out = []
    for row in range(alive[0].shape[0]):
        tokens = gold = gold_dropped = answer_features = broken = 0
        question = question_dropped = context = context_dropped = 0
        for mask, feature_spans, is_question, is_context in zip(alive, spans, questions, contexts):
            here = mask[row]
            tokens += int(here.sum())
            question += int(is_question.sum())
            question_dropped += int((is_question & ~here).sum())
            context += int(is_context.sum())
            context_dropped += int((is_context & ~here).sum())
            if feature_spans:
                answer = _answer_mask(feature_spans, len(here))
                gold += int(answer.sum())
                gold_dropped += int((answer & ~here).sum())
                answer_features += 1
                broken += not any(here[first : last + 1].all() for first, last in feature_spans)
        out.append(
            {
                "tokens_in": tokens / len(alive),
                "answer_tokens_dropped": _share(gold_dropped, gold),
                "answer_features_broken": _share(broken, answer_features),
                "question_tokens_dropped": _share(question_dropped, question),
                "context_tokens_dropped": _share(context_dropped, context),
                "answer_tokens": gold,
                "answer_features": answer_features,
                "question_tokens": question,
                "context_tokens": context,
            }
        )
    return out


def answer_groups(rows, dataset, spans: Sequence[Sequence[tuple[int, int]]], alive: Sequence[np.ndarray]) -> dict[str, str]:
    """Each question's group (:data:`GROUPS`), by id: whether a whole gold answer survives the
    last layer in one of its features (``alive``'s last row)."""
    features_of: dict[str, list[int]] = defaultdict(list)
    for index, example_id in enumerate(dataset["example_id"]):
        features_of[example_id].append(index)
    groups = {}
    for row in rows:
        held = [(f, first, last) for f in features_of[row["id"]] for first, last in spans[f]]
        if not row["answers"]["text"]:
            group = "unanswerable"
        elif not held:
            group = "answer_outside"
        elif any(alive[f][-1, first : last + 1].all() for f, first, last in held):
            group = "answer_kept"
        else:
            group = "answer_dropped"
        groups[row["id"]] = group
    return groups


def group_scores(predictions: Mapping[str, str], rows, groups: Mapping[str, str], version_2: bool) -> dict[str, dict[str, Any]]:
    """SQuAD metrics (:func:`top.tasks.squad_metrics.compute_squad_metrics`, 0-100) of the
    questions of each group and of ``"all"``; a group without questions has only
    ``{"questions": 0}``."""
    out = {}
    for group in (*GROUPS, "all"):
        subset = [row for row in rows if group == "all" or groups[row["id"]] == group]
        if not subset:
            out[group] = {"questions": 0}
            continue
        metrics = compute_squad_metrics({row["id"]: predictions[row["id"]] for row in subset}, subset, version_2=version_2)
        out[group] = {"questions": len(subset), **{key: value for key, value in metrics.items() if key != "total"}}
    return out


def surviving_windows(windows: Sequence[Mapping[str, Any]], alive: Sequence[np.ndarray]) -> list[dict[str, Any]]:
    """``windows`` (``example_id``, ``offset_mapping`` per feature) with every position that does
    not survive the last layer marked :data:`NO_OFFSET`, so that no answer starts or ends there
    (``"exclude"`` of :data:`DROPPED_STATES`)."""
    out = []
    for window, mask in zip(windows, alive):
        final = mask[-1]
        offsets = [list(offset) if final[i] else list(NO_OFFSET) for i, offset in enumerate(window["offset_mapping"])]
        out.append({"example_id": window["example_id"], "offset_mapping": offsets})
    return out


def predicted_span_survival(result: QAPredictions, alive: Sequence[np.ndarray]) -> dict[str, Any]:
    """How often the predicted answer was read at positions dropped before the end.

    Returns:
        ``questions_answered`` (questions with a non-empty prediction), ``span_token_dropped``
        (the share of them whose best span holds a token that did not survive the last layer)
        and ``start_or_end_dropped`` (the share whose first or last token did not).
    """
    answered = span_dropped = boundary_dropped = 0
    for question, nbest in result.nbest.items():
        if not nbest or not result.predictions[question]:
            continue
        best = nbest[0]
        final = alive[best["feature"]][-1]
        answered += 1
        span_dropped += not final[best["start_token"] : best["end_token"] + 1].all()
        boundary_dropped += not (final[best["start_token"]] and final[best["end_token"]])
    return {
        "questions_answered": answered,
        "span_token_dropped": _share(span_dropped, answered),
        "start_or_end_dropped": _share(boundary_dropped, answered),
    }


def squad_token_diagnostics(
    model: PrunableModel,
    task: QATask,
    tokenizer,
    *,
    split: str | None = None,
    limit: int | None = None,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    reference: PrunableModel | None = None,
    states: Sequence[str] = DEFAULT_STATES,
) -> dict[str, Any]:
    """The diagnostics of the module docstring for ``model`` (its selectors installed) on a dev
    split of ``task`` (default: the first; ``limit``: the evaluation's sample of questions).

    Args:
        reference: a model scored on the same question groups (the dense teacher), whose token
            scores are also ranked against the answers (:func:`answer_ranking`); or None.
        states: the span-head inputs to score (:data:`DROPPED_STATES`); ``carry_attention`` and
            ``carry_layer`` cost a pass over the split each.

    Returns:
        A JSON-ready dict: ``layers`` (one entry per layer, the tokens entering it),
        ``after_last_layer``, ``summary``, ``groups`` (questions per group), ``scores`` (per
        span-head input of :data:`DROPPED_STATES`, and ``reference``: per group metrics),
        ``predicted_spans`` (:func:`predicted_span_survival` per input), ``ranking``
        (:func:`answer_ranking` of the model's token scores with every token kept, over the
        context tokens; one more pass), ``reference_ranking`` (the same for the reference, or
        None) and what was run.
    """
    unknown = [state for state in states if state not in DROPPED_STATES]
    if unknown or not states:
        raise ValueError(f"states must be a non-empty selection of {list(DROPPED_STATES)}, got {list(states)}")
    split, dataset, rows, collate, spans, (questions, contexts) = _dev_split(task, tokenizer, split, limit)
    survival = trace_survival(model, dataset, collate, batch_size=batch_size, device=device)
    shares = layer_shares(survival.alive, spans, questions, contexts)
    groups = answer_groups(rows, dataset, spans, survival.alive)
    windows = dataset.select_columns(["example_id", "offset_mapping"]).to_list()
    results = {}
    for state in states:
        if state in _CARRY_PASSES:
            other = trace_survival(model, dataset, collate, batch_size=batch_size, device=device, carry=_CARRY_PASSES[state])
            results[state] = task.answers(split, windows, other.logits["carry"], limit)
        elif state == "exclude":
            results[state] = task.answers(split, surviving_windows(windows, survival.alive), survival.logits["carry"], limit)
        else:
            results[state] = task.answers(split, windows, survival.logits[state], limit)
    version_2 = task.spec.version_2
    scores = {policy: group_scores(result.predictions, rows, groups, version_2) for policy, result in results.items()}
    if reference is not None:
        preds = predict(reference, dataset, collate, batch_size=batch_size, mode="gather", device=device)
        scores["reference"] = group_scores(task.answers(split, windows, preds.logits, limit).predictions, rows, groups, version_2)
    ranking = ranking_diagnostics(model, dataset, collate, spans, questions, contexts, reference=reference, batch_size=batch_size, device=device)
    layers = [{"layer": index, **entry} for index, entry in enumerate(shares[:-1])]
    final = shares[-1]
    counts = {group: sum(1 for value in groups.values() if value == group) for group in GROUPS}
    summary = {
        "answer_tokens_dropped_before_last_layer": layers[-1]["answer_tokens_dropped"],
        "answer_tokens_dropped_after_last_layer": final["answer_tokens_dropped"],
        "question_tokens_dropped_before_last_layer": layers[-1]["question_tokens_dropped"],
        "context_tokens_dropped_before_last_layer": layers[-1]["context_tokens_dropped"],
        "answer_dropped_questions": _share(counts["answer_dropped"], len(groups)),
    }
    for state in results:
        for group in ("answer_kept", "answer_dropped"):
            summary[f"f1_{group}_{state}"] = scores[state][group].get("f1")
    summary |= _ranking_summary(ranking)
    log.info("%s %s: %s", task.name, split, summary)
    return {
        "task": task.name,
        "split": split,
        "limit": limit,
        "questions": len(rows),
        "features": len(dataset),
        "num_layers": len(layers),
        "protected_tokens": task.protects_tokens,
        "mean_tokens_kept": survival.lengths_kept.mean(axis=0).tolist(),
        "layers": layers,
        "after_last_layer": final,
        "summary": summary,
        "groups": counts,
        "scores": scores,
        "predicted_spans": {policy: predicted_span_survival(result, survival.alive) for policy, result in results.items()},
        "dropped_states": {state: DROPPED_STATES[state] for state in results},
        **ranking,
    }


def squad_ranking_diagnostics(
    model: PrunableModel,
    task: QATask,
    tokenizer,
    *,
    split: str | None = None,
    limit: int | None = None,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    reference: PrunableModel | None = None,
) -> dict[str, Any]:
    """Only the token-score part of :func:`squad_token_diagnostics` (:func:`ranking_diagnostics`),
    without the gather-mode pass and the answers: one pass per model.

    Returns:
        A JSON-ready dict: ``summary`` (the per-layer headline numbers), ``ranking``,
        ``reference_ranking``, ``agreement`` and what was run.
    """
    split, dataset, rows, collate, spans, (questions, contexts) = _dev_split(task, tokenizer, split, limit)
    ranking = ranking_diagnostics(model, dataset, collate, spans, questions, contexts, reference=reference, batch_size=batch_size, device=device)
    summary = _ranking_summary(ranking)
    log.info("%s %s: %s", task.name, split, summary)
    return {"task": task.name, "split": split, "limit": limit, "questions": len(rows), "features": len(dataset), "summary": summary, **ranking}


def _dev_split(task: QATask, tokenizer, split: str | None, limit: int | None):
    """``(split, features, questions as dicts, collate, gold spans, (question tokens, context
    tokens))`` of a dev split (default: the task's first).

    Raises:
        ValueError: for a task that is not a SQuAD task (no gold answer spans).
    """
    if not isinstance(task, QATask):
        raise ValueError(f"token diagnostics are for SQuAD tasks, not {task.name!r}")
    split = split or task.dev_splits[0]
    dataset = task.dev_features(split, tokenizer, limit)
    rows = task.dev_rows(split, limit).to_list()  # read many times: plain dicts
    spans = gold_spans(rows, dataset)
    return split, dataset, rows, task.collate(tokenizer), spans, token_roles(dataset, tokenizer.all_special_ids)


def diagnose_run(
    cfg: Mapping[str, Any],
    model_dir: str | Path,
    *,
    reference_dir: str | Path | None = None,
    task: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
    device: torch.device | str = "cpu",
    states: Sequence[str] = DEFAULT_STATES,
    ranking_only: bool = False,
) -> dict[str, Any]:
    """:func:`squad_token_diagnostics` (:func:`squad_ranking_diagnostics` with ``ranking_only``) of a saved run (``results/models/{task}/{method}/{setting}/seed{seed}``,
    :func:`top.models.load_run`), with its method's evaluation selectors, as ``evaluate_run``
    scores it.

    Args:
        cfg: the workflow configuration the run was made with, schema defaults filled in (its
            data source, ``qa`` and ``eval`` settings).
        reference_dir: a saved run scored on the same question groups (the teacher:
            ``results/teachers/{task}/seed{seed}``).
        task: the SQuAD task; None: the one recorded in the run's ``pruning.json``.
        limit, batch_size: default ``eval.limit`` and ``eval.batch_size``.

    Returns:
        The diagnostics, with the run's folder, method and ``decisions`` (its exported pruning
        decisions from ``pruning.json``: for ToP each layer's kept rank bins; None for a run
        without any).

    Raises:
        ValueError: when the task is neither given nor recorded, or is not a SQuAD task.
    """
    model, tokenizer, record = load_run(model_dir)
    name = task or (record.get("config") or {}).get("task")
    if name is None:
        raise ValueError(f"{Path(model_dir) / 'pruning.json'} records no task: name the SQuAD task")
    spec = get_task(TaskConfig.from_config(cfg), name)
    if not isinstance(spec, QATask):
        raise ValueError(f"task {name!r} of {model_dir} is not a SQuAD task: token diagnostics need gold answer spans")
    reference = load_run(reference_dir)[0] if reference_dir is not None else None
    eval_cfg = cfg.get("eval") or {}
    common = {
        "split": split,
        "limit": eval_cfg.get("limit") if limit is None else limit,
        "batch_size": int(batch_size or eval_cfg.get("batch_size", 32)),
        "device": device,
        "reference": reference,
    }
    if ranking_only:
        result = squad_ranking_diagnostics(model, spec, tokenizer, **common)
    else:
        result = squad_token_diagnostics(model, spec, tokenizer, states=states, **common)
    return {
        "model_dir": str(model_dir),
        "method": record["method"],
        "reference_dir": None if reference_dir is None else str(reference_dir),
        "decisions": record.get("decisions"),
        **result,
    }


def write_diagnostics(path: str | Path, result: Mapping[str, Any]) -> None:
    """Write ``result`` as strict JSON, atomically (:func:`top.files.atomic_write_text`)."""
    atomic_write_text(path, json_text(result, indent=2))
