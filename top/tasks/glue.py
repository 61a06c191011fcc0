"""GLUE task registry, loading, tokenisation and batching.

Every task is described by a :class:`GlueSpec`, kept as data in :data:`SPECS`: its text
columns, label names, maximum sequence length, dev splits and how each split is stored in a
local copy of the GLUE download (``DATA_DIR/TASKDIR/{train,dev,test}.tsv``; MNLI has
``dev_matched.tsv``, ``dev_mismatched.tsv``, ``test_matched.tsv`` and ``test_mismatched.tsv``).

:func:`load_split` reads a split from that local layout or from the Hugging Face hub
(``nyu-mll/glue``) and returns the same columns either way: the task's text columns (named as
in the hub's ``glue`` dataset), ``label`` (class id, or float score for STS-B; ``-1`` for
unlabelled test splits) and ``idx``. Split names are the hub's: ``train``, ``validation``,
``test`` (MNLI: ``validation_matched``, ``validation_mismatched``, ``test_matched``,
``test_mismatched``).

Local TSVs are read with quoting turned off (``csv.QUOTE_NONE``): GLUE sentences contain
unbalanced quote characters that a quoting reader would silently swallow. Files are decoded as
``utf-8-sig`` so that the byte-order mark at the start of the MRPC files does not end up in
the first column name. Malformed files raise :class:`DataError`; no row is ever skipped.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

from top.tasks import GLUE_TASKS
from top.tasks.sources import DataError, SplitFiles, find_local_file, load_from_source, not_utf8_message, pad_token_lists

logger = logging.getLogger(__name__)

HUB_DATASET = "nyu-mll/glue"
"""Hub repository that :func:`load_split` reads with ``source="hub"``."""

UNLABELLED = -1
"""Label given to every row of a test split (GLUE test files carry no labels)."""

MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
"""Token-level keys that :func:`encode` adds and :func:`collate` pads."""
PROTECT_KEY = "protect_mask"
"""The token-level key :func:`encode` adds with ``protect_separators`` (the tokens the encoder
never drops), padded by :func:`collate` when present."""


@dataclass(frozen=True)
class LocalFile:
    """How one split of a task is stored in the GLUE download layout.

    Attributes:
        filename: file name inside the task's directory, e.g. ``dev.tsv``.
        text_fields: the file's columns holding the task's text fields, in the order of
            :attr:`GlueSpec.text_columns`.
        label_field: the file's label column, or ``None`` for unlabelled (test) files.
        columns: for files without a header row, the names given to their columns (the
            number of names is the number of columns every row must have); ``None`` when the
            first row of the file is its header.
    """

    filename: str
    text_fields: tuple[str, ...]
    label_field: str | None = None
    columns: tuple[str, ...] | None = None

    @property
    def has_header(self) -> bool:
        """Whether the first row of the file names its columns."""
        return self.columns is None


@dataclass(frozen=True)
class GlueSpec(SplitFiles):
    """Everything the harness needs to know about one GLUE task.

    Attributes:
        name: task name as the ``evaluate`` library and the hub's ``glue`` configs spell it.
        glue_dir: the task's directory in the GLUE download layout, e.g. ``SST-2``.
        text_columns: names of the text columns (those of the hub's ``glue`` dataset); one
            for single-sentence tasks, two for sentence-pair tasks.
        label_names: label strings as they appear in the local files, in the order of the
            hub's class ids (``label_names[i]`` is class ``i``); ``None`` for regression.
        local_files: ``(split, LocalFile)`` pairs for every split of the task.
        dev_splits: the splits that evaluation reports on.
        max_length: maximum number of tokens per example, special tokens included.
        label_range: for regression, the ``(low, high)`` interval every score of a local file
            must lie in (STS-B: 0 to 5); None: any finite number.
    """

    name: str
    glue_dir: str
    text_columns: tuple[str, ...]
    label_names: tuple[str, ...] | None
    local_files: tuple[tuple[str, LocalFile], ...]
    dev_splits: tuple[str, ...] = ("validation",)
    max_length: int = 128
    label_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        """Check that the registry entry is internally consistent."""
        for split, local in self.local_files:
            if len(local.text_fields) != len(self.text_columns):
                raise ValueError(f"{self.name}/{split}: {len(local.text_fields)} text fields for {len(self.text_columns)} text columns")
        unknown = set(self.dev_splits) - set(self.splits)
        if unknown:
            raise ValueError(f"{self.name}: dev splits {sorted(unknown)} have no local file")

    @property
    def is_regression(self) -> bool:
        """Whether the label is a real-valued score (STS-B) rather than a class id."""
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        """Size of the model's output layer: 1 for regression, else the number of classes."""
        return 1 if self.label_names is None else len(self.label_names)

    def features(self) -> datasets.Features:
        """Features of the datasets that :func:`load_split` returns for this task."""
        label = datasets.Value("float32" if self.is_regression else "int64")
        return datasets.Features(
            {
                **{column: datasets.Value("string") for column in self.text_columns},
                "label": label,
                "idx": datasets.Value("int64"),
            }
        )


def _standard_files(
    text_fields: tuple[str, ...],
    label_field: str,
    test_text_fields: tuple[str, ...] | None = None,
) -> tuple[tuple[str, LocalFile], ...]:
    """Files of a task stored as ``train.tsv``, ``dev.tsv`` and an unlabelled ``test.tsv``."""
    return (
        ("train", LocalFile("train.tsv", text_fields, label_field)),
        ("validation", LocalFile("dev.tsv", text_fields, label_field)),
        ("test", LocalFile("test.tsv", test_text_fields or text_fields)),
    )


_COLA_COLUMNS = ("source", "label", "mark", "sentence")
_PAIR = ("sentence1", "sentence2")
_BINARY = ("0", "1")
_ENTAILMENT = ("entailment", "not_entailment")

_TASK_LIST = (
    GlueSpec(
        name="cola",
        glue_dir="CoLA",
        text_columns=("sentence",),
        label_names=_BINARY,
        # train/dev have no header: source code, label, original acceptability mark, sentence.
        local_files=(
            ("train", LocalFile("train.tsv", ("sentence",), "label", _COLA_COLUMNS)),
            ("validation", LocalFile("dev.tsv", ("sentence",), "label", _COLA_COLUMNS)),
            ("test", LocalFile("test.tsv", ("sentence",))),
        ),
    ),
    GlueSpec(
        name="sst2",
        glue_dir="SST-2",
        text_columns=("sentence",),
        label_names=_BINARY,
        local_files=_standard_files(("sentence",), "label"),
    ),
    GlueSpec(
        name="mrpc",
        glue_dir="MRPC",
        text_columns=_PAIR,
        label_names=_BINARY,
        local_files=_standard_files(("#1 String", "#2 String"), "Quality"),
    ),
    GlueSpec(
        name="stsb",
        glue_dir="STS-B",
        text_columns=_PAIR,
        label_names=None,
        local_files=_standard_files(_PAIR, "score"),
        label_range=(0.0, 5.0),  # similarity scores from 0 (unrelated) to 5 (equivalent)
    ),
    GlueSpec(
        name="qqp",
        glue_dir="QQP",
        text_columns=("question1", "question2"),
        label_names=_BINARY,
        local_files=_standard_files(("question1", "question2"), "is_duplicate"),
    ),
    GlueSpec(
        name="mnli",
        glue_dir="MNLI",
        text_columns=("premise", "hypothesis"),
        label_names=("entailment", "neutral", "contradiction"),
        local_files=(
            ("train", LocalFile("train.tsv", _PAIR, "gold_label")),
            ("validation_matched", LocalFile("dev_matched.tsv", _PAIR, "gold_label")),
            ("validation_mismatched", LocalFile("dev_mismatched.tsv", _PAIR, "gold_label")),
            ("test_matched", LocalFile("test_matched.tsv", _PAIR)),
            ("test_mismatched", LocalFile("test_mismatched.tsv", _PAIR)),
        ),
        dev_splits=("validation_matched", "validation_mismatched"),
    ),
    GlueSpec(
        name="qnli",
        glue_dir="QNLI",
        text_columns=("question", "sentence"),
        label_names=_ENTAILMENT,
        local_files=_standard_files(("question", "sentence"), "label"),
    ),
    GlueSpec(
        name="rte",
        glue_dir="RTE",
        text_columns=_PAIR,
        label_names=_ENTAILMENT,
        local_files=_standard_files(_PAIR, "label"),
    ),
    GlueSpec(
        name="wnli",
        glue_dir="WNLI",
        text_columns=_PAIR,
        label_names=_BINARY,
        local_files=_standard_files(_PAIR, "label"),
    ),
)

SPECS: dict[str, GlueSpec] = {spec.name: spec for spec in _TASK_LIST}
"""The GLUE tasks by name."""
if tuple(SPECS) != GLUE_TASKS:
    raise ImportError(f"top.tasks.glue.SPECS {tuple(SPECS)} must list top.tasks.GLUE_TASKS {GLUE_TASKS}")


def get_spec(name: str) -> GlueSpec:
    """Return the :class:`GlueSpec` of task ``name``.

    Raises:
        ValueError: naming the known tasks, if ``name`` is not one of them.
    """
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(f"unknown GLUE task {name!r}; expected one of {sorted(SPECS)}") from None


def _column_index(header: Sequence[str], field: str, path: Path) -> int:
    """Position of column ``field`` in ``header``; DataError naming the file if it is absent."""
    try:
        return list(header).index(field)
    except ValueError:
        raise DataError(f"{path}: header has no column {field!r}; found {list(header)}") from None


def _parse_label(spec: GlueSpec, value: str, path: Path, line: int) -> int | float:
    """Convert one label cell to a class id (or a finite float for regression)."""
    if spec.label_names is None:
        try:
            score = float(value)
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise DataError(f"{path}, line {line}: label {value!r} is not a finite number")
        if spec.label_range is not None and not spec.label_range[0] <= score <= spec.label_range[1]:
            low, high = spec.label_range
            raise DataError(
                f"{path}, line {line}: score {value!r} is outside {spec.name}'s range {low:g} to {high:g}; "
                f"the file is not {spec.glue_dir}'s (or was altered): use the GLUE download's {path.name}"
            )
        return score
    try:
        return spec.label_names.index(value)
    except ValueError:
        raise DataError(f"{path}, line {line}: unknown label {value!r}; allowed labels: {spec.label_names}") from None


def _read_tsv(spec: GlueSpec, local: LocalFile, path: Path) -> dict[str, list[Any]]:
    """Read one GLUE TSV into columns: the text columns, ``label`` and ``idx``."""
    text_columns: list[list[str]] = [[] for _ in spec.text_columns]
    labels: list[int | float] = []
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        try:
            if local.columns is None:
                header = next(reader, None)
                if header is None:
                    raise DataError(f"{path} is empty: expected a header row and data rows")
            else:
                header = list(local.columns)
            text_positions = [_column_index(header, field, path) for field in local.text_fields]
            label_position = None
            if local.label_field is not None:
                label_position = _column_index(header, local.label_field, path)
            for row in reader:
                line = reader.line_num
                if len(row) != len(header):
                    raise DataError(f"{path}, line {line}: expected {len(header)} tab-separated columns, found {len(row)}")
                for values, position in zip(text_columns, text_positions):
                    values.append(row[position])
                if label_position is None:
                    labels.append(UNLABELLED)
                else:
                    labels.append(_parse_label(spec, row[label_position], path, line))
        except csv.Error as error:
            raise DataError(f"{path}, line {reader.line_num}: {error}") from error
        except UnicodeDecodeError as error:
            raise DataError(not_utf8_message(path)) from error
    if not labels:
        raise DataError(f"{path} has no data rows")
    columns: dict[str, list[Any]] = dict(zip(spec.text_columns, text_columns))
    columns["label"] = labels
    columns["idx"] = list(range(len(labels)))
    return columns


def local_path(task: str, split: str, data_dir: str | os.PathLike | None) -> Path:
    """Where ``split`` of ``task`` lies in a local copy of the GLUE download; :class:`DataError`
    naming the expected layout if it is not there."""
    spec = get_spec(task)
    relative = f"{spec.glue_dir}/{spec.local_file(split).filename}"
    return find_local_file(data_dir, relative, "GLUE", spec.name, split, "the GLUE download script's layout")


def check_local_file(task: str, split: str, path: str | os.PathLike) -> int:
    """Read ``path`` as ``split`` of ``task`` exactly as :func:`load_split` does (every row
    parsed, every check made) without building a dataset; return the number of rows.

    Raises:
        DataError: as :func:`load_split`, naming the file and line.
    """
    spec = get_spec(task)
    return len(_read_tsv(spec, spec.local_file(split), Path(path))["idx"])


def _load_local(spec: GlueSpec, split: str, data_dir: str | os.PathLike | None) -> datasets.Dataset:
    """Load ``split`` of ``spec`` from a local copy of the GLUE download."""
    local = spec.local_file(split)
    path = local_path(spec.name, split, data_dir)
    columns = _read_tsv(spec, local, path)
    logger.info("Read %d rows of %s/%s from %s", len(columns["idx"]), spec.name, split, path)
    return datasets.Dataset.from_dict(columns, features=spec.features(), split=split)


def _load_hub(spec: GlueSpec, split: str) -> datasets.Dataset:
    """Load ``split`` of ``spec`` from the hub's ``glue`` dataset, with the local columns."""
    spec.local_file(split)  # the same split names as locally; fails early on a typo
    dataset = datasets.load_dataset(HUB_DATASET, spec.name, split=split)
    features = spec.features()
    dataset = dataset.select_columns(list(features)).cast(features)
    logger.info("Loaded %d rows of %s/%s from %s", len(dataset), spec.name, split, HUB_DATASET)
    return dataset


def load_split(
    task: str,
    split: str,
    source: str = "local",
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> datasets.Dataset:
    """Load one split of a GLUE task.

    Args:
        task: task name (``cola``, ``sst2``, ``mrpc``, ``stsb``, ``qqp``, ``mnli``, ``qnli``,
            ``rte``, ``wnli``).
        split: split name as on the hub: ``train``, ``validation``, ``test`` (MNLI:
            ``validation_matched``, ``validation_mismatched``, ``test_matched``,
            ``test_mismatched``).
        source: ``"local"`` to read ``data_dir`` in the GLUE download layout, or ``"hub"`` to
            download ``nyu-mll/glue``.
        data_dir: the folder that holds ``CoLA/``, ``SST-2/``, ... (only for ``"local"``).
        limit: if given, keep a random sample of this many rows, in file order; the same
            ``seed`` gives the same rows.
        seed: seed of the sample drawn for ``limit``.

    Returns:
        A dataset with the task's text columns, ``label`` (int64 class id, float32 score for
        STS-B, ``-1`` for test splits) and ``idx`` (the row's 0-based position in the split).

    Raises:
        DataError: if the local directory or file is missing or a file is malformed.
        ValueError: for an unknown task, split or source, or a limit below 1.
    """
    spec = get_spec(task)
    return load_from_source(source, lambda: _load_local(spec, split, data_dir), lambda: _load_hub(spec, split), limit, seed)


def encode(
    dataset: datasets.Dataset,
    tokenizer: Any,
    spec: GlueSpec,
    max_length: int | None = None,
    protect_separators: bool = False,
) -> datasets.Dataset:
    """Tokenise a dataset returned by :func:`load_split`.

    Adds ``input_ids``, ``attention_mask`` and ``token_type_ids`` (truncated to
    ``max_length``, default ``spec.max_length``, and not padded: :func:`collate` pads each
    batch) and ``labels``, a copy of ``label`` as int64 (float32 for regression). With
    ``protect_separators``, also ``protect_mask``: 1 on [CLS] (slot 0) and on every separator
    (``tokenizer.sep_token_id``), 0 elsewhere; the encoder never drops those tokens.
    """
    max_length = spec.max_length if max_length is None else max_length
    label_dtype = "float32" if spec.is_regression else "int64"
    features = dataset.features.copy()
    features.update(
        {
            **{key: datasets.List(datasets.Value("int32")) for key in MODEL_INPUT_KEYS},
            "labels": datasets.Value(label_dtype),
        }
    )
    if protect_separators:
        features[PROTECT_KEY] = datasets.List(datasets.Value("int32"))

    def tokenize(batch: Mapping[str, list]) -> dict[str, list]:
        encoded = tokenizer(
            *(batch[column] for column in spec.text_columns),
            truncation=True,
            max_length=max_length,
            return_attention_mask=True,
            return_token_type_ids=True,
        )
        out = {**{key: encoded[key] for key in MODEL_INPUT_KEYS}, "labels": batch["label"]}
        if protect_separators:
            out[PROTECT_KEY] = [[int(i == 0 or token == tokenizer.sep_token_id) for i, token in enumerate(ids)] for ids in encoded["input_ids"]]
        return out

    return dataset.map(tokenize, batched=True, features=features, desc=f"Tokenising {spec.name}")


def collate(features: Sequence[Mapping[str, Any]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Stack encoded examples into a batch, right-padding to the longest example.

    ``input_ids`` are padded with ``pad_token_id``, ``attention_mask``, ``token_type_ids`` and
    ``protect_mask`` (each when present) with 0; all come back as int64 tensors of shape ``[B, L]``.
    ``labels``, when present, become an int64 tensor (float32 if the labels are floats).
    Other keys (text, ``label``, ``idx``) are not model inputs and are left out.

    Raises:
        ValueError: for an empty list, or an example whose mask or token types differ in
            length from its ``input_ids``.
    """
    if not features:
        raise ValueError("cannot collate an empty list of examples")
    keys = [key for key in (*MODEL_INPUT_KEYS, PROTECT_KEY) if key in features[0]]
    if "input_ids" not in keys:
        raise ValueError(f"examples need 'input_ids'; got keys {sorted(features[0])}")
    batch = pad_token_lists(features, keys, pad_token_id, "example")
    if "labels" in features[0]:
        labels = np.asarray([f["labels"] for f in features])
        dtype = torch.float32 if labels.dtype.kind == "f" else torch.long
        batch["labels"] = torch.as_tensor(labels, dtype=dtype)
    return batch
