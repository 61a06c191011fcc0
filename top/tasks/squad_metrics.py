"""SQuAD v1.1 and v2.0 evaluation metrics.

The rules follow the official SQuAD evaluation scripts (``evaluate-v1.1.py`` and
``evaluate-v2.0.py``), reimplemented here so that neither the scripts nor ``evaluate`` (and its
hub download) are needed:

* answers are compared after :func:`normalize_answer` (lower case, no punctuation, no articles,
  single spaces);
* a question scores the maximum over its gold answers;
* for SQuAD v2.0 a question without gold answers has the single gold answer ``""``, gold answers
  that normalise to nothing are dropped, and the F1 of an empty answer is 1 against an empty
  answer and 0 against anything else.

Per-question scores (:func:`exact_match_score`, :func:`f1_score`) are on a 0-1 scale, as in the
official scripts; the aggregates of :func:`compute_squad_metrics` are on a 0-100 scale with the
key names of ``evaluate``'s ``squad`` (``exact_match``, ``f1``) and ``squad_v2`` (``exact``,
``f1``, ``total``, ``HasAns_exact``, ... ``best_f1_thresh``) metrics.
"""

from __future__ import annotations

import logging
import math
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence

logger = logging.getLogger(__name__)

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_MAX_IDS_SHOWN = 5


def normalize_answer(s: str) -> str:
    """Normalise an answer the way the official SQuAD scripts do.

    In order: lower-case, delete every character of ``string.punctuation`` (so ``"don't"``
    becomes ``"dont"``), replace the whole words ``a``, ``an`` and ``the`` by spaces, and
    collapse runs of whitespace into single spaces with no leading or trailing space.
    """
    text = s.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, truth: str) -> float:
    """Return 1.0 if ``prediction`` and ``truth`` are equal after normalisation, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(truth))


def f1_score(prediction: str, truth: str, *, version_2: bool = False) -> float:
    """Token-level F1 (0-1) between the normalised ``prediction`` and ``truth``.

    Tokens are the whitespace-separated words of the normalised strings, counted as a
    multiset: precision = common / len(prediction tokens), recall = common / len(truth tokens).

    Args:
        prediction: the predicted answer text.
        truth: one gold answer text.
        version_2: use the SQuAD v2.0 rule for empty answers: if either normalised token list
            is empty, F1 is 1.0 when both are empty and 0.0 otherwise. The v1.1 script has no
            such rule, so two empty answers score 0.0 there (they share no token).
    """
    pred_tokens = normalize_answer(prediction).split()
    truth_tokens = normalize_answer(truth).split()
    if version_2 and (not pred_tokens or not truth_tokens):
        return float(pred_tokens == truth_tokens)
    common = Counter(pred_tokens) & Counter(truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def primary_qa_metric(version_2: bool) -> str:
    """Return the metric key used for SQuAD in tables and plots: ``"f1"`` for both versions."""
    return "f1"


def _format_ids(ids: Sequence[str]) -> str:
    """Show the first few ``ids`` for an error message."""
    shown = ", ".join(repr(i) for i in ids[:_MAX_IDS_SHOWN])
    more = f", ... ({len(ids) - _MAX_IDS_SHOWN} more)" if len(ids) > _MAX_IDS_SHOWN else ""
    return shown + more


def _check_ids(reference_ids: Sequence[str], given: Mapping[str, object], what: str) -> None:
    """Raise ``ValueError`` if ``given`` lacks a reference id or has ids beyond them."""
    missing = [qid for qid in reference_ids if qid not in given]
    if missing:
        raise ValueError(f"{what} missing for {len(missing)} of {len(reference_ids)} questions: {_format_ids(missing)}")
    known = set(reference_ids)
    extra = [qid for qid in given if qid not in known]
    if extra:
        raise ValueError(f"{what} given for {len(extra)} ids not in the references: {_format_ids(extra)}")


def _gold_answers(reference: Mapping, version_2: bool) -> tuple[str, list[str], bool]:
    """Return ``(id, gold texts, has_answer)`` of one reference, checked.

    For v2.0 the gold texts that normalise to nothing are dropped and an unanswerable question
    gets the gold ``[""]``; ``has_answer`` is whether the reference lists any answer (as the
    official script decides), cross-checked against ``is_impossible`` when present.
    """
    try:
        qid = reference["id"]
        texts = list(reference["answers"]["text"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"each reference needs 'id' and 'answers': {{'text': [...]}}, got {reference!r}") from exc
    if any(not isinstance(t, str) for t in texts):
        raise ValueError(f"answers of question {qid!r} must be strings, got {texts!r}")
    has_answer = bool(texts)
    if "is_impossible" in reference and bool(reference["is_impossible"]) == has_answer:
        raise ValueError(f"question {qid!r} has is_impossible={reference['is_impossible']!r} but {len(texts)} gold answers")
    if not version_2:
        if not has_answer:
            raise ValueError(f"question {qid!r} has no gold answer; SQuAD v1.1 needs at least one (use version_2=True for unanswerable questions)")
        return qid, texts, has_answer
    golds = [t for t in texts if normalize_answer(t)]
    return qid, golds or [""], has_answer


def _best_threshold(
    raw_scores: Mapping[str, float],
    null_scores: Mapping[str, float],
    predictions: Mapping[str, str],
    has_answer: Mapping[str, bool],
) -> tuple[float, float]:
    """Return the best aggregate score (0-100) over no-answer thresholds, and its threshold.

    This is the official v2.0 ``find_best_thresh``: a question is answered (keeps its
    prediction) when its null score is at most the threshold and otherwise predicted
    unanswerable. Starting below every null score (all questions unanswered: only the
    unanswerable ones score), the questions are taken in increasing null score, each one
    switched to its prediction in turn; the threshold is the null score of the question after
    which the running total was highest (0.0 if none beats answering nothing). Ties in the
    null scores are taken one question at a time in reference order, as the official script
    does.
    """
    current = float(sum(1 for answerable in has_answer.values() if not answerable))
    best, best_thresh = current, 0.0
    for qid in sorted(raw_scores, key=lambda q: null_scores[q]):
        if has_answer[qid]:
            current += raw_scores[qid]
        elif predictions[qid]:
            current -= 1.0
        if current > best:
            best, best_thresh = current, float(null_scores[qid])
    return 100.0 * best / len(raw_scores), best_thresh


def compute_squad_metrics(
    predictions: Mapping[str, str],
    references: Sequence[Mapping],
    *,
    version_2: bool = False,
    null_scores: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Compute the SQuAD metrics of a set of predicted answer texts.

    Args:
        predictions: the predicted answer text of every question, by id (``""`` predicts
            "unanswerable" in v2.0).
        references: one mapping per question with ``id`` and ``answers`` (``{"text": [...]}``,
            as in the ``squad``/``squad_v2`` datasets) and optionally ``is_impossible``, which
            must agree with whether ``answers`` is empty.
        version_2: score with the SQuAD v2.0 rules and keys.
        null_scores: v2.0 only: a score per question id that grows with the model's belief
            that the question is unanswerable (e.g. ``QAPredictions.null_scores``, the null
            score minus the best span score). When given, the best no-answer threshold is
            searched as the official script does. The main ``exact`` and ``f1`` use
            ``predictions`` as they are: no threshold is applied to them here.

    Returns:
        v1.1: ``exact_match`` and ``f1`` (0-100) and ``total`` (the number of questions).
        v2.0: ``exact``, ``f1``, ``total``; ``HasAns_exact``, ``HasAns_f1``, ``HasAns_total``
        when some question is answerable; ``NoAns_exact``, ``NoAns_f1``, ``NoAns_total`` when
        some is not (the official script and ``evaluate`` omit an empty split the same way);
        and with ``null_scores``: ``best_exact``, ``best_exact_thresh``, ``best_f1``,
        ``best_f1_thresh``. Totals are ints, every other value a float.

    Raises:
        ValueError: for no references, a malformed or duplicated reference, a v1.1 question
            without gold answers, a prediction (or null score) missing for some reference id
            or given for an id that is not in the references, null scores with v1.1, or
            non-string predictions or non-finite null scores.
    """
    if not references:
        raise ValueError("cannot compute SQuAD metrics without references")
    if null_scores is not None and not version_2:
        raise ValueError("null_scores are only used for SQuAD v2.0 (version_2=True)")

    golds: dict[str, list[str]] = {}
    has_answer: dict[str, bool] = {}
    for reference in references:
        qid, gold, answerable = _gold_answers(reference, version_2)
        if qid in golds:
            raise ValueError(f"duplicate question id {qid!r} in the references")
        golds[qid] = gold
        has_answer[qid] = answerable
    ids = list(golds)
    _check_ids(ids, predictions, "predictions")
    bad = [qid for qid in ids if not isinstance(predictions[qid], str)]
    if bad:
        raise ValueError(f"predictions must be strings; not for ids {_format_ids(bad)}")

    exact = {qid: max(exact_match_score(predictions[qid], gold) for gold in golds[qid]) for qid in ids}
    f1 = {qid: max(f1_score(predictions[qid], gold, version_2=version_2) for gold in golds[qid]) for qid in ids}

    def mean_percent(scores: dict[str, float], subset: list[str]) -> float:
        return 100.0 * sum(scores[qid] for qid in subset) / len(subset)

    if not version_2:
        return {
            "exact_match": mean_percent(exact, ids),
            "f1": mean_percent(f1, ids),
            "total": len(ids),
        }

    result: dict[str, float] = {
        "exact": mean_percent(exact, ids),
        "f1": mean_percent(f1, ids),
        "total": len(ids),
    }
    for prefix, subset in (
        ("HasAns", [qid for qid in ids if has_answer[qid]]),
        ("NoAns", [qid for qid in ids if not has_answer[qid]]),
    ):
        if subset:
            result[f"{prefix}_exact"] = mean_percent(exact, subset)
            result[f"{prefix}_f1"] = mean_percent(f1, subset)
            result[f"{prefix}_total"] = len(subset)

    if null_scores is not None:
        _check_ids(ids, null_scores, "null scores")
        not_finite = [qid for qid in ids if not math.isfinite(float(null_scores[qid]))]
        if not_finite:
            raise ValueError(f"null scores must be finite; not for ids {_format_ids(not_finite)}")
        result["best_exact"], result["best_exact_thresh"] = _best_threshold(exact, null_scores, predictions, has_answer)
        result["best_f1"], result["best_f1_thresh"] = _best_threshold(f1, null_scores, predictions, has_answer)
    logger.debug("SQuAD metrics over %d questions: %s", len(ids), result)
    return result
