"""The prunable encoder: the only module that touches transformers' BERT internals.

:class:`PrunableModel` wraps a Hugging Face BERT or RoBERTa model with a sequence
classification or question-answering head and runs its layers itself, so that a
:class:`~top.pruning.base.TokenSelector` can drop tokens after each layer's self-attention.

Per layer ``l`` (docs/design.md, "FLOPs convention"):

1. self-attention over the ``n_l`` tokens entering the layer (eager attention, probabilities
   kept for scoring);
2. the selector decides which tokens survive;
3. the feed-forward block runs on the survivors (``n_{l+1}`` tokens), which enter layer ``l+1``.

Two modes give the same predictions for the same hard decisions (a test checks it):

* ``mask`` (training): shapes never change. Dropped tokens are excluded as keys from later
  layers by a large negative additive mask, and the decision's soft mask multiplies the layer
  output (or, with ``KeepDecision.soft_on == "ffn_input"``, the feed-forward block's input and
  residual) so gradients reach differentiable selectors.
* ``gather`` (evaluation, FLOPs, latency): each example's surviving tokens are physically
  selected, so the sequence shrinks layer by layer and the saved work is real.

Every token's last computed hidden state is carried forward to the output (as the ToP code
does for span extraction), so a QA head sees all positions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from top.pruning.base import SOFT_PLACEMENTS, KeepDecision, LayerContext, TokenSelector

Mode = Literal["mask", "gather"]


@dataclass
class EncoderOutput:
    """What :meth:`PrunableModel.forward` returns.

    Attributes:
        logits: ``[B, C]`` for classification/regression, or ``[B, L, 2]`` (start, end) for QA.
        hidden: ``[B, L, d]`` every input position's last computed hidden state (carried
            forward from the layer where it was dropped).
        lengths_in: ``[B, num_layers]`` long, real tokens entering each layer.
        lengths_kept: ``[B, num_layers]`` long, real tokens surviving each layer's selector
            (those that run its feed-forward block).
        kept: per layer, ``[B, L]`` bool over original positions: alive after that layer.
        decisions: per layer, the selector's :class:`KeepDecision` (None where it kept all).
        attentions: per layer ``[B, H, n, n]`` attention probabilities, if requested.
    """

    logits: torch.Tensor
    hidden: torch.Tensor
    lengths_in: torch.Tensor
    lengths_kept: torch.Tensor
    kept: list[torch.Tensor]
    decisions: list[KeepDecision | None]
    attentions: list[torch.Tensor] = field(default_factory=list)


def _heads(model: nn.Module) -> tuple[str, nn.Module]:
    """Recognise the task head of a wrapped Hugging Face model."""
    if hasattr(model, "qa_outputs"):
        return "qa", model
    if hasattr(model, "classifier"):
        return "classification", model
    raise TypeError(
        f"{type(model).__name__} has no sequence-classification or QA head; "
        "load it with AutoModelForSequenceClassification or AutoModelForQuestionAnswering"
    )


class PrunableModel(nn.Module):
    """A BERT-family model whose layers can drop tokens.

    Args:
        hf_model: a ``*ForSequenceClassification`` or ``*ForQuestionAnswering`` model of the BERT
            family (BERT, RoBERTa: anything with ``base_model.embeddings`` and
            ``base_model.encoder.layer`` of BERT-style layers).
        selectors: layer index -> selector; layers without one keep every token.
    """

    def __init__(self, hf_model: nn.Module, selectors: Mapping[int, TokenSelector] | None = None):
        super().__init__()
        self.hf = hf_model
        self.config = hf_model.config
        self.head_kind, _ = _heads(hf_model)
        self.selectors = nn.ModuleDict()
        self.set_selectors(selectors or {})

    @property
    def layers(self) -> nn.ModuleList:
        return self.hf.base_model.encoder.layer

    def set_selectors(self, selectors: Mapping[int, TokenSelector]) -> None:
        """Install (replace) the selectors; keys are layer indices."""
        n = self.config.num_hidden_layers
        for layer in selectors:
            if not 0 <= int(layer) < n:
                raise ValueError(f"selector for layer {layer}, but the model has layers 0..{n - 1}")
        self.selectors = nn.ModuleDict({str(int(k)): v for k, v in selectors.items()})

    # -- pieces ----------------------------------------------------------------------------------
    @staticmethod
    def _self_attention(layer: nn.Module, x: torch.Tensor, alive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eager multi-head self-attention of one BERT layer.

        Args:
            x: ``[B, n, d]``; alive: ``[B, n]`` bool, keys allowed to be attended to.

        Returns:
            context ``[B, n, d]`` (before the output projection) and probabilities
            ``[B, H, n, n]``.
        """
        sa = layer.attention.self
        batch, n, _ = x.shape
        heads, head_dim = sa.num_attention_heads, sa.attention_head_size

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, n, heads, head_dim).transpose(1, 2)

        q, k, v = split(sa.query(x)), split(sa.key(x)), split(sa.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) * head_dim**-0.5
        scores = scores.masked_fill(~alive[:, None, None, :], torch.finfo(scores.dtype).min)
        probs = scores.softmax(dim=-1)
        context = torch.matmul(sa.dropout(probs), v)
        return context.transpose(1, 2).reshape(batch, n, heads * head_dim), probs

    @staticmethod
    def _kept_slots(keep: torch.Tensor) -> torch.Tensor:
        """Indices ``[B, n']`` of each row's kept slots, in order, right-padded with slot 0.

        ``n'`` is the largest kept count in the batch. Batch 1 (the latency path) needs no
        padding, and ``nonzero`` is cheaper there than a sort.
        """
        if keep.shape[0] == 1:
            return keep[0].nonzero()[:, 0][None, :]
        width = int(keep.sum(dim=1).max())
        return (~keep).to(torch.int8).argsort(dim=1, stable=True)[:, :width]

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Apply the task head to ``[B, L, d]`` hidden states."""
        hf = self.hf
        if self.head_kind == "qa":
            return hf.qa_outputs(hidden)
        pooler = getattr(hf.base_model, "pooler", None)
        if pooler is not None:  # BERT: pooler on [CLS], dropout, linear classifier
            return hf.classifier(hf.dropout(pooler(hidden)))
        return hf.classifier(hidden)  # RoBERTa-style heads read [CLS] themselves

    # -- forward ---------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        mode: Mode = "mask",
        output_attentions: bool = False,
        record: bool = True,
        protect_mask: torch.Tensor | None = None,
    ) -> EncoderOutput:
        """Run the model.

        Args:
            input_ids, attention_mask, token_type_ids: ``[B, L]`` as from a tokenizer (padding on
                the right; position 0 is [CLS]).
            mode: ``"mask"`` or ``"gather"`` (see the module docstring).
            output_attentions: also return every layer's attention probabilities.
            record: fill ``hidden`` and ``kept`` for every original position. Latency runs of
                classification models turn it off (the head only reads slot 0, [CLS]); then
                ``hidden`` is the final layer's ``[B, n_last, d]`` and ``kept`` is empty.
            protect_mask: ``[B, L]``, 1 for tokens that are never dropped whatever the selectors
                decide (e.g. a SQuAD question, :func:`top.tasks.squad.prepare_train_features`); [CLS]
                is always protected. In ``mask`` mode their soft value is 1.
        """
        if mode not in ("mask", "gather"):
            raise ValueError(f"mode must be 'mask' or 'gather', got {mode!r}")
        base = self.hf.base_model
        x = base.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)  # [B, L, d]
        batch, length, _ = x.shape
        alive = attention_mask.bool()
        input_lengths = alive.sum(dim=1)
        positions = torch.arange(length, device=x.device).expand(batch, length)
        rows = torch.arange(batch, device=x.device)[:, None]
        protected = None if protect_mask is None else protect_mask.bool() & alive
        record = record or self.head_kind == "qa"  # a QA head reads every position
        carried = x  # [B, L, d] last computed state of every original position
        kept_masks, decisions, attentions, n_in, n_kept = [], [], [], [], []

        for index, layer in enumerate(self.layers):
            context, probs = self._self_attention(layer, x, alive)
            hidden = layer.attention.output(context, x)  # [B, n, d]
            selector = self.selectors[str(index)] if str(index) in self.selectors else None
            decision = None
            if selector is not None:
                decision = selector(LayerContext(index, probs, hidden, alive, positions, input_lengths))
            if decision is None:
                keep = alive
            else:
                keep = decision.hard & alive
                if protected is not None:
                    keep = keep | protected
                keep[:, 0] = True
            n_in.append(alive.sum(dim=1))
            n_kept.append(keep.sum(dim=1))

            if mode == "gather" and decision is not None:
                order = self._kept_slots(keep)  # [B, n'] kept slots first, in input order
                hidden = hidden[rows, order]
                positions = positions.gather(1, order)
                if protected is not None:
                    protected = protected.gather(1, order) & (torch.arange(order.shape[1], device=x.device)[None, :] < n_kept[-1][:, None])
                keep = torch.arange(order.shape[1], device=x.device)[None, :] < n_kept[-1][:, None]
            soft = None
            if mode == "mask" and decision is not None and decision.soft is not None:
                if decision.soft_on not in SOFT_PLACEMENTS:
                    raise ValueError(f"layer {index}: KeepDecision.soft_on must be one of {SOFT_PLACEMENTS}, got {decision.soft_on!r}")
                soft = decision.soft.clone()
                soft[:, 0] = 1.0
                if protected is not None:
                    soft = torch.where(protected, torch.ones_like(soft), soft)
                soft = soft[..., None]
            if soft is not None and decision.soft_on == "ffn_input":
                hidden = hidden * soft  # the feed-forward block and its residual see the scaled state
            x = layer.output(layer.intermediate(hidden), hidden)
            if soft is not None and decision.soft_on == "layer_output":
                x = x * soft
            alive = keep

            if record:
                where = (rows.expand_as(positions)[alive], positions[alive])
                carried = carried.index_put(where, x[alive])
                kept_masks.append(torch.zeros_like(attention_mask, dtype=torch.bool).index_put(where, alive[alive]))
            decisions.append(decision)
            if output_attentions:
                attentions.append(probs)

        final = carried if record else x  # slot 0 is [CLS] in both
        return EncoderOutput(
            logits=self._head(final),
            hidden=final,
            lengths_in=torch.stack(n_in, dim=1),
            lengths_kept=torch.stack(n_kept, dim=1),
            kept=kept_masks,
            decisions=decisions,
            attentions=attentions,
        )
