"""Ranking distillation: teach a student's token scores the teacher's token *ranking*.

ToP (§3.2) distils the ranking of tokens by importance in the final layer of the unpruned
teacher into the early layers of the pruned student, with a LambdaLoss (Wang et al., CIKM 2018)
between the teacher's order and the student's scores. The reference trainer
(``ToP/trainer/trainer.py``, ``calculate_attention_score_distillation_loss``) uses pytorchltr's
``LambdaARPLoss2`` on the teacher's top-``K`` tokens; this module implements that loss
(``weighting="arp2"``) and the NDCG-Loss2 weighting of the same framework
(``weighting="ndcg2"``), without the third-party dependency.

For one list with relevance ``y`` and student scores ``s``, with ``sigma = 1``::

    loss = sum over pairs (i, j) with y_i > y_j of  w_ij * log2(1 + exp(-sigma (s_i - s_j)))

    arp2:  w_ij = y_i - y_j
    ndcg2: w_ij = |1/D(d_ij) - 1/D(d_ij + 1)| * |G_i - G_j|,  D(d) = log2(1 + d),
           d_ij = |rank_i - rank_j| under the student's current order (1-based, no gradient),
           G_i = (2^y_i - 1) / maxDCG

The list of a row (``padding``):

* ``"reference"`` (the default; the reference's behaviour): ``K = min(topk, longest)``, where
  ``longest`` is the largest number of tokens to rank in any row of the batch (or
  ``list_length``). Every row's list has ``K`` slots: its teacher's top-``K`` tokens with
  relevance ``k, ..., 1`` (``k = min(K, its token count)``), and, in a row with fewer than ``K``
  tokens, ``K - k`` padding slots of relevance 0 and score 0 that take part in the pairs (each
  real token is pushed above score 0 with weight ``y_i``). Every row's loss is divided by
  ``K^2``, and the batch loss is the mean over all rows.
* ``"own_tokens"``: a row ranks only its own top-``k`` tokens (``k = min(topk, its token
  count)``, relevance ``k, ..., 1``, no padding slots), its loss is divided by ``k^2``, and the
  batch loss is the mean over the rows with at least two tokens.

The two agree when every row has at least ``K`` tokens. With ``"ndcg2"`` the padding slots are
items of the list (gain 0, ranked by their score 0); the reference's unused ``LambdaNDCGLoss2``
branch pads the same way but does not divide by ``K^2``, which both weightings do here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

WEIGHTINGS = ("arp2", "ndcg2")
PADDINGS = ("reference", "own_tokens")


def _student_positions(scores: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """0-based position of each item when sorted by ``scores`` (descending); no gradient."""
    keyed = scores.detach().masked_fill(~items, float("-inf"))
    order = keyed.argsort(dim=1, descending=True, stable=True)
    return order.argsort(dim=1)


def _ndcg2_weights(relevance: torch.Tensor, scores: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """``delta_ij * |G_i - G_j|`` of LambdaLoss' NDCG-Loss2 over the list's ``items``,
    ``[B, k, k]`` float64."""
    rel = relevance.to(torch.float64)
    gains = torch.where(items, torch.pow(2.0, rel) - 1.0, torch.zeros_like(rel))  # [B, k]
    # ideal DCG: relevance is already in descending order along dim 1
    discounts = torch.log2(torch.arange(2, rel.shape[1] + 2, device=rel.device, dtype=torch.float64))
    max_dcg = (gains / discounts).sum(dim=1, keepdim=True).clamp_min(1e-12)
    gains = gains / max_dcg
    pos = _student_positions(scores, items).to(torch.float64)  # [B, k]
    dist = (pos[:, :, None] - pos[:, None, :]).abs().clamp_min(1.0)
    delta = (1.0 / torch.log2(1.0 + dist) - 1.0 / torch.log2(2.0 + dist)).abs()
    return delta * (gains[:, :, None] - gains[:, None, :]).abs()


def ranking_distillation_loss(
    student_scores: torch.Tensor,
    teacher_scores: torch.Tensor,
    mask: torch.Tensor,
    *,
    topk: int | None = 20,
    weighting: str = "arp2",
    sigma: float = 1.0,
    padding: str = "reference",
    list_length: int | None = None,
) -> torch.Tensor:
    """Listwise LambdaLoss between the teacher's token ranking and the student's scores.

    Args:
        student_scores: ``[B, n]`` float, higher = more important; gradients flow into it. Values
            at masked positions are ignored (they may be ``-inf``).
        teacher_scores: ``[B, n]`` float; only their order matters (no gradient).
        mask: ``[B, n]`` bool, the tokens to rank (e.g. alive tokens without [CLS]).
        topk: only the teacher's ``topk`` best tokens of each row take part (None: all).
        weighting: ``"arp2"`` (the reference's choice) or ``"ndcg2"``.
        sigma: steepness of the pairwise logistic.
        padding: ``"reference"`` or ``"own_tokens"`` (module docstring).
        list_length: ``"reference"`` only: ``longest``, the list length before the ``topk`` cap
            (the reference's longest row of the batch); at least the largest row count of
            ``mask``. None: that largest count.

    Returns:
        A scalar (module docstring); zero, still connected to ``student_scores``, when no row
        has a pair to rank.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    if student_scores.shape != teacher_scores.shape or student_scores.shape != mask.shape or student_scores.dim() != 2:
        raise ValueError(
            "student_scores, teacher_scores and mask must all be [B, n]; got "
            f"{tuple(student_scores.shape)}, {tuple(teacher_scores.shape)}, {tuple(mask.shape)}"
        )
    if topk is not None and topk < 2:
        raise ValueError(f"topk must be at least 2 (or None), got {topk}")
    mask = mask.bool()
    batch, n = mask.shape
    counts = mask.sum(dim=1)  # [B]
    if padding == "reference":
        longest = int(counts.max()) if batch else 0
        if list_length is not None:
            if list_length < longest:
                raise ValueError(f"list_length {list_length} is below the longest row's {longest} tokens")
            longest = int(list_length)
        width = longest if topk is None else min(int(topk), longest)
    else:
        width = n if topk is None else min(int(topk), n)
    if width < 2:
        return student_scores.masked_fill(~mask, 0.0).sum() * 0.0

    teacher = teacher_scores.detach().masked_fill(~mask, float("-inf"))
    take = min(width, n)
    order = teacher.argsort(dim=1, descending=True, stable=True)[:, :take]  # teacher's best first
    scores = student_scores.gather(1, order)
    if take < width:  # padding slots beyond the tensor's width
        scores = torch.cat([scores, scores.new_zeros(batch, width - take)], dim=1)
    k = counts.clamp(max=width)  # [B]
    slot = torch.arange(width, device=mask.device)
    valid = slot[None, :] < k[:, None]  # [B, width]: the row's own tokens
    relevance = (k[:, None] - slot[None, :]).clamp_min(0) * valid  # k, k-1, ..., 1, then 0
    scores = torch.where(valid, scores, torch.zeros_like(scores))  # padding slots: score 0
    diff = scores[:, :, None] - scores[:, None, :]  # s_i - s_j
    pairwise = F.softplus(-sigma * diff) / math.log(2.0)  # log2(1 + exp(-sigma (s_i - s_j)))

    # relevance strictly decreases along the valid slots and is 0 on padding slots: y_i > y_j
    # <=> i is a valid slot before j (j valid, or a padding slot in "reference" mode)
    items = torch.ones_like(valid) if padding == "reference" else valid
    pairs = valid[:, :, None] & items[:, None, :] & (slot[:, None] < slot[None, :])[None]
    if weighting == "arp2":
        weights = (relevance[:, :, None] - relevance[:, None, :]).to(scores.dtype)
    else:
        weights = _ndcg2_weights(relevance, scores, items).to(scores.dtype)
    total = (pairwise * weights * pairs).sum(dim=(1, 2))  # [B]

    if padding == "reference":
        return (total / float(width * width)).mean()
    per_row = total / k.clamp_min(1).to(scores.dtype) ** 2
    rows = k >= 2
    if not bool(rows.any()):
        return scores.sum() * 0.0
    return per_row[rows].mean()
