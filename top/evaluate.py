"""Prediction and evaluation in gather mode (tokens really removed), with per-example lengths.

Everything a results row needs comes from one pass over the dev set: predictions (for the
task metric) and each example's real per-layer token counts (for FLOPs, :mod:`top.measure.flops`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from top.batching import example_lengths
from top.encoder import Mode, PrunableModel
from top.train import model_inputs


@dataclass
class Predictions:
    """Model outputs over a dataset, in dataset order.

    Attributes:
        logits: ``[N, C]`` float32, or ``[N, W, 2]`` start/end logits of span extraction, where
            ``W`` is the longest example and positions past an example's real length are
            ``-inf``.
        labels: ``[N]`` (int class ids, or float targets for regression); None when the
            dataset has no labels (SQuAD's evaluation features).
        lengths_in, lengths_kept: ``[N, num_layers]`` int64 real token counts per layer.
    """

    logits: np.ndarray
    labels: np.ndarray | None
    lengths_in: np.ndarray
    lengths_kept: np.ndarray


@torch.inference_mode()
def predict(
    model: PrunableModel,
    dataset,
    collate: Callable[[list[dict]], dict[str, torch.Tensor]],
    *,
    batch_size: int = 64,
    mode: Mode = "gather",
    device: torch.device | str = "cpu",
    progress: bool = False,
    sort_by_length: bool = True,
) -> Predictions:
    """Run ``model`` over ``dataset`` (encoded examples, with or without ``labels``); the outputs
    are in dataset order.

    With ``sort_by_length`` (the default) the batches are formed from the examples sorted by
    length, longest first (little padding), and the outputs are put back in dataset order. An
    example's outputs do not depend on the batch it is padded into (up to rounding; a test
    checks it); span logits past an example's own length are ``-inf`` either way."""
    model.to(device).eval()
    order = None
    if sort_by_length:
        lengths = torch.tensor(example_lengths(dataset), dtype=torch.long)
        order = torch.argsort(lengths, descending=True, stable=True).numpy()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, sampler=None if order is None else order.tolist(), collate_fn=collate)
    logits, labels, lengths_in, lengths_kept = [], [], [], []
    for batch in tqdm(loader, desc="evaluate", disable=not progress, mininterval=10):
        out = model(**model_inputs(batch, torch.device(device)), mode=mode, record=False)
        block = out.logits.float()
        if block.dim() == 3:  # span logits: nothing past each example's own length
            past = torch.arange(block.shape[1], device=block.device)[None, :] >= batch["attention_mask"].to(block.device).sum(dim=1)[:, None]
            block = block.masked_fill(past[..., None], float("-inf"))
        logits.append(block.cpu().numpy())
        if "labels" in batch:
            labels.append(batch["labels"].numpy())
        lengths_in.append(out.lengths_in.cpu().numpy())
        lengths_kept.append(out.lengths_kept.cpu().numpy())
    result = Predictions(
        logits=_concatenate(logits),
        labels=np.concatenate(labels) if labels else None,
        lengths_in=np.concatenate(lengths_in).astype(np.int64),
        lengths_kept=np.concatenate(lengths_kept).astype(np.int64),
    )
    if order is not None:
        result = _reorder(result, order)
    return result


def _reorder(preds: Predictions, order: np.ndarray) -> Predictions:
    """Put outputs computed in ``order`` (row ``i`` is example ``order[i]``) back in dataset order."""
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return Predictions(
        logits=preds.logits[inverse],
        labels=None if preds.labels is None else preds.labels[inverse],
        lengths_in=preds.lengths_in[inverse],
        lengths_kept=preds.lengths_kept[inverse],
    )


def _concatenate(logits: list[np.ndarray]) -> np.ndarray:
    """Stack per-batch logits; span logits ``[b, w, 2]`` are right-padded with ``-inf`` to the
    widest batch."""
    if logits[0].ndim == 2:
        return np.concatenate(logits)
    width = max(block.shape[1] for block in logits)
    out = np.full((sum(block.shape[0] for block in logits), width, logits[0].shape[2]), -np.inf, dtype=np.float32)
    row = 0
    for block in logits:
        out[row : row + block.shape[0], : block.shape[1]] = block
        row += block.shape[0]
    return out
