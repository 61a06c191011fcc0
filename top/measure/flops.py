"""Analytic FLOPs of a token-pruned BERT-family encoder (docs/design.md, "FLOPs convention").

FLOPs = 2 x multiply-accumulates (MACs), per example, at the example's real (unpadded) length,
as LTP and ToP count them. Per layer ``l`` with ``n`` tokens entering and ``m`` surviving the
layer's selector, hidden size ``d`` and feed-forward size ``f``:

* attention sublayer at ``n`` tokens: Q, K, V and output projections ``4 n d^2`` MACs, scores and
  weighted sum ``2 n^2 d`` MACs;
* feed-forward at ``m`` tokens: ``2 m d f`` MACs.

Embeddings are table look-ups plus a LayerNorm: no matrix products, counted as 0 (as torch's
``FlopCounterMode`` counts them). The task head is counted separately and included in the
total: a classification head (BERT pooler + classifier, or RoBERTa's dense + out_proj) is
``d^2 + d C`` MACs on the [CLS] vector; a span head is ``2 d`` MACs per input position.
LayerNorm, softmax, GELU and biases are ignored, as in the papers.

Functions accept Python numbers or tensors, so ToP's expected-FLOPs constraint uses the very
same formula with fractional, differentiable token counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class ModelDims:
    """The dimensions a method needs, read from a Hugging Face config (never hard-coded)."""

    num_layers: int
    hidden: int
    intermediate: int
    heads: int

    @classmethod
    def from_config(cls, config) -> ModelDims:
        return cls(
            num_layers=config.num_hidden_layers,
            hidden=config.hidden_size,
            intermediate=config.intermediate_size,
            heads=config.num_attention_heads,
        )


def head_kind(config) -> str:
    """``"qa"`` for a saved question-answering model, else ``"classification"`` (from the
    config's ``architectures``)."""
    architectures = getattr(config, "architectures", None) or []
    return "qa" if architectures and "QuestionAnswering" in architectures[0] else "classification"


def attention_macs(n: Any, dims: ModelDims) -> Any:
    """MACs of one self-attention sublayer at ``n`` tokens (number or tensor)."""
    return 4 * n * dims.hidden**2 + 2 * n * n * dims.hidden


def ffn_macs(m: Any, dims: ModelDims) -> Any:
    """MACs of one feed-forward block at ``m`` tokens (number or tensor)."""
    return 2 * m * dims.hidden * dims.intermediate


def head_macs(config, head_kind: str, input_length: Any) -> Any:
    """MACs of the task head: ``"classification"`` on [CLS], or ``"qa"`` on every position."""
    d = config.hidden_size
    if head_kind == "classification":
        return d * d + d * config.num_labels
    if head_kind == "qa":
        return 2 * d * input_length
    raise ValueError(f"unknown head kind {head_kind!r}; expected 'classification' or 'qa'")


def encoder_macs(lengths_in: Any, lengths_kept: Any, dims: ModelDims) -> Any:
    """MACs of all layers, summed over the last axis.

    Args:
        lengths_in: ``[..., num_layers]`` tokens entering each layer.
        lengths_kept: ``[..., num_layers]`` tokens running each layer's feed-forward block.

    Returns:
        ``[...]`` MACs (same type as the inputs).
    """
    per_layer = attention_macs(lengths_in, dims) + ffn_macs(lengths_kept, dims)
    return per_layer.sum(-1)


def example_flops(config, head_kind: str, lengths_in, lengths_kept) -> np.ndarray:
    """FLOPs of each example.

    Args:
        lengths_in, lengths_kept: ``[N, num_layers]`` integer arrays (real tokens, from
            :class:`top.encoder.EncoderOutput`).

    Returns:
        ``[N]`` float64 FLOPs (2 x MACs), head included.
    """
    lengths_in = np.asarray(lengths_in, dtype=np.float64)
    lengths_kept = np.asarray(lengths_kept, dtype=np.float64)
    if lengths_in.shape != lengths_kept.shape or lengths_in.ndim != 2:
        raise ValueError(f"lengths must both be [N, layers]; got {lengths_in.shape} and {lengths_kept.shape}")
    dims = ModelDims.from_config(config)
    if lengths_in.shape[1] != dims.num_layers:
        raise ValueError(f"lengths cover {lengths_in.shape[1]} layers, the model has {dims.num_layers}")
    input_length = lengths_in[:, 0]
    return 2 * (encoder_macs(lengths_in, lengths_kept, dims) + head_macs(config, head_kind, input_length))


def flops_summary(config, head_kind: str, lengths_in, lengths_kept) -> dict[str, Any]:
    """Average FLOPs over a dev set, pruned vs dense at the same real lengths.

    The dense baseline runs every layer at the example's input length (``lengths_in[:, 0]``).

    Returns:
        ``flops`` and ``dense_flops`` (means over examples), ``flops_reduction``
        (dense / pruned, e.g. 8.1 for "8.1x"), ``flops_ratio`` (pruned / dense),
        ``mean_input_length``, ``mean_lengths_in`` and ``mean_lengths_kept`` per layer, and
        ``n_examples``.
    """
    lengths_in = np.asarray(lengths_in, dtype=np.float64)
    lengths_kept = np.asarray(lengths_kept, dtype=np.float64)
    pruned = example_flops(config, head_kind, lengths_in, lengths_kept)
    full = np.repeat(lengths_in[:, :1], lengths_in.shape[1], axis=1)
    dense = example_flops(config, head_kind, full, full)
    return {
        "flops": float(pruned.mean()),
        "dense_flops": float(dense.mean()),
        "flops_reduction": float(dense.mean() / pruned.mean()),
        "flops_ratio": float(pruned.mean() / dense.mean()),
        "mean_input_length": float(lengths_in[:, 0].mean()),
        "mean_lengths_in": lengths_in.mean(axis=0).tolist(),
        "mean_lengths_kept": lengths_kept.mean(axis=0).tolist(),
        "n_examples": int(lengths_in.shape[0]),
    }


def counted_flops(model, inputs: dict[str, torch.Tensor], mode: str = "gather") -> int:
    """FLOPs of one forward pass as torch's ``FlopCounterMode`` counts them (matrix products).

    Used to check the analytic count; ``model`` is a :class:`top.encoder.PrunableModel`.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(**inputs, mode=mode)
    return int(counter.get_total_flops())
