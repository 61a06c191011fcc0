"""Batching for training and evaluation: example lengths, length-grouped training batches,
and batches that carry the dataset indices of their rows.

Length grouping follows the Hugging Face Trainer's ``group_by_length``
(``transformers.trainer_pt_utils.get_length_grouped_indices``): every epoch the examples are
shuffled, cut into mega-batches of ``50 * batch_size`` (fewer when the dataset has under 200
batches, so that there are about four), each mega-batch is sorted by length, longest first, and
the longest example of the epoch is moved to the front, so that the first batch is the largest
one. Consecutive batches then hold rows of similar length (little padding), while the order
still changes every epoch and depends only on the generator, whose state the training loop
checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

#: Mega-batches hold this many batches (the Trainer's default, capped for small datasets).
MEGA_BATCH_MULT = 50

#: The batch key under which :func:`with_index` puts each row's dataset index (``[B]`` long).
INDEX_KEY = "index"


def example_lengths(data) -> list[int]:
    """The token count (``len(input_ids)``) of every example of ``data``, a ``datasets.Dataset``
    or a sequence of dicts with ``input_ids``."""
    if hasattr(data, "column_names"):
        return [len(ids) for ids in data["input_ids"]]
    return [len(row["input_ids"]) for row in data]


def length_grouped_indices(
    lengths: Sequence[int], batch_size: int, generator: torch.Generator | None = None, mega_batch_mult: int | None = None
) -> list[int]:
    """One epoch's order of example indices, grouped by length (module docstring).

    The same recipe and the same random draws as ``get_length_grouped_indices`` of transformers
    (a test checks it): one ``torch.randperm(len(lengths), generator=generator)`` per call.
    """
    if mega_batch_mult is None:
        mega_batch_mult = max(1, min(len(lengths) // (batch_size * 4), MEGA_BATCH_MULT))
    indices = torch.randperm(len(lengths), generator=generator)
    size = mega_batch_mult * batch_size
    megabatches = [indices[i : i + size].tolist() for i in range(0, len(lengths), size)]
    megabatches = [sorted(megabatch, key=lambda i: lengths[i], reverse=True) for megabatch in megabatches]
    longest = int(torch.argmax(torch.tensor([lengths[megabatch[0]] for megabatch in megabatches])))
    megabatches[0][0], megabatches[longest][0] = megabatches[longest][0], megabatches[0][0]
    return [i for megabatch in megabatches for i in megabatch]


class LengthGroupedSampler(Sampler[int]):
    """Yields :func:`length_grouped_indices` afresh every epoch, drawing from ``generator``."""

    def __init__(self, lengths: Sequence[int], batch_size: int, generator: torch.Generator):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.generator = generator

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        return iter(length_grouped_indices(self.lengths, self.batch_size, self.generator))


class IndexedDataset(Dataset):
    """``data`` whose items are ``(index, example)`` pairs, so that a batch knows its rows."""

    def __init__(self, data):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return index, self.data[index]

    def __getitems__(self, indices: list[int]) -> list[tuple[int, Any]]:
        fetch = getattr(self.data, "__getitems__", None)
        rows = fetch(indices) if fetch is not None else [self.data[i] for i in indices]
        return list(zip(indices, rows))


def with_index(collate: Callable[[list[dict]], dict[str, torch.Tensor]]) -> Callable[[list[tuple[int, dict]]], dict[str, torch.Tensor]]:
    """A collate function for :class:`IndexedDataset` items: ``collate``'s batch plus
    :data:`INDEX_KEY`, the rows' dataset indices ``[B]``."""

    def collate_indexed(items: list[tuple[int, dict]]) -> dict[str, torch.Tensor]:
        batch = collate([row for _, row in items])
        batch[INDEX_KEY] = torch.tensor([index for index, _ in items], dtype=torch.long)
        return batch

    return collate_indexed
