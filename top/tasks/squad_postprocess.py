"""Turn a span-extraction model's start/end logits into SQuAD answer texts.

This is the post-processing of the BERT reference implementation and of Hugging Face's
``run_qa.py``, as a pure NumPy function (no model, tokenizer or file access) so that it can be
tested on hand-built inputs:

* each example (question + context) may be split into several features (document-stride
  windows); every feature carries the character span of each of its tokens in the context, or
  ``[-1, -1]`` (or ``None``) for tokens that are not context (question, special tokens);
* in every feature the ``n_best_size`` highest start logits and the ``n_best_size`` highest end
  logits are paired; a pair is a candidate answer if both tokens are context tokens, the end is
  not before the start and the span has at most ``max_answer_length`` tokens; its score is
  start logit + end logit;
* the null ("no answer") score of an example is the smallest, over its features, of the start
  plus end logit of token 0 ([CLS]);
* SQuAD v1.1 predicts the best candidate's text; SQuAD v2.0 predicts ``""`` when the null score
  exceeds the best candidate's score by more than ``null_threshold``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

NO_CANDIDATE_SCORE_DIFF = 1e9
"""``null_scores`` entry of an example without any valid candidate span: a large finite number
(JSON-safe, unlike ``inf``) so that such an example sorts as the surest "no answer"."""

_MAX_IDS_SHOWN = 5


@dataclass
class QAPredictions:
    """The post-processed predictions of a set of SQuAD examples, each keyed by example id.

    Attributes:
        predictions: the predicted answer text (``""`` for "no answer" or no valid candidate).
        null_scores: null score minus the best candidate's score (larger means "more surely
            unanswerable"); ``NO_CANDIDATE_SCORE_DIFF`` when there is no valid candidate. This
            is what ``compute_squad_metrics(null_scores=...)`` uses to search the best
            threshold.
        nbest: up to ``n_best_size`` candidates, best first, as dicts with ``text``, ``score``
            (start + end logit), ``start`` and ``end``: the candidate's character span in
            the context (``context[start:end] == text``), and ``feature``, ``start_token`` and
            ``end_token``: the index (in ``features``) of the feature it was read from and its
            first and last token there. The null answer is not listed.
    """

    predictions: dict[str, str] = field(default_factory=dict)
    null_scores: dict[str, float] = field(default_factory=dict)
    nbest: dict[str, list[dict]] = field(default_factory=dict)


def _format_ids(ids: Sequence[str]) -> str:
    """Show the first few ``ids`` for an error message."""
    shown = ", ".join(repr(i) for i in ids[:_MAX_IDS_SHOWN])
    more = f", ... ({len(ids) - _MAX_IDS_SHOWN} more)" if len(ids) > _MAX_IDS_SHOWN else ""
    return shown + more


def _offsets_array(offset_mapping: Sequence, feature_index: int) -> np.ndarray:
    """Convert one feature's offset mapping to an int64 array ``[n, 2]``; ``None`` -> ``-1``."""
    rows = [(-1, -1) if pair is None else pair for pair in offset_mapping]
    if not rows:
        return np.empty((0, 2), dtype=np.int64)
    try:
        offsets = np.asarray(rows, dtype=np.int64).reshape(len(rows), -1)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"feature {feature_index}: offset_mapping must be [start_char, end_char] pairs") from exc
    if offsets.shape[1] != 2:
        raise ValueError(f"feature {feature_index}: offset_mapping must be [start_char, end_char] pairs, got rows of {offsets.shape[1]} values")
    return offsets


def _as_logits(values: Sequence | np.ndarray, name: str) -> np.ndarray:
    """Convert logits to a float64 array ``[num_features, L]``, rejecting other shapes."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be [num_features, seq_len], got shape {array.shape}")
    return array


def _feature_candidates(
    start: np.ndarray,
    end: np.ndarray,
    offsets: np.ndarray,
    n_best_size: int,
    max_answer_length: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(scores, start_tokens, end_tokens)`` of one feature's valid candidate spans.

    ``start`` and ``end`` are the feature's logits cut to its real length, ``offsets`` its
    ``[n, 2]`` offset array. Only the top ``n_best_size`` start and end positions are paired
    (an ``n_best_size`` x ``n_best_size`` grid, never ``n`` x ``n``).
    """
    # Stable sort of the negated logits: highest first, ties by position.
    top_start = np.argsort(-start, kind="stable")[:n_best_size]
    top_end = np.argsort(-end, kind="stable")[:n_best_size]
    is_context = (offsets[:, 0] >= 0) & (offsets[:, 1] >= 0)
    s = top_start[:, None]
    e = top_end[None, :]
    valid = is_context[s] & is_context[e] & (e >= s) & (e - s + 1 <= max_answer_length)
    rows, cols = np.nonzero(valid)
    start_tokens = top_start[rows]
    end_tokens = top_end[cols]
    return start[start_tokens] + end[end_tokens], start_tokens, end_tokens


def postprocess_qa_predictions(
    examples: Sequence[Mapping],
    features: Sequence[Mapping],
    start_logits: Sequence | np.ndarray,
    end_logits: Sequence | np.ndarray,
    *,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    version_2: bool = False,
    null_threshold: float = 0.0,
) -> QAPredictions:
    """Pick each example's answer from the start/end logits of its features.

    Args:
        examples: one mapping per question with ``id`` and ``context`` (str).
        features: one mapping per model input with ``example_id`` (the id of its example) and
            ``offset_mapping``: one ``[start_char, end_char]`` per token (end exclusive),
            ``[-1, -1]`` or ``None`` for tokens that are not context. Token 0 is [CLS].
        start_logits: ``[num_features, L]`` start logits; positions at or beyond a feature's
            ``len(offset_mapping)`` are padding and ignored.
        end_logits: ``[num_features, L]`` end logits.
        n_best_size: how many top start and top end positions are paired per feature, and how
            many candidates ``nbest`` keeps per example.
        max_answer_length: the longest answer span, in tokens.
        version_2: SQuAD v2.0: predict ``""`` when the null score minus the best candidate's
            score is above ``null_threshold``.
        null_threshold: the v2.0 threshold on that difference (unused for v1.1).

    Returns:
        A :class:`QAPredictions` with an entry for every example, in the order of ``examples``.

    Raises:
        ValueError: for logits whose shapes differ or do not match the features, a feature
            longer than the logits, a malformed offset mapping or one pointing outside its
            context, a feature whose ``example_id`` is not among the examples, an example
            without features, duplicate example ids, or ``n_best_size`` or
            ``max_answer_length`` below 1.
    """
    if n_best_size < 1:
        raise ValueError(f"n_best_size must be at least 1, got {n_best_size}")
    if max_answer_length < 1:
        raise ValueError(f"max_answer_length must be at least 1, got {max_answer_length}")
    starts = _as_logits(start_logits, "start_logits")
    ends = _as_logits(end_logits, "end_logits")
    if starts.shape != ends.shape:
        raise ValueError(f"start_logits and end_logits differ in shape: {starts.shape} != {ends.shape}")
    if starts.shape[0] != len(features):
        raise ValueError(f"logits have {starts.shape[0]} rows but there are {len(features)} features")
    seq_len = starts.shape[1]

    contexts: dict[str, str] = {}
    for index, example in enumerate(examples):
        try:
            example_id, context = example["id"], example["context"]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"example {index} needs 'id' and 'context'") from exc
        if example_id in contexts:
            raise ValueError(f"duplicate example id {example_id!r}")
        if not isinstance(context, str):
            raise ValueError(f"context of example {example_id!r} must be a string")
        contexts[example_id] = context

    features_of: dict[str, list[int]] = {example_id: [] for example_id in contexts}
    for index, feature in enumerate(features):
        try:
            example_id = feature["example_id"]
            feature["offset_mapping"]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"feature {index} needs 'example_id' and 'offset_mapping'") from exc
        if example_id not in features_of:
            raise ValueError(f"feature {index} belongs to example {example_id!r}, which is not in examples")
        features_of[example_id].append(index)
    without = [example_id for example_id, indices in features_of.items() if not indices]
    if without:
        raise ValueError(f"{len(without)} examples have no features: {_format_ids(without)}")

    result = QAPredictions()
    for example_id, context in contexts.items():
        null_score = np.inf
        scores, start_chars, end_chars, where = [], [], [], []
        for index in features_of[example_id]:
            offsets = _offsets_array(features[index]["offset_mapping"], index)
            length = len(offsets)
            if length == 0 or length > seq_len:
                raise ValueError(f"feature {index} has {length} tokens; expected 1 to {seq_len} (logit width)")
            if offsets.max() > len(context):
                raise ValueError(
                    f"feature {index}: offset_mapping reaches character {offsets.max()} but"
                    f" the context of example {example_id!r} has {len(context)} characters"
                )
            start, end = starts[index, :length], ends[index, :length]
            null_score = min(null_score, start[0] + end[0])
            feature_scores, start_tokens, end_tokens = _feature_candidates(start, end, offsets, n_best_size, max_answer_length)
            scores.append(feature_scores)
            start_chars.append(offsets[start_tokens, 0])
            end_chars.append(offsets[end_tokens, 1])
            where.append(np.stack([np.full_like(start_tokens, index), start_tokens, end_tokens], axis=1))

        all_scores = np.concatenate(scores)
        all_starts = np.concatenate(start_chars)
        all_ends = np.concatenate(end_chars)
        all_where = np.concatenate(where)
        order = np.argsort(-all_scores, kind="stable")[:n_best_size]
        nbest = [
            {
                "text": context[all_starts[i] : all_ends[i]],
                "score": float(all_scores[i]),
                "start": int(all_starts[i]),
                "end": int(all_ends[i]),
                "feature": int(all_where[i, 0]),
                "start_token": int(all_where[i, 1]),
                "end_token": int(all_where[i, 2]),
            }
            for i in order
        ]
        result.nbest[example_id] = nbest
        if not nbest:
            logger.debug("example %r has no valid candidate span", example_id)
            result.predictions[example_id] = ""
            result.null_scores[example_id] = NO_CANDIDATE_SCORE_DIFF
            continue
        score_diff = float(null_score - nbest[0]["score"])
        result.null_scores[example_id] = score_diff
        answer_is_null = version_2 and score_diff > null_threshold
        result.predictions[example_id] = "" if answer_is_null else nbest[0]["text"]
    return result
