"""SQuAD v1.1 / v2.0 task registry, loading, feature creation and batching.

Both tasks are described by a :class:`QATaskSpec`, kept as data in :data:`QA_TASKS`
(``squad`` and ``squad_v2``, named as the ``evaluate`` library names them).

:func:`load_qa_split` reads a split from a local folder holding the official SQuAD JSON files
(``train-v1.1.json``, ``dev-v1.1.json``, ``train-v2.0.json``, ``dev-v2.0.json``) or from the
Hugging Face hub (``rajpurkar/squad``, ``rajpurkar/squad_v2``) and returns one row per question
with the hub's ``squad`` columns either way: ``id``, ``title``, ``context``, ``question``,
``answers`` (``{"text": list[str], "answer_start": list[int32]}``), plus ``is_impossible``
(bool; always ``False`` for v1.1). Split names are those of :mod:`top.data`: ``train`` and
``validation``.

Every record is checked; a malformed one raises :class:`~top.data.DataError` naming the file,
the article and paragraph index and the question id. No question is ever skipped. The one
repair made is re-anchoring: an answer whose text is not found at its ``answer_start`` but does
occur elsewhere in the context is moved to the occurrence nearest ``answer_start``; the number
of such answers is logged once per file, as a single warning.

:func:`prepare_train_features` and :func:`prepare_eval_features` turn questions into model
features the standard way: ``[CLS] question [SEP] context window [SEP]``, the question cut to
``max_query_length`` tokens and a long context split into windows of at most ``max_length``
tokens that overlap by ``doc_stride`` tokens, so one question can give several features.
Features are not padded (:func:`collate_qa` pads each batch). Each carries ``protect_mask``:
1 for the tokens a pruning method must never drop ([CLS], the question and the separators),
0 for context tokens.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import torch

from top.data import DataError, SplitFiles, find_local_file, load_from_source, pad_token_lists

logger = logging.getLogger(__name__)

QA_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "protect_mask")
"""Token-level keys of a feature, padded by :func:`collate_qa` (``token_type_ids`` only for
tokenizers that use them)."""

LABEL_KEYS = ("start_positions", "end_positions")
"""Per-feature label keys of training features, stacked by :func:`collate_qa`."""

NO_OFFSET = (-1, -1)
"""``offset_mapping`` entry of a token that is not part of the context ([CLS], question,
separators): no answer may start or end there."""


@dataclass(frozen=True)
class QATaskSpec(SplitFiles):
    """Everything the harness needs to know about one extractive QA task.

    Attributes:
        name: task name as the ``evaluate`` library spells it (``squad``, ``squad_v2``).
        version_2: whether questions may be unanswerable (SQuAD 2.0).
        hub_dataset: hub repository that :func:`load_qa_split` reads with ``source="hub"``.
        local_files: ``(split, file name)`` pairs: the official SQuAD file of each split.
        dev_splits: the splits that evaluation reports on.
        max_length: maximum number of tokens per feature, special tokens included.
        doc_stride: number of context tokens shared by two consecutive windows of a context.
        max_query_length: maximum number of question tokens (special tokens excluded).
        metrics: metric keys reported (``exact_match`` and ``f1``, as the DESIGN names them).
        primary_metric: the metric that tables and plots use.
    """

    name: str
    version_2: bool
    hub_dataset: str
    local_files: tuple[tuple[str, str], ...]
    dev_splits: tuple[str, ...] = ("validation",)
    max_length: int = 384
    doc_stride: int = 128
    max_query_length: int = 64
    metrics: tuple[str, ...] = ("exact_match", "f1")
    primary_metric: str = "f1"

    def __post_init__(self) -> None:
        """Check that the registry entry is internally consistent."""
        unknown = set(self.dev_splits) - set(self.splits)
        if unknown:
            raise ValueError(f"{self.name}: dev splits {sorted(unknown)} have no local file")
        if self.primary_metric not in self.metrics:
            raise ValueError(f"{self.name}: primary metric {self.primary_metric!r} not in {self.metrics}")


QA_TASKS: dict[str, QATaskSpec] = {
    "squad": QATaskSpec(
        name="squad",
        version_2=False,
        hub_dataset="rajpurkar/squad",
        local_files=(("train", "train-v1.1.json"), ("validation", "dev-v1.1.json")),
    ),
    "squad_v2": QATaskSpec(
        name="squad_v2",
        version_2=True,
        hub_dataset="rajpurkar/squad_v2",
        local_files=(("train", "train-v2.0.json"), ("validation", "dev-v2.0.json")),
    ),
}
"""The extractive QA tasks by name."""

EXAMPLE_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "title": datasets.Value("string"),
        "context": datasets.Value("string"),
        "question": datasets.Value("string"),
        "answers": {
            "text": datasets.List(datasets.Value("string")),
            "answer_start": datasets.List(datasets.Value("int32")),
        },
        "is_impossible": datasets.Value("bool"),
    }
)
"""Features of the datasets that :func:`load_qa_split` returns (the hub's ``squad`` schema plus
``is_impossible``)."""


def get_qa_task(name: str) -> QATaskSpec:
    """Return the :class:`QATaskSpec` of task ``name``.

    Raises:
        ValueError: naming the known tasks, if ``name`` is not one of them.
    """
    try:
        return QA_TASKS[name]
    except KeyError:
        raise ValueError(f"unknown QA task {name!r}; expected one of {sorted(QA_TASKS)}") from None


def is_qa_task(name: str) -> bool:
    """Whether ``name`` is an extractive QA task (``squad``, ``squad_v2``)."""
    return name in QA_TASKS


# --------------------------------------------------------------------------------------------
# Loading and checking


class _Columns:
    """Accumulates checked questions as columns, with the bookkeeping the checks need."""

    def __init__(self, spec: QATaskSpec, source: str) -> None:
        self.spec = spec
        self.source = source
        self.columns: dict[str, list[Any]] = {key: [] for key in EXAMPLE_FEATURES}
        self.seen: dict[str, str] = {}  # question id -> where it was first seen
        self.answers = 0
        self.reanchored = 0

    def add(self, qa: Any, title: str, context: str, where: str) -> None:
        """Check one question record (official SQuAD keys) and append it.

        ``where`` locates the record for error messages (file, article, paragraph, position);
        the question id is appended to it once known.
        """
        if not isinstance(qa, Mapping):
            raise DataError(f"{where}: question must be a JSON object, got {type(qa).__name__}")
        qid = _require(qa, "id", str, where)
        where = f"{where} (id {qid!r})"
        if not qid:
            raise DataError(f"{where}: empty question id")
        if qid in self.seen:
            raise DataError(f"{where}: duplicate question id {qid!r}, first seen at {self.seen[qid]}")
        self.seen[qid] = where
        question = _require(qa, "question", str, where)
        if not question.strip():
            raise DataError(f"{where}: empty question text")
        answers = _require(qa, "answers", list, where)
        impossible = qa.get("is_impossible", None)
        if impossible is not None and not isinstance(impossible, bool):
            raise DataError(f"{where}: 'is_impossible' must be true or false, got {impossible!r}")
        if self.spec.version_2:
            if impossible is None:
                impossible = not answers
            if impossible and answers:
                raise DataError(
                    f"{where}: is_impossible is true but the question has {len(answers)} answer(s)"
                )
            if not impossible and not answers:
                raise DataError(f"{where}: answerable question (is_impossible false) has no answers")
        else:
            if impossible:
                raise DataError(
                    f"{where}: is_impossible is true, but SQuAD v1.1 has no unanswerable "
                    "questions (use the squad_v2 task for SQuAD 2.0 files)"
                )
            if not answers:
                raise DataError(f"{where}: question has no answers (every SQuAD v1.1 question has one)")
            impossible = False
        texts: list[str] = []
        starts: list[int] = []
        for position, answer in enumerate(answers):
            text, start = self._check_answer(answer, context, f"{where}, answer {position}")
            texts.append(text)
            starts.append(start)
        columns = self.columns
        columns["id"].append(qid)
        columns["title"].append(title)
        columns["context"].append(context)
        columns["question"].append(question)
        columns["answers"].append({"text": texts, "answer_start": starts})
        columns["is_impossible"].append(impossible)

    def _check_answer(self, answer: Any, context: str, where: str) -> tuple[str, int]:
        """Check one answer; return its text and (possibly re-anchored) start offset."""
        if not isinstance(answer, Mapping):
            raise DataError(f"{where}: answer must be a JSON object, got {type(answer).__name__}")
        text = _require(answer, "text", str, where)
        start = answer.get("answer_start", None)
        if start is None:
            raise DataError(f"{where}: missing key 'answer_start'")
        if isinstance(start, bool) or not isinstance(start, int):
            raise DataError(f"{where}: 'answer_start' must be an integer, got {start!r}")
        if not text.strip():
            raise DataError(f"{where}: empty answer text")
        if not 0 <= start < len(context):
            raise DataError(
                f"{where}: answer_start {start} is out of range for a context of "
                f"{len(context)} characters"
            )
        self.answers += 1
        if context.startswith(text, start):
            return text, start
        occurrences = _find_all(context, text)
        if not occurrences:
            raise DataError(f"{where}: answer text {text!r} does not occur in the context")
        self.reanchored += 1
        return text, min(occurrences, key=lambda found: (abs(found - start), found))

    def dataset(self, split: str) -> datasets.Dataset:
        """The collected questions as a dataset; warns once about re-anchored answers."""
        if not self.columns["id"]:
            raise DataError(f"{self.source}: no questions found")
        if self.reanchored:
            logger.warning(
                "%s: %d of %d answers were not found at their answer_start and were re-anchored "
                "to the nearest occurrence of their text in the context",
                self.source,
                self.reanchored,
                self.answers,
            )
        # Arrow builds the table directly: datasets' per-row encoding (Dataset.from_dict)
        # takes seconds for the 87,599 training questions.
        table = pa.Table.from_pydict(self.columns, schema=EXAMPLE_FEATURES.arrow_schema)
        return datasets.Dataset(table, info=datasets.DatasetInfo(features=EXAMPLE_FEATURES), split=split)


def _require(record: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    """``record[key]``, checked to be a ``kind``; DataError naming ``where`` otherwise."""
    if key not in record:
        raise DataError(f"{where}: missing key {key!r}")
    value = record[key]
    if not isinstance(value, kind):
        raise DataError(
            f"{where}: {key!r} must be a {_JSON_NAMES.get(kind, kind.__name__)}, "
            f"got {type(value).__name__}"
        )
    return value


_JSON_NAMES = {str: "string", list: "list", dict: "JSON object", Mapping: "JSON object"}


def _find_all(text: str, sub: str) -> list[int]:
    """Start offsets of every (possibly overlapping) occurrence of ``sub`` in ``text``."""
    found = []
    position = text.find(sub)
    while position != -1:
        found.append(position)
        position = text.find(sub, position + 1)
    return found


def _read_squad_json(spec: QATaskSpec, path: Path, split: str) -> datasets.Dataset:
    """Read and check one official SQuAD JSON file."""
    try:
        with path.open(encoding="utf-8") as handle:
            document = json.load(handle)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error})") from error
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error})") from error
    if not isinstance(document, Mapping):
        raise DataError(f"{path}: expected a JSON object with a 'data' list, got {type(document).__name__}")
    articles = _require(document, "data", list, str(path))
    if not articles:
        raise DataError(f"{path}: 'data' is empty: no articles")
    columns = _Columns(spec, str(path))
    for a, article in enumerate(articles):
        where = f"{path}, article {a}"
        if not isinstance(article, Mapping):
            raise DataError(f"{where}: article must be a JSON object, got {type(article).__name__}")
        title = _require(article, "title", str, where)
        paragraphs = _require(article, "paragraphs", list, where)
        for p, paragraph in enumerate(paragraphs):
            where = f"{path}, article {a} ({title!r}), paragraph {p}"
            if not isinstance(paragraph, Mapping):
                raise DataError(f"{where}: paragraph must be a JSON object, got {type(paragraph).__name__}")
            context = _require(paragraph, "context", str, where)
            if not context.strip():
                raise DataError(f"{where}: empty context")
            for q, qa in enumerate(_require(paragraph, "qas", list, where)):
                columns.add(qa, title, context, f"{where}, question {q}")
    dataset = columns.dataset(split)
    logger.info(
        "Read %d questions (%d articles) of %s/%s from %s",
        len(dataset), len(articles), spec.name, split, path,
    )
    return dataset


def _load_local(spec: QATaskSpec, split: str, data_dir: str | os.PathLike | None) -> datasets.Dataset:
    """Load ``split`` of ``spec`` from a folder holding the official SQuAD JSON files."""
    path = find_local_file(data_dir, spec.local_file(split), "SQuAD", spec.name, split, "the official SQuAD file name")
    return _read_squad_json(spec, path, split)


def _load_hub(spec: QATaskSpec, split: str) -> datasets.Dataset:
    """Load ``split`` of ``spec`` from the hub, checked like a local file."""
    spec.local_file(split)  # the same split names as locally; fails early on a typo
    hub = datasets.load_dataset(spec.hub_dataset, split=split)
    source = f"{spec.hub_dataset} split {split!r}"
    columns = _Columns(spec, source)
    for row_index, row in enumerate(hub):
        answers = row.get("answers") or {"text": [], "answer_start": []}
        texts, starts = answers.get("text", []), answers.get("answer_start", [])
        if len(texts) != len(starts):
            raise DataError(
                f"{source}, row {row_index} (id {row.get('id')!r}): "
                f"{len(texts)} answer texts but {len(starts)} answer starts"
            )
        qa = {
            "id": row.get("id"),
            "question": row.get("question"),
            "answers": [{"text": t, "answer_start": s} for t, s in zip(texts, starts)],
        }
        if "is_impossible" in row:
            qa["is_impossible"] = row["is_impossible"]
        where = f"{source}, row {row_index}"
        title = row.get("title")
        context = row.get("context")
        if not isinstance(title, str) or not isinstance(context, str) or not context.strip():
            raise DataError(f"{where} (id {row.get('id')!r}): missing title or context")
        columns.add(qa, title, context, where)
    dataset = columns.dataset(split)
    logger.info("Loaded %d questions of %s/%s from %s", len(dataset), spec.name, split, spec.hub_dataset)
    return dataset


def load_qa_split(
    task: str,
    split: str,
    source: str = "local",
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> datasets.Dataset:
    """Load one split of SQuAD v1.1 or v2.0, one row per question.

    Args:
        task: ``squad`` (v1.1) or ``squad_v2``.
        split: ``train`` or ``validation``.
        source: ``"local"`` to read the official JSON file from ``data_dir``
            (``train-v1.1.json``, ``dev-v1.1.json``, ``train-v2.0.json``, ``dev-v2.0.json``),
            or ``"hub"`` to download ``rajpurkar/squad`` / ``rajpurkar/squad_v2``.
        data_dir: the folder that holds the JSON files (only for ``"local"``).
        limit: if given, keep a random sample of this many questions, in file order; the same
            ``seed`` gives the same questions.
        seed: seed of the sample drawn for ``limit``.

    Returns:
        A dataset with columns ``id``, ``title``, ``context``, ``question``, ``answers``
        (``{"text": list[str], "answer_start": list[int32]}``: one answer per training
        question, usually several per dev question, none for an unanswerable question) and
        ``is_impossible`` (bool).

    The v2.0 key ``plausible_answers`` is ignored. An answer whose text is not at its
    ``answer_start`` but occurs elsewhere in the context is re-anchored to the occurrence
    nearest ``answer_start``; one warning per file gives the number re-anchored.

    Raises:
        DataError: if the folder or file is missing (naming the expected path), the file is
            not JSON, or a record is malformed: missing keys, wrong types, no articles or
            questions, an empty question, context or answer text, a duplicate question id, an
            ``answer_start`` out of range, an answer text that does not occur in the context,
            a v1.1 question without answers, or a v2.0 question whose ``is_impossible`` flag
            contradicts its answers. The message names the file, the article and paragraph
            index and the question id.
        ValueError: for an unknown task, split or source, or a limit below 1.
    """
    spec = get_qa_task(task)
    return load_from_source(source, lambda: _load_local(spec, split, data_dir), lambda: _load_hub(spec, split), limit, seed)


# --------------------------------------------------------------------------------------------
# Features


def _check_tokenizer(tokenizer: Any, max_length: int, doc_stride: int, max_query_length: int) -> None:
    """Refuse slow tokenizers and window sizes the tokenizer cannot honour."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"SQuAD features need a fast (Rust `tokenizers`) tokenizer for offset mappings and "
            f"overflowing windows; got {type(tokenizer).__name__} with is_fast=False"
        )
    if max_query_length < 1 or doc_stride < 0:
        raise ValueError(
            f"need max_query_length >= 1 and doc_stride >= 0, got {max_query_length} and {doc_stride}"
        )
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


def _inputs(
    encoded: Any, index: int, sequence_ids: list[int | None], with_types: bool
) -> dict[str, list[int]]:
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


def _answer_span(text: str, start: int) -> tuple[int, int]:
    """Character span ``[start, end)`` of an answer, leading/trailing whitespace excluded."""
    stripped = text.lstrip()
    start += len(text) - len(stripped)
    return start, start + len(stripped.rstrip())


def _check_columns(dataset: datasets.Dataset, needed: Iterable[str]) -> None:
    """Raise ``ValueError`` if ``dataset`` lacks one of the ``needed`` columns."""
    missing = sorted(set(needed) - set(dataset.column_names))
    if missing:
        raise ValueError(
            f"dataset lacks columns {missing}; expected one returned by load_qa_split "
            f"(got {dataset.column_names})"
        )


def _map(
    dataset: datasets.Dataset,
    function: Callable[[Mapping[str, list]], dict[str, list]],
    features: datasets.Features,
    desc: str,
) -> datasets.Dataset:
    """Apply a batched feature function, replacing every column of ``dataset``."""
    return dataset.map(
        function, batched=True, remove_columns=dataset.column_names, features=features, desc=desc
    )


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
        "%d training features from %d questions; %d labelled [CLS] (answer outside the window "
        "or unanswerable)",
        len(result), len(dataset), int((starts == 0).sum()),
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
        offsets = [
            list(offset) if sequence_id == 1 else no_offset
            for offset, sequence_id in zip(encoded["offset_mapping"][index], sequence)
        ]
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
