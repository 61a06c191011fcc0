"""SQuAD model features: windows, labels, ``protect_mask`` and batching.

:func:`prepare_train_features` and :func:`prepare_eval_features` turn the questions that
:func:`top.tasks.squad.load_qa_split` returns into model features the standard way:
``[CLS] question [SEP] context window [SEP]``, the question cut to ``max_query_length`` tokens
and a long context split into windows of at most ``max_length`` tokens that overlap by
``doc_stride`` tokens, so one question can give several features. Features are not padded
(:func:`collate_qa` pads each batch). Each carries ``protect_mask``: 1 for the tokens a pruning
method must never drop ([CLS], the question and the separators), 0 for context tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import datasets
import numpy as np
import torch

from top.tasks.sources import pad_token_lists

logger = logging.getLogger(__name__)

QA_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "protect_mask")
"""Token-level keys of a feature, padded by :func:`collate_qa` (``token_type_ids`` only for
tokenizers that use them)."""

LABEL_KEYS = ("start_positions", "end_positions")
"""Per-feature label keys of training features, stacked by :func:`collate_qa`."""

NO_OFFSET = (-1, -1)
"""``offset_mapping`` entry of a token that is not part of the context ([CLS], question,
separators): no answer may start or end there."""


def _check_tokenizer(tokenizer: Any, max_length: int, doc_stride: int, max_query_length: int) -> None:
    """Refuse slow tokenizers and window sizes the tokenizer cannot honour."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"SQuAD features need a fast (Rust `tokenizers`) tokenizer for offset mappings and "
            f"overflowing windows; got {type(tokenizer).__name__} with is_fast=False"
        )
    if max_query_length < 1 or doc_stride < 0:
        raise ValueError(f"need max_query_length >= 1 and doc_stride >= 0, got {max_query_length} and {doc_stride}")
    window = max_length - max_query_length - tokenizer.num_special_tokens_to_add(pair=True)
    if doc_stride >= window:
        raise ValueError(
            f"max_length={max_length} leaves at least {window} context tokens per window after a "
            f"question of max_query_length={max_query_length} tokens and the special tokens; "
            f"doc_stride={doc_stride} must be smaller than that (and the window at least 1)"
        )


def _truncate_questions(questions: Sequence[str], tokenizer: Any, max_query_length: int) -> list[str]:
    """Strip leading whitespace and cut each question to at most ``max_query_length`` tokens.

    A question is cut at the end of its ``max_query_length``-th token; cutting inside a word
    can re-tokenise differently, so the check is repeated until the question fits.
    """
    texts = [question.lstrip() for question in questions]
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    result = []
    for text, offsets in zip(texts, encoded):
        while len(offsets) > max_query_length:
            cut = min(offsets[max_query_length - 1][1], len(text) - 1)  # always shorter
            text = text[:cut].rstrip()
            offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        result.append(text)
    return result


def _window_features(
    batch: Mapping[str, list],
    tokenizer: Any,
    max_length: int,
    doc_stride: int,
    max_query_length: int,
    with_types: bool,
) -> tuple[Any, list[int], list[list[int | None]]]:
    """Tokenise a batch of questions into context windows.

    Returns the tokenizer's encoding, the example index of every feature and every feature's
    sequence ids (0 question, 1 context, ``None`` special tokens).
    """
    questions = _truncate_questions(batch["question"], tokenizer, max_query_length)
    encoded = tokenizer(
        questions,
        batch["context"],
        truncation="only_second",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        return_attention_mask=True,
        return_token_type_ids=with_types,
        padding=False,
    )
    sample_of = list(encoded["overflow_to_sample_mapping"])
    sequence_ids = [encoded.sequence_ids(i) for i in range(len(sample_of))]
    return encoded, sample_of, sequence_ids


def _uses_token_types(tokenizer: Any) -> bool:
    """Whether the tokenizer's models take ``token_type_ids`` (BERT yes, RoBERTa no)."""
    return "token_type_ids" in getattr(tokenizer, "model_input_names", ("token_type_ids",))


def _input_features(with_types: bool) -> dict[str, datasets.List]:
    """Features of the token-level columns."""
    keys = [key for key in QA_INPUT_KEYS if with_types or key != "token_type_ids"]
    return {key: datasets.List(datasets.Value("int32")) for key in keys}


def _inputs(encoded: Any, index: int, sequence_ids: list[int | None], with_types: bool) -> dict[str, list[int]]:
    """Token-level columns of feature ``index``, with its protect mask."""
    row = {
        "input_ids": encoded["input_ids"][index],
        "attention_mask": encoded["attention_mask"][index],
        "protect_mask": [0 if sequence_id == 1 else 1 for sequence_id in sequence_ids],
    }
    if with_types:
        row["token_type_ids"] = encoded["token_type_ids"][index]
    return row


def _cls_index(input_ids: list[int], tokenizer: Any) -> int:
    """Position of the classifier token (0 for BERT and RoBERTa)."""
    cls_id = getattr(tokenizer, "cls_token_id", None)
    if cls_id is not None and cls_id in input_ids:
        return input_ids.index(cls_id)
    return 0


def _answer_tokens(
    offsets: Sequence[Sequence[int]],
    sequence_ids: Sequence[int | None],
    start_char: int,
    end_char: int,
) -> tuple[int, int] | None:
    """First and last token of the answer ``[start_char, end_char)`` inside this window.

    ``None`` when the window does not hold the whole answer.
    """
    context = [i for i, sequence_id in enumerate(sequence_ids) if sequence_id == 1]
    if not context:
        return None
    if offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
        return None
    start = next(i for i in context if offsets[i][1] > start_char)
    end = next(i for i in reversed(context) if offsets[i][0] < end_char)
    return start, end


def answer_token_span(offset_mapping: Sequence[Sequence[int]], text: str, answer_start: int) -> tuple[int, int] | None:
    """First and last token of an answer inside an evaluation feature (as training labels are
    found: :func:`prepare_train_features`), or None when the feature's window does not hold the
    whole answer.

    Args:
        offset_mapping: the feature's ``[start, end]`` character span per token, :data:`NO_OFFSET`
            for tokens outside the context (:func:`prepare_eval_features`).
        text, answer_start: a gold answer and its character offset in the context; leading and
            trailing whitespace are left out.
    """
    start_char, end_char = _answer_span(text, answer_start)
    sequence_ids = [None if tuple(offset) == NO_OFFSET else 1 for offset in offset_mapping]
    return _answer_tokens(offset_mapping, sequence_ids, start_char, end_char)


def _answer_span(text: str, start: int) -> tuple[int, int]:
    """Character span ``[start, end)`` of an answer, leading/trailing whitespace excluded."""
    stripped = text.lstrip()
    start += len(text) - len(stripped)
    return start, start + len(stripped.rstrip())


def _check_columns(dataset: datasets.Dataset, needed: Iterable[str]) -> None:
    """Raise ``ValueError`` if ``dataset`` lacks one of the ``needed`` columns."""
    missing = sorted(set(needed) - set(dataset.column_names))
    if missing:
        raise ValueError(f"dataset lacks columns {missing}; expected one returned by load_qa_split (got {dataset.column_names})")


def _map(
    dataset: datasets.Dataset,
    function: Callable[[Mapping[str, list]], dict[str, list]],
    features: datasets.Features,
    desc: str,
) -> datasets.Dataset:
    """Apply a batched feature function, replacing every column of ``dataset``."""
    return dataset.map(function, batched=True, remove_columns=dataset.column_names, features=features, desc=desc)


def _map_windows(
    dataset: datasets.Dataset,
    tokenizer: Any,
    window: tuple[int, int, int],
    with_types: bool,
    features: datasets.Features,
    extra: Callable[..., dict[str, Any]],
    desc: str,
) -> datasets.Dataset:
    """One row per context window of every question: the model inputs (:func:`_inputs`) plus
    ``extra(batch, encoded, index, sample, sequence_ids)``'s columns for window ``index`` of
    question ``sample``; ``window`` is ``(max_length, doc_stride, max_query_length)``."""

    def tokenize(batch: Mapping[str, list]) -> dict[str, list]:
        encoded, sample_of, sequence_ids = _window_features(batch, tokenizer, *window, with_types)
        out: dict[str, list] = {key: [] for key in features}
        for index, (sample, sequence) in enumerate(zip(sample_of, sequence_ids)):
            row = {**_inputs(encoded, index, sequence, with_types), **extra(batch, encoded, index, sample, sequence)}
            for key, value in row.items():
                out[key].append(value)
        return out

    return _map(dataset, tokenize, features, desc)


def prepare_train_features(
    dataset: datasets.Dataset,
    tokenizer: Any,
    max_length: int = 384,
    doc_stride: int = 128,
    max_query_length: int = 64,
) -> datasets.Dataset:
    """Tokenise questions from :func:`load_qa_split` into labelled training features.

    Each question gives one feature per context window: ``[CLS] question [SEP] window [SEP]``
    with at most ``max_length`` tokens, the question (leading whitespace stripped) cut to
    ``max_query_length`` tokens, consecutive windows sharing ``doc_stride`` context tokens.

    Args:
        dataset: rows with ``question``, ``context``, ``answers`` and ``is_impossible``.
        tokenizer: a fast (Rust-backed) tokenizer, e.g. ``BertTokenizerFast``.
        max_length: maximum tokens per feature, special tokens included.
        doc_stride: context tokens shared by consecutive windows of one context.
        max_query_length: maximum question tokens.

    Returns:
        A dataset with one row per feature, unpadded (lengths ``L <= max_length``):
        ``input_ids``, ``attention_mask``, ``token_type_ids`` (omitted for tokenizers without
        token types, e.g. RoBERTa's) and ``protect_mask`` (int32 lists of length ``L``;
        ``protect_mask`` is 1 on [CLS], question tokens and separators, 0 on context tokens),
        and ``start_positions``/``end_positions`` (int64): the token indices of the first
        answer's first and last token when the window holds the whole answer, else the
        [CLS] position (0) for both, as for unanswerable questions. The answer's span is
        taken without leading or trailing whitespace; an answer boundary that falls inside a
        token (``"8th"`` anchored in ``"18th"``) gives the smallest token span covering it.

    Raises:
        ValueError: for a slow tokenizer, a ``doc_stride`` that leaves windows no room to
            advance, or a dataset without the needed columns.
    """
    _check_tokenizer(tokenizer, max_length, doc_stride, max_query_length)
    _check_columns(dataset, ("question", "context", "answers", "is_impossible"))
    with_types = _uses_token_types(tokenizer)
    features = datasets.Features(
        {
            **_input_features(with_types),
            "start_positions": datasets.Value("int64"),
            "end_positions": datasets.Value("int64"),
        }
    )

    def labels(batch, encoded, index, sample, sequence) -> dict[str, int]:
        cls = _cls_index(encoded["input_ids"][index], tokenizer)
        answers = batch["answers"][sample]
        span = None
        if not batch["is_impossible"][sample] and answers["text"]:
            start_char, end_char = _answer_span(answers["text"][0], answers["answer_start"][0])
            span = _answer_tokens(encoded["offset_mapping"][index], sequence, start_char, end_char)
        start, end = span if span is not None else (cls, cls)
        return {"start_positions": start, "end_positions": end}

    window = (max_length, doc_stride, max_query_length)
    result = _map_windows(dataset, tokenizer, window, with_types, features, labels, "Preparing SQuAD training features")
    starts = np.asarray(result["start_positions"]) if len(result) else np.zeros(0)
    logger.info(
        "%d training features from %d questions; %d labelled [CLS] (answer outside the window or unanswerable)",
        len(result),
        len(dataset),
        int((starts == 0).sum()),
    )
    return result


def prepare_eval_features(
    dataset: datasets.Dataset,
    tokenizer: Any,
    max_length: int = 384,
    doc_stride: int = 128,
    max_query_length: int = 64,
) -> datasets.Dataset:
    """Tokenise questions from :func:`load_qa_split` into evaluation features.

    The windows are those of :func:`prepare_train_features` (same arguments, same tokens).

    Returns:
        A dataset with one row per feature, unpadded: ``input_ids``, ``attention_mask``,
        ``token_type_ids`` (when the tokenizer uses them), ``protect_mask`` (as in
        :func:`prepare_train_features`), ``example_id`` (the question's ``id``) and
        ``offset_mapping``: one ``[start, end]`` pair per token, the character span of a
        context token in the question's ``context`` (``context[start:end]``), or
        :data:`NO_OFFSET` ``[-1, -1]`` for every token outside the context ([CLS], question,
        separators), where no answer may start or end.

    Raises:
        ValueError: as :func:`prepare_train_features`.
    """
    _check_tokenizer(tokenizer, max_length, doc_stride, max_query_length)
    _check_columns(dataset, ("id", "question", "context"))
    with_types = _uses_token_types(tokenizer)
    features = datasets.Features(
        {
            **_input_features(with_types),
            "example_id": datasets.Value("string"),
            "offset_mapping": datasets.List(datasets.List(datasets.Value("int32"), length=2)),
        }
    )
    no_offset = list(NO_OFFSET)

    def references(batch, encoded, index, sample, sequence) -> dict[str, Any]:
        offsets = [list(offset) if sequence_id == 1 else no_offset for offset, sequence_id in zip(encoded["offset_mapping"][index], sequence)]
        return {"example_id": batch["id"][sample], "offset_mapping": offsets}

    window = (max_length, doc_stride, max_query_length)
    result = _map_windows(dataset, tokenizer, window, with_types, features, references, "Preparing SQuAD evaluation features")
    logger.info("%d evaluation features from %d questions", len(result), len(dataset))
    return result


def collate_qa(features: Sequence[Mapping[str, Any]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Stack QA features into a batch, right-padding to the longest feature.

    ``input_ids`` are padded with ``pad_token_id``; ``attention_mask``, ``token_type_ids`` and
    ``protect_mask`` (each when present) with 0; all come back as int64 tensors ``[B, L]``.
    ``start_positions`` and ``end_positions``, when present, become int64 tensors ``[B]``.
    Other keys (``example_id``, ``offset_mapping``, text) are not model inputs and are left
    out.

    Raises:
        ValueError: for an empty list, features with different keys, or a feature whose
            token-level lists differ in length from its ``input_ids``.
    """
    if not features:
        raise ValueError("cannot collate an empty list of QA features")
    first = features[0]
    if "input_ids" not in first:
        raise ValueError(f"features need 'input_ids'; got keys {sorted(first)}")
    keys = [key for key in QA_INPUT_KEYS if key in first]
    labels = [key for key in LABEL_KEYS if key in first]
    for position, feature in enumerate(features):
        absent = [key for key in (*keys, *labels) if key not in feature]
        if absent:
            raise ValueError(f"feature {position} lacks {absent}, which feature 0 has")
    batch = pad_token_lists(features, keys, pad_token_id, "feature")
    for key in labels:
        batch[key] = torch.as_tensor([int(f[key]) for f in features], dtype=torch.long)
    return batch
