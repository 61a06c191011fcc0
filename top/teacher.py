"""The frozen teacher's signals for distillation (:class:`top.pruning.base.TeacherSignals`).

A method names what it needs (:meth:`~top.pruning.base.PruningMethod.teacher_signals`:
``"logits"``, ``"final_token_scores"``) and gets only that. :class:`TeacherRunner` computes
the signals of one batch: the teacher runs in eval mode without selectors, and the last layer's
token scores are taken as that layer's attention leaves it (a recording selector that keeps
every token), so no layer's attention probabilities are kept.

:class:`TeacherCache` computes them once per training example instead of once per step: the
teacher is frozen and in eval mode (no dropout), so its outputs on an example depend only on
the example's own tokens, not on the batch it is padded into (up to floating-point rounding; a
test checks it). The cache runs the teacher over the training set in length-sorted batches
(little padding), keeps each example's outputs at its own length (flat tensors and offsets) and
pads the rows of any training batch from them, whatever its grouping. It lives in memory for one
training run (it is rebuilt when a run resumes), so it is never reused with another teacher or
another training set.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch

from top.batching import INDEX_KEY, example_lengths
from top.encoder import PrunableModel
from top.pruning.base import TEACHER_SIGNALS, LayerContext, TeacherSignals, TokenSelector, attention_token_scores

log = logging.getLogger(__name__)

_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class _FinalTokenScores(TokenSelector):
    """At the last layer: keeps every token and records the layer's token scores."""

    def __init__(self):
        super().__init__()
        self.scores: torch.Tensor | None = None

    def forward(self, ctx: LayerContext) -> None:
        self.scores = attention_token_scores(ctx.attention_probs, ctx.alive)
        return None


def check_signals(signals: Sequence[str]) -> tuple[str, ...]:
    """``signals`` as a tuple; raises ``ValueError`` for a signal not in :data:`TEACHER_SIGNALS`."""
    unknown = [s for s in signals if s not in TEACHER_SIGNALS]
    if unknown:
        raise ValueError(f"unknown teacher signals {unknown}; known: {list(TEACHER_SIGNALS)}")
    return tuple(signals)


class TeacherRunner:
    """Runs ``teacher`` (eval mode, no selectors, no gradient) for ``signals`` only.

    Calling it with a batch's model inputs returns a :class:`TeacherSignals`. The teacher's own
    selectors, if any, are ignored: distillation targets come from the dense teacher.
    """

    def __init__(self, teacher: PrunableModel, signals: Sequence[str]):
        self.signals = check_signals(signals)
        self._recorder = _FinalTokenScores() if "final_token_scores" in self.signals else None
        last = teacher.config.num_hidden_layers - 1
        self.model = PrunableModel(teacher.hf, {last: self._recorder} if self._recorder is not None else {})
        self.model.eval()

    @torch.no_grad()
    def __call__(self, inputs: dict[str, torch.Tensor]) -> TeacherSignals:
        model_inputs = {k: inputs[k] for k in _INPUTS if k in inputs}
        # record=False: a classification head reads [CLS] only, no need to carry every position
        out = self.model(**model_inputs, mode="mask", record=False)
        scores = None
        if self._recorder is not None:
            scores, self._recorder.scores = self._recorder.scores, None
        return TeacherSignals(logits=out.logits if "logits" in self.signals else None, final_token_scores=scores)


class TeacherCache:
    """The teacher's signals for every example of a training set, computed once.

    Args:
        runner: the teacher and the signals to keep.
        data: the training examples (a ``datasets.Dataset`` or a sequence of dicts).
        collate: the training collate function (pads a list of examples).
        batch_size: examples per teacher pass.
        device: where the teacher runs and the cache is kept.
    """

    def __init__(self, runner: TeacherRunner, data, collate, *, batch_size: int, device: torch.device):
        start = time.perf_counter()
        self.signals = runner.signals
        self.device = torch.device(device)
        widths = torch.tensor(example_lengths(data), dtype=torch.long)
        n = len(widths)
        #: ``[N]`` each example's width (``len(input_ids)``) and real token count (mask sum).
        self.widths = widths.to(self.device)
        self.real = torch.zeros(n, dtype=torch.long, device=self.device)
        offsets = torch.zeros(n + 1, dtype=torch.long)
        offsets[1:] = widths.cumsum(0)
        self.offsets = offsets.to(self.device)
        total = int(offsets[-1])
        self.logits: torch.Tensor | None = None  # [N, C], or flat [sum widths, 2] for span logits
        self.per_token_logits = False
        self.final_token_scores = torch.empty(total, device=self.device) if "final_token_scores" in self.signals else None
        order = torch.argsort(widths, descending=True, stable=True).tolist()
        fetch = getattr(data, "__getitems__", None)
        for begin in range(0, n, batch_size):
            rows = order[begin : begin + batch_size]
            examples = fetch(rows) if fetch is not None else [data[i] for i in rows]
            batch = collate(examples)
            inputs = {k: batch[k].to(self.device) for k in _INPUTS if k in batch}
            out = runner(inputs)
            index = torch.tensor(rows, dtype=torch.long, device=self.device)
            self.real[index] = inputs["attention_mask"].sum(dim=1)
            if out.logits is not None:
                self._store_logits(index, out.logits.float(), n, total)
            if out.final_token_scores is not None:
                self._scatter(self.final_token_scores, index, out.final_token_scores.float())
        self.seconds = time.perf_counter() - start
        log.info("teacher cache: %s of %d examples in %.1f s", ", ".join(self.signals), n, self.seconds)

    def _store_logits(self, index: torch.Tensor, logits: torch.Tensor, n: int, total: int) -> None:
        if logits.dim() == 3:  # span extraction: [b, w, 2] per position
            if self.logits is None:
                self.logits, self.per_token_logits = torch.zeros(total, logits.shape[-1], device=self.device), True
            self._scatter(self.logits, index, logits)
        else:
            if self.logits is None:
                self.logits = torch.zeros(n, logits.shape[-1], device=self.device)
            self.logits[index] = logits

    def _positions(self, index: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat positions ``[b, width]`` of the rows ``index`` and which of them are real slots."""
        slots = torch.arange(width, device=self.device)
        valid = slots[None, :] < self.widths[index][:, None]
        positions = (self.offsets[index][:, None] + slots[None, :]).masked_fill(~valid, 0)
        return positions, valid

    def _scatter(self, flat: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> None:
        positions, valid = self._positions(index, values.shape[1])
        flat[positions[valid]] = values[valid]

    def _gather(self, flat: torch.Tensor, index: torch.Tensor, width: int, fill: float) -> torch.Tensor:
        positions, valid = self._positions(index, width)
        values = flat[positions]
        mask = valid if values.dim() == 2 else valid[..., None]
        return values.masked_fill(~mask, fill)

    def __call__(self, batch: dict[str, torch.Tensor], signals: Sequence[str] | None = None) -> TeacherSignals:
        """The cached signals of a training batch (its rows by :data:`~top.batching.INDEX_KEY`),
        padded to the batch's width; only ``signals`` (default: all cached ones).

        Raises:
            KeyError: the batch has no row indices.
            ValueError: a signal was not cached, or the batch's real lengths differ from the
                cached examples' (the batch is not from the cached training set).
        """
        wanted = self.signals if signals is None else tuple(signals)
        missing = [s for s in wanted if s not in self.signals]
        if missing:
            raise ValueError(f"teacher cache holds {list(self.signals)}, not {missing}")
        index = batch[INDEX_KEY].to(self.device)
        width = batch["attention_mask"].shape[1]
        if not torch.equal(batch["attention_mask"].to(self.device).sum(dim=1), self.real[index]):
            raise ValueError("teacher cache: the batch's real lengths differ from the cached examples' (not the cached training set?)")
        logits = scores = None
        if "logits" in wanted:
            logits = self._gather(self.logits, index, width, 0.0) if self.per_token_logits else self.logits[index]
        if "final_token_scores" in wanted:
            scores = self._gather(self.final_token_scores, index, width, float("-inf"))
        return TeacherSignals(logits=logits, final_token_scores=scores)
