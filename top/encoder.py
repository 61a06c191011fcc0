"""The prunable encoder: the only module that touches transformers' BERT internals.

:class:`PrunableModel` wraps a Hugging Face BERT or RoBERTa model with a sequence
classification or question-answering head and runs its layers itself, so that a
:class:`~top.pruning.base.TokenSelector` can drop tokens after each layer's self-attention.

Per layer ``l`` (docs/design.md, "FLOPs convention"):

1. self-attention over the ``n_l`` tokens entering the layer;
2. the selector decides which tokens survive;
3. the feed-forward block runs on the survivors (``n_{l+1}`` tokens), which enter layer ``l+1``.

Attention is ``torch.nn.functional.scaled_dot_product_attention`` (SDPA) wherever no attention
probabilities are needed: in layers without a selector and in layers whose selector declares
``needs_attention_probs = False`` and reads only the attention each token receives, which is
then all that is kept of the probabilities. Layers whose selector reads the probabilities, every
layer under ``output_attentions=True`` (a teacher's attentions for ranking distillation) and
training with attention dropout run eager attention (matmul, softmax, matmul); SDPA and eager
agree to float rounding (a test). Nothing is masked while every slot is alive (batch 1 in gather
mode), and a pruning layer synchronises with the host once (the next shapes depend on it).

Two modes give the same predictions for the same hard decisions (a test checks it):

* ``mask`` (training): shapes never change. Dropped tokens are excluded as keys from later
  layers by a large negative additive mask, and the decision's soft mask multiplies the layer
  output (or, with ``KeepDecision.soft_on == "ffn_input"``, the feed-forward block's input and
  residual) so gradients reach differentiable selectors.
* ``gather`` (evaluation, FLOPs, latency): each example's surviving tokens are physically
  selected, so the sequence shrinks layer by layer and the saved work is real.

Every position keeps a hidden state for a QA head (a span head reads every position): by
default (``carry="entering"``) a dropped token carries the state it had entering the layer that
dropped it, the output of the layer before, since it skips that layer's feed-forward block and
every later layer. ``carry="attention"`` carries the dropping layer's attention-sublayer output
instead (computed anyway), ``carry="layer"`` its full output, the feed-forward block run for the
dropped tokens too (what ToP's reference feeds its span head; it costs that feed-forward block,
which the FLOPs count leaves out). The last two are for evaluation diagnostics
(:mod:`top.analysis.squad_tokens`); training and every reported number use ``"entering"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from top.pruning.base import SOFT_PLACEMENTS, KeepDecision, LayerContext, TokenSelector, attention_token_scores

Mode = Literal["mask", "gather"]
Attention = Literal["sdpa", "eager"]
Carry = Literal["entering", "attention", "layer"]
#: What a dropped position carries to the output (module docstring; ``PrunableModel.forward``'s ``carry``).
CARRIES = ("entering", "attention", "layer")

#: Bytes of attention probabilities one head group may span in :meth:`PrunableModel._scored_attention`
#: on a CPU: about half a core's L2 cache on the machines this was tuned on (a heuristic; it
#: changes speed, never results beyond float rounding).
SCORE_TILE_BYTES = 1 << 20


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
        decisions: per layer, the selector's :class:`KeepDecision` (None where it kept all, and
            where its batch-1 fast path, :meth:`~top.pruning.base.TokenSelector.kept_slots`,
            named the kept slots directly).
        attentions: per layer ``[B, H, n, n]`` attention probabilities, if requested.
    """

    logits: torch.Tensor
    hidden: torch.Tensor
    lengths_in: torch.Tensor
    lengths_kept: torch.Tensor
    kept: list[torch.Tensor]
    decisions: list[KeepDecision | None]
    attentions: list[torch.Tensor] = field(default_factory=list)


def _stack_counts(counts: list[torch.Tensor | int], batch: int, device: torch.device) -> torch.Tensor:
    """``[B, layers]`` long from per-layer ``[B]`` counts or ints (every row has that count)."""
    if all(isinstance(c, int) for c in counts):
        return torch.tensor(counts, dtype=torch.long, device=device).expand(batch, -1)
    return torch.stack([c if isinstance(c, torch.Tensor) else torch.full((batch,), c, dtype=torch.long, device=device) for c in counts], dim=1)


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
        attention: ``"sdpa"`` (SDPA wherever no probabilities are needed, scores without the
            probabilities where that is all a selector reads; module docstring) or ``"eager"``
            (eager attention with full probabilities in every layer, as before SDPA: the
            reference the fast paths are tested against).
    """

    def __init__(self, hf_model: nn.Module, selectors: Mapping[int, TokenSelector] | None = None, attention: Attention = "sdpa"):
        super().__init__()
        if attention not in ("sdpa", "eager"):
            raise ValueError(f"attention must be 'sdpa' or 'eager', got {attention!r}")
        self.attention = attention
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
    def _eager(self, layer: nn.Module) -> bool:
        """Whether a layer that needs no attention probabilities still runs eager attention with
        full probabilities: always under ``attention="eager"``, and in training while attention
        dropout is on (SDPA or head groups would draw other random numbers, so training runs stay
        as they were)."""
        dropout = layer.attention.self.dropout
        return self.attention == "eager" or (dropout.training and dropout.p > 0)

    @staticmethod
    def _self_attention(layer: nn.Module, x: torch.Tensor, key_mask: torch.Tensor | None, eager: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Multi-head self-attention of one BERT layer, before its output projection.

        Args:
            x: ``[B, n, d]``.
            key_mask: ``[B, 1, 1, n]`` bool, keys that may be attended to; None: every key.
            eager: compute and return the probabilities (matmul, softmax, matmul); otherwise
                ``torch.nn.functional.scaled_dot_product_attention`` (no probabilities, dropout
                off: see :meth:`_eager`).

        Returns:
            context ``[B, n, d]`` and probabilities ``[B, H, n, n]`` (None without ``eager``).
        """
        sa = layer.attention.self
        batch, n, _ = x.shape
        heads, head_dim = sa.num_attention_heads, sa.attention_head_size

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, n, heads, head_dim).transpose(1, 2)

        q, k, v = split(sa.query(x)), split(sa.key(x)), split(sa.value(x))
        scale = head_dim**-0.5
        if not eager:
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, scale=scale)
            return context.transpose(1, 2).reshape(batch, n, heads * head_dim), None
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask, torch.finfo(scores.dtype).min)
        probs = scores.softmax(dim=-1)
        context = torch.matmul(sa.dropout(probs), v)
        return context.transpose(1, 2).reshape(batch, n, heads * head_dim), probs

    @staticmethod
    def _scored_attention(
        layer: nn.Module, x: torch.Tensor, key_mask: torch.Tensor | None, alive: torch.Tensor, full: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Self-attention that keeps of the probabilities only the attention each token receives.

        The same context as :meth:`_self_attention` and the scores of
        :func:`~top.pruning.base.attention_token_scores`, for selectors that read nothing else
        (``needs_attention_probs = False``). On a CPU the heads go in groups whose ``[n, n]``
        probability tiles fit a core's cache (:data:`SCORE_TILE_BYTES`): each group's
        probabilities are summed into the scores and dropped before the next group, which at
        a few hundred tokens is much faster than materialising all heads at once.

        Args:
            x: ``[B, n, d]``; key_mask: ``[B, 1, 1, n]`` bool or None; alive: ``[B, n]`` bool;
            full: every slot is alive (``key_mask`` is None).

        Returns:
            context ``[B, n, d]`` (before the output projection) and scores ``[B, n]``
            (``-inf`` where not alive).
        """
        sa = layer.attention.self
        batch, n, _ = x.shape
        heads, head_dim = sa.num_attention_heads, sa.attention_head_size

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, n, heads, head_dim).transpose(1, 2)

        q, k, v = split(sa.query(x) * head_dim**-0.5), split(sa.key(x)), split(sa.value(x))
        group = heads
        if x.device.type == "cpu":
            group = max(1, min(heads, SCORE_TILE_BYTES // (batch * n * n * x.element_size())))
        dead = None if key_mask is None else ~key_mask
        query_weight = None if full else alive.to(x.dtype)
        contexts, received = [], None
        for start in range(0, heads, group):
            heads_here = slice(start, start + group)
            scores = torch.matmul(q[:, heads_here], k[:, heads_here].transpose(-1, -2))
            if dead is not None:
                scores = scores.masked_fill(dead, torch.finfo(scores.dtype).min)
            probs = scores.softmax(dim=-1)  # [B, g, n, n]
            contexts.append(torch.matmul(probs, v[:, heads_here]))  # no dropout here: see _eager
            part = probs.sum(dim=(1, 2)) if full else torch.einsum("bhqk,bq->bk", probs, query_weight)
            received = part if received is None else received + part
        context = contexts[0] if len(contexts) == 1 else torch.cat(contexts, dim=1)
        context = context.transpose(1, 2).reshape(batch, n, heads * head_dim)
        if full:
            return context, received / (heads * n)
        token_scores = received / (heads * query_weight.sum(dim=1, keepdim=True).clamp_min(1.0))
        return context, token_scores.masked_fill(~alive, float("-inf"))

    @staticmethod
    def _kept_slots(keep: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, int, bool]:
        """Each row's kept slots for gather mode at batch > 1.

        Args:
            keep: ``[B, n]`` bool; counts: ``[B]`` long, ``keep.sum(1)``.

        Returns:
            ``(slots, width, full)``: ``slots`` ``[B, width]``, each row's kept slots in order,
            right-padded with slot 0; ``width`` the largest count; ``full`` whether every row
            keeps ``width`` tokens (no padding afterwards). One host synchronisation: the next
            shapes depend on it.
        """
        low, width = torch.stack(torch.aminmax(counts)).tolist()
        slots = (~keep).to(torch.int8).argsort(dim=1, stable=True)[:, :width]
        return slots, width, low == width

    @staticmethod
    def _carry_dropped(
        carried: torch.Tensor, layer: nn.Module, hidden: torch.Tensor, dropped: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor, carry: str
    ) -> torch.Tensor:
        """``carried`` ``[B, L, d]`` with the positions dropped at this layer (``dropped`` ``[B, n]``
        over the current slots, at original ``positions``) set to the layer's attention-sublayer
        output ``hidden`` ``[B, n, d]`` (``carry="attention"``) or to its full output, the
        feed-forward block run for them (``carry="layer"``)."""
        states = hidden[dropped]  # [k, d]
        if carry == "layer":
            states = layer.output(layer.intermediate(states), states)
        return carried.index_put((rows.expand_as(positions)[dropped], positions[dropped]), states)

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Apply the task head to ``[B, L, d]`` hidden states."""
        hf = self.hf
        if self.head_kind == "qa":
            return hf.qa_outputs(hidden)
        pooler = getattr(hf.base_model, "pooler", None)
        if pooler is not None:  # BERT: pooler on [CLS], dropout, linear classifier
            return hf.classifier(hf.dropout(pooler(hidden)))
        return hf.classifier(hidden)  # RoBERTa-style heads read [CLS] themselves

    # -- the ideal pruned model ---------------------------------------------------------------------
    def forward_at_lengths(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None, lengths_in: Sequence[int], lengths_kept: Sequence[int]
    ) -> torch.Tensor:
        """Logits of the ideal pruned model: the Hugging Face layers with SDPA at given per-layer
        lengths, with no scoring and no gather (docs/design.md, "Latency protocol").

        Layer ``l`` runs its own attention sublayer (the model's SDPA implementation) over the
        first ``lengths_in[l]`` tokens, keeps the first ``lengths_kept[l]`` of them (a slice) and
        runs its feed-forward block on those. Timed beside the pruned model at that model's
        per-layer lengths, it is the fastest a pruned model of those lengths can be with these
        layers; the gap is the pruning overhead (scoring, selection, gather, bookkeeping). The
        selectors and the model's ``attention`` setting are ignored. For a QA head, every
        position carries its last computed state, as in :meth:`forward`.

        Args:
            input_ids, token_type_ids: ``[1, L]``, no padding.
            lengths_in, lengths_kept: one int per layer; ``lengths_in[0] == L`` and
                ``lengths_in[l + 1] == lengths_kept[l] <= lengths_in[l]``.

        Raises:
            ValueError: batch > 1, a model not loaded with ``attn_implementation="sdpa"``, or
                lengths that are not such a cascade.
        """
        if input_ids.shape[0] != 1:
            raise ValueError(f"forward_at_lengths runs batch 1, got a batch of {input_ids.shape[0]}")
        implementation = getattr(self.config, "_attn_implementation", None)
        if implementation != "sdpa":
            raise ValueError(
                f"forward_at_lengths times the stock SDPA layers; the model uses {implementation!r} (load it with attn_implementation='sdpa')"
            )
        lengths_in, lengths_kept = [int(n) for n in lengths_in], [int(n) for n in lengths_kept]
        expected_in = [input_ids.shape[1], *lengths_kept[:-1]]
        if len(lengths_in) != len(self.layers) or len(lengths_kept) != len(self.layers) or lengths_in != expected_in:
            raise ValueError(
                f"lengths_in {lengths_in} and lengths_kept {lengths_kept} are not a cascade over {len(self.layers)} layers from {input_ids.shape[1]} tokens"
            )
        if any(m > n or m < 1 for n, m in zip(lengths_in, lengths_kept)):
            raise ValueError(f"lengths_kept {lengths_kept} must lie in [1, lengths_in] layer by layer ({lengths_in})")
        x = self.hf.base_model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        carried = x.clone() if self.head_kind == "qa" else None
        for layer, kept in zip(self.layers, lengths_kept):
            attended = layer.attention(x)[0][:, :kept]
            x = layer.output(layer.intermediate(attended), attended)
            if carried is not None:
                carried[:, :kept] = x
        return self._head(x if carried is None else carried)

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
        carry: Carry = "entering",
    ) -> EncoderOutput:
        """Run the model.

        Args:
            input_ids, attention_mask, token_type_ids: ``[B, L]`` as from a tokenizer (padding on
                the right; position 0 is [CLS]).
            mode: ``"mask"`` or ``"gather"`` (see the module docstring).
            output_attentions: also return every layer's attention probabilities (every layer
                then runs eager attention).
            record: fill ``hidden`` and ``kept`` for every original position. Latency runs of
                classification models turn it off (the head only reads slot 0, [CLS]); then
                ``hidden`` is the final layer's ``[B, n_last, d]`` and ``kept`` is empty.
            protect_mask: ``[B, L]``, 1 for tokens that are never dropped whatever the selectors
                decide (e.g. a SQuAD question, :func:`top.tasks.squad.prepare_train_features`); [CLS]
                is always protected. In ``mask`` mode their soft value is 1.
            carry: the hidden state a position dropped at layer ``l`` keeps in ``hidden``, for a
                QA head: ``"entering"`` (the default: its state entering layer ``l``),
                ``"attention"`` (layer ``l``'s attention-sublayer output) or ``"layer"`` (layer
                ``l``'s output, its feed-forward block run for the dropped positions too: extra
                work the FLOPs count leaves out). Only read where ``hidden`` is recorded.
        """
        if mode not in ("mask", "gather"):
            raise ValueError(f"mode must be 'mask' or 'gather', got {mode!r}")
        if carry not in CARRIES:
            raise ValueError(f"carry must be one of {CARRIES}, got {carry!r}")
        base = self.hf.base_model
        x = base.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)  # [B, L, d]
        batch, length, _ = x.shape
        device = x.device
        alive = attention_mask.bool()
        input_lengths = alive.sum(dim=1)
        # While every slot is alive (no padding, nothing masked), attention needs no key mask and
        # a layer's token count is the width. One host synchronisation per forward.
        full = bool(alive.all())
        positions = torch.arange(length, device=device).expand(batch, length)
        rows = torch.arange(batch, device=device)[:, None]
        protected = None if protect_mask is None else protect_mask.bool() & alive
        record = record or self.head_kind == "qa"  # a QA head reads every position
        carried = x  # [B, L, d] last computed state of every original position
        kept_masks, decisions, attentions = [], [], []
        n_in: list[torch.Tensor | int] = []  # per layer: [B] counts, or an int when every row has it
        n_kept: list[torch.Tensor | int] = []

        for index, layer in enumerate(self.layers):
            selector = self.selectors[str(index)] if str(index) in self.selectors else None
            wants_probs = output_attentions or (selector is not None and selector.needs_attention_probs)
            wants_scores = selector is not None and not selector.needs_attention_probs
            key_mask = None if full else alive[:, None, None, :]
            scores = None
            if wants_scores and not wants_probs and not self._eager(layer):
                context, scores = self._scored_attention(layer, x, key_mask, alive, full)
                probs = None
            else:
                context, probs = self._self_attention(layer, x, key_mask, wants_probs or self._eager(layer))
                if wants_scores:
                    scores = attention_token_scores(probs, alive)
            hidden = layer.attention.output(context, x)  # [B, n, d]
            count_in = x.shape[1] if full else alive.sum(dim=1)
            decision, slots = None, None
            if selector is not None:
                ctx = LayerContext(index, probs, hidden, alive, positions, input_lengths, token_scores=scores, all_alive=full, protected=protected)
                if mode == "gather" and batch == 1 and full and protected is None and carry == "entering":
                    slots = selector.kept_slots(ctx)  # the selector's batch-1 fast path, if it has one
                if slots is None:
                    decision = selector(ctx)
            if slots is not None:
                pass  # the selector named the kept slots: gathered below
            elif decision is None:
                keep, count_kept = alive, count_in
            else:
                keep = decision.hard & alive
                if protected is not None:
                    keep = keep | protected
                keep[:, 0] = True
                full = False  # until a gather shows otherwise
                if record and carry != "entering":
                    carried = self._carry_dropped(carried, layer, hidden, alive & ~keep, rows, positions, carry)
                if mode == "gather" and batch == 1:
                    slots = keep[0].nonzero()[:, 0]  # the layer's one host synchronisation; gathered below
                elif mode == "gather":
                    count_kept = keep.sum(dim=1)
                    order, width, full = self._kept_slots(keep, count_kept)
                    hidden = hidden[rows, order]
                    positions = positions.gather(1, order)
                    keep = torch.arange(width, device=device)[None, :] < count_kept[:, None]
                    if protected is not None:
                        protected = protected.gather(1, order) & keep
                    if full:
                        count_kept = width
                else:
                    count_kept = keep.sum(dim=1)
            if slots is not None:  # batch 1, gather: every kept slot stays alive
                count_kept = int(slots.shape[0])
                hidden = hidden.index_select(1, slots)
                positions = positions.index_select(1, slots)
                if protected is not None:
                    protected = protected.index_select(1, slots)
                keep, full = alive.new_ones(1, count_kept), True
            n_in.append(count_in)
            n_kept.append(count_kept)
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
            lengths_in=_stack_counts(n_in, batch, device),
            lengths_kept=_stack_counts(n_kept, batch, device),
            kept=kept_masks,
            decisions=decisions,
            attentions=attentions,
        )
