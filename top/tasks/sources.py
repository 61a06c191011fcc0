"""Where task data comes from, for GLUE and SQuAD alike: local files or the Hugging Face hub.

:func:`load_from_source` picks the local reader or the hub loader and draws the seeded
``limit``-row sample; :func:`find_local_file` names what is missing from a local folder;
:class:`SplitFiles` maps a task's split names to how each is stored locally;
:func:`pad_token_lists` right-pads token-level lists into batch tensors. A malformed file raises
:class:`DataError`, naming the file and row.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """A GLUE or SQuAD data file or directory is missing or does not have the expected format."""


def not_utf8_message(path: str | os.PathLike) -> str:
    """Where ``path`` stops being UTF-8: ``"PATH, line N: byte 0xXX is not UTF-8 ..."``, for a
    :class:`DataError` raised when decoding failed (the decoder itself only knows a position in
    its buffer, not the line)."""
    data = Path(path).read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        byte = data[error.start]
        return (
            f"{path}, line {line}: byte 0x{byte:02x} is not UTF-8 ({error.reason}); the file must be UTF-8 text: "
            "re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8) or download it again"
        )
    return f"{path}: not UTF-8 text; re-save it as UTF-8 or download it again"


class SplitFiles:
    """Split lookup shared by the task registries: ``local_files`` holds ``(split, entry)``
    pairs, where ``entry`` says how the split is stored locally."""

    name: str
    local_files: tuple[tuple[str, Any], ...]

    @property
    def splits(self) -> tuple[str, ...]:
        """All split names of the task."""
        return tuple(split for split, _ in self.local_files)

    def local_file(self, split: str) -> Any:
        """Return the local storage entry of ``split``.

        Raises:
            ValueError: if the task has no such split.
        """
        for name, entry in self.local_files:
            if name == split:
                return entry
        raise ValueError(f"task {self.name!r} has no split {split!r}; expected one of {self.splits}")


def find_local_file(data_dir: str | os.PathLike | None, relative: str, collection: str, task: str, split: str, layout: str) -> Path:
    """``data_dir / relative``, or a :class:`DataError` naming what is missing and the
    expected layout (``DATA_DIR/relative (layout)``)."""
    expected = f"DATA_DIR/{relative} ({layout})"
    if data_dir is None:
        raise DataError(f"source='local' needs data_dir, the folder that holds {expected}")
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"{collection} data directory {root} does not exist; expected {expected}")
    path = root / relative
    if not path.is_file():
        raise DataError(f"{task} split {split!r}: file {path} not found; expected {expected}")
    return path


def _subset(dataset: datasets.Dataset, limit: int, seed: int) -> datasets.Dataset:
    """A seeded random sample of ``limit`` rows, kept in their original order."""
    if limit < 1:
        raise ValueError(f"limit must be a positive number of rows, got {limit}")
    if limit >= len(dataset):
        logger.info("limit %d >= %d rows: keeping every row", limit, len(dataset))
        return dataset
    rng = np.random.default_rng(seed)
    indices = np.sort(rng.choice(len(dataset), size=limit, replace=False))
    return dataset.select(indices.tolist())


def load_from_source(
    source: str,
    local: Callable[[], datasets.Dataset],
    hub: Callable[[], datasets.Dataset],
    limit: int | None,
    seed: int,
) -> datasets.Dataset:
    """``local()`` or ``hub()`` as ``source`` says, then the seeded ``limit``-row sample
    (:func:`_subset`) when ``limit`` is given.

    Raises:
        ValueError: for a source other than ``"local"`` or ``"hub"``.
    """
    if source == "local":
        dataset = local()
    elif source == "hub":
        dataset = hub()
    else:
        raise ValueError(f"unknown source {source!r}; expected 'local' or 'hub'")
    if limit is not None:
        dataset = _subset(dataset, limit, seed)
    return dataset


def pad_token_lists(features: Sequence[Mapping[str, Any]], keys: Sequence[str], pad_token_id: int, noun: str) -> dict[str, torch.Tensor]:
    """Right-pad the token-level lists ``keys`` of every feature into int64 tensors ``[B, L]``:
    ``input_ids`` with ``pad_token_id``, every other key with 0.

    Raises:
        ValueError: naming the ``noun`` (``example``, ``feature``) whose list for some key
            differs in length from its ``input_ids``.
    """
    sequences = {key: [torch.as_tensor(f[key], dtype=torch.long) for f in features] for key in keys}
    for position, ids in enumerate(sequences["input_ids"]):
        for key in keys:
            if sequences[key][position].shape != ids.shape:
                raise ValueError(
                    f"{noun} {position}: {key} has shape {tuple(sequences[key][position].shape)} but input_ids has shape {tuple(ids.shape)}"
                )
    return {key: pad_sequence(values, batch_first=True, padding_value=pad_token_id if key == "input_ids" else 0) for key, values in sequences.items()}
