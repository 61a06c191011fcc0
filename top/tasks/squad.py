"""SQuAD v1.1 / v2.0: the task registry, and reading and checking the official JSON.

Both tasks are described by a :class:`SquadSpec`, kept as data in :data:`SPECS` (``squad`` and
``squad_v2``, named as the ``evaluate`` library names them).

:func:`load_qa_split` reads a split from a local folder holding the official SQuAD JSON files
(``train-v1.1.json``, ``dev-v1.1.json``, ``train-v2.0.json``, ``dev-v2.0.json``) or from the
Hugging Face hub (``rajpurkar/squad``, ``rajpurkar/squad_v2``) and returns one row per question
with the hub's ``squad`` columns either way: ``id``, ``title``, ``context``, ``question``,
``answers`` (``{"text": list[str], "answer_start": list[int32]}``), plus ``is_impossible``
(bool; always ``False`` for v1.1). Split names are those of :mod:`top.tasks.glue`: ``train`` and
``validation``.

Every record is checked; a malformed one raises :class:`~top.tasks.sources.DataError` naming the
file, the article and paragraph index and the question id. No question is ever skipped. The one
repair made is re-anchoring: an answer whose text is not found at its ``answer_start`` but does
occur elsewhere in the context is moved to the occurrence nearest ``answer_start``; the number
of such answers is logged once per file, as a single warning.

Model features are built by :mod:`top.tasks.squad_features`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa

from top.tasks import SQUAD_TASKS
from top.tasks.sources import DataError, SplitFiles, find_local_file, load_from_source, not_utf8_message

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SquadSpec(SplitFiles):
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
        metrics: metric keys reported (``exact_match`` and ``f1``, as docs/design.md names them).
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


SPECS: dict[str, SquadSpec] = {
    "squad": SquadSpec(
        name="squad",
        version_2=False,
        hub_dataset="rajpurkar/squad",
        local_files=(("train", "train-v1.1.json"), ("validation", "dev-v1.1.json")),
    ),
    "squad_v2": SquadSpec(
        name="squad_v2",
        version_2=True,
        hub_dataset="rajpurkar/squad_v2",
        local_files=(("train", "train-v2.0.json"), ("validation", "dev-v2.0.json")),
    ),
}
"""The extractive QA tasks by name."""
if tuple(SPECS) != SQUAD_TASKS:
    raise ImportError(f"top.tasks.squad.SPECS {tuple(SPECS)} must list top.tasks.SQUAD_TASKS {SQUAD_TASKS}")

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


def get_spec(name: str) -> SquadSpec:
    """Return the :class:`SquadSpec` of task ``name``.

    Raises:
        ValueError: naming the known tasks, if ``name`` is not one of them.
    """
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(f"unknown QA task {name!r}; expected one of {sorted(SPECS)}") from None


# --------------------------------------------------------------------------------------------
# Loading and checking


class _Columns:
    """Accumulates checked questions as columns, with the bookkeeping the checks need."""

    def __init__(self, spec: SquadSpec, source: str) -> None:
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
                raise DataError(f"{where}: is_impossible is true but the question has {len(answers)} answer(s)")
            if not impossible and not answers:
                raise DataError(f"{where}: answerable question (is_impossible false) has no answers")
        else:
            if impossible:
                raise DataError(
                    f"{where}: is_impossible is true, but SQuAD v1.1 has no unanswerable questions (use the squad_v2 task for SQuAD 2.0 files)"
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
            raise DataError(f"{where}: answer_start {start} is out of range for a context of {len(context)} characters")
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
        raise DataError(f"{where}: {key!r} must be a {_JSON_NAMES.get(kind, kind.__name__)}, got {type(value).__name__}")
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


def _check_version(spec: SquadSpec, document: Mapping[str, Any], path: Path) -> None:
    """The file's ``version`` field (official files: ``"1.1"``, ``"v2.0"``) must be the task's
    SQuAD version; a file without one is read as the task says."""
    if "version" not in document:
        return
    version = document["version"]
    found = str(version).strip().lstrip("vV")
    expected = "2.0" if spec.version_2 else "1.1"
    if found != expected:
        other = "squad" if spec.version_2 else "squad_v2"
        raise DataError(
            f"{path}: 'version' is {version!r}, but task {spec.name!r} reads SQuAD {expected} files: this is a SQuAD "
            f"{found} file under a {expected} name; put the official SQuAD {expected} file here (or run the task {other!r} "
            f"on this file)"
        )


def _parse_squad_json(spec: SquadSpec, path: Path) -> tuple[_Columns, int]:
    """Read and check one official SQuAD JSON file: its questions, and the number of articles."""
    try:
        with path.open(encoding="utf-8") as handle:
            document = json.load(handle)
    except json.JSONDecodeError as error:
        truncated = " (it ends early: truncated, e.g. by an interrupted download)" if not error.doc.rstrip().endswith("}") else ""
        raise DataError(f"{path}: not valid JSON{truncated}: {error}; download the file again") from error
    except UnicodeDecodeError as error:
        raise DataError(not_utf8_message(path)) from error
    if not isinstance(document, Mapping):
        raise DataError(f"{path}: expected a JSON object with a 'data' list, got {type(document).__name__}")
    _check_version(spec, document, path)
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
    if not columns.columns["id"]:
        raise DataError(f"{path}: no questions found")
    return columns, len(articles)


def _read_squad_json(spec: SquadSpec, path: Path, split: str) -> datasets.Dataset:
    """Read and check one official SQuAD JSON file."""
    columns, articles = _parse_squad_json(spec, path)
    dataset = columns.dataset(split)
    logger.info(
        "Read %d questions (%d articles) of %s/%s from %s",
        len(dataset),
        articles,
        spec.name,
        split,
        path,
    )
    return dataset


def local_path(task: str, split: str, data_dir: str | os.PathLike | None) -> Path:
    """Where ``split`` of ``task`` lies in a folder of official SQuAD files; :class:`DataError`
    naming the expected file if it is not there."""
    spec = get_spec(task)
    return find_local_file(data_dir, spec.local_file(split), "SQuAD", spec.name, split, "the official SQuAD file name")


def check_local_file(task: str, split: str, path: str | os.PathLike) -> int:
    """Read ``path`` as ``split`` of ``task`` exactly as :func:`load_qa_split` does (every
    record checked) without building a dataset; return the number of questions.

    Raises:
        DataError: as :func:`load_qa_split`.
    """
    columns, _ = _parse_squad_json(get_spec(task), Path(path))
    return len(columns.columns["id"])


def _load_local(spec: SquadSpec, split: str, data_dir: str | os.PathLike | None) -> datasets.Dataset:
    """Load ``split`` of ``spec`` from a folder holding the official SQuAD JSON files."""
    return _read_squad_json(spec, local_path(spec.name, split, data_dir), split)


def _load_hub(spec: SquadSpec, split: str) -> datasets.Dataset:
    """Load ``split`` of ``spec`` from the hub, checked like a local file."""
    spec.local_file(split)  # the same split names as locally; fails early on a typo
    hub = datasets.load_dataset(spec.hub_dataset, split=split)
    source = f"{spec.hub_dataset} split {split!r}"
    columns = _Columns(spec, source)
    for row_index, row in enumerate(hub):
        answers = row.get("answers") or {"text": [], "answer_start": []}
        texts, starts = answers.get("text", []), answers.get("answer_start", [])
        if len(texts) != len(starts):
            raise DataError(f"{source}, row {row_index} (id {row.get('id')!r}): {len(texts)} answer texts but {len(starts)} answer starts")
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
            not JSON (or not UTF-8), its ``version`` is not the task's (``1.1`` for ``squad``,
            ``2.0``/``v2.0`` for ``squad_v2``; a file without one is accepted), or a record is
            malformed: missing keys, wrong types, no articles or
            questions, an empty question, context or answer text, a duplicate question id, an
            ``answer_start`` out of range, an answer text that does not occur in the context,
            a v1.1 question without answers, or a v2.0 question whose ``is_impossible`` flag
            contradicts its answers. The message names the file, the article and paragraph
            index and the question id.
        ValueError: for an unknown task, split or source, or a limit below 1.
    """
    spec = get_spec(task)
    return load_from_source(source, lambda: _load_local(spec, split, data_dir), lambda: _load_hub(spec, split), limit, seed)
