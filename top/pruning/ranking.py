"""Ranking distillation: teach a student's token scores the teacher's token *ranking*.

ToP (§3.2) distils the ranking of tokens by importance in the final layer of the unpruned
teacher into the early layers of the pruned student, with a LambdaLoss (Wang et al., CIKM 2018)
between the teacher's order and the student's scores. The reference trainer uses pytorchltr's
``LambdaARPLoss2`` on the teacher's top-``K`` tokens (``K = 20``; 10 for CoLA) with graded
relevance ``K, K-1, ..., 1`` and divides each list's loss by ``K^2``; this module implements that
loss (``weighting="arp2"``) and the NDCG-Loss2 weighting of the same framework
(``weighting="ndcg2"``), without the third-party dependency.

For one list with relevance ``y`` and student scores ``s``, with ``sigma = 1``::

    loss = sum over pairs (i, j) with y_i > y_j of  w_ij * log2(1 + exp(-sigma (s_i - s_j)))

    arp2:  w_ij = y_i - y_j
    ndcg2: w_ij = |1/D(d_ij) - 1/D(d_ij + 1)| * |G_i - G_j|,  D(d) = log2(1 + d),
           d_ij = |rank_i - rank_j| under the student's current order (1-based, no gradient),
           G_i = (2^y_i - 1) / maxDCG

and the list's loss is divided by ``k^2`` (``k`` its length); the batch loss is the mean over
lists with at least two valid items.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

WEIGHTINGS = ("arp2", "ndcg2")


def _student_positions(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """0-based position of each valid item when sorted by ``scores`` (descending); no gradient."""
    keyed = scores.detach().masked_fill(~valid, float("-inf"))
    order = keyed.argsort(dim=1, descending=True, stable=True)
    return order.argsort(dim=1)


def _ndcg2_weights(relevance: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``delta_ij * |G_i - G_j|`` of LambdaLoss' NDCG-Loss2, ``[B, k, k]`` float64."""
    rel = relevance.to(torch.float64)
    gains = torch.where(valid, torch.pow(2.0, rel) - 1.0, torch.zeros_like(rel))  # [B, k]
    # ideal DCG: relevance is already in descending order along dim 1
    discounts = torch.log2(torch.arange(2, rel.shape[1] + 2, device=rel.device, dtype=torch.float64))
    max_dcg = (gains / discounts).sum(dim=1, keepdim=True).clamp_min(1e-12)
    gains = gains / max_dcg
    pos = _student_positions(scores, valid).to(torch.float64)  # [B, k]
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
) -> torch.Tensor:
    """Listwise LambdaLoss between the teacher's token ranking and the student's scores.

    Args:
        student_scores: ``[B, n]`` float, higher = more important; gradients flow into it. Values
            at masked positions are ignored (they may be ``-inf``).
        teacher_scores: ``[B, n]`` float; only their order matters (no gradient).
        mask: ``[B, n]`` bool, the tokens to rank (e.g. alive tokens without [CLS]).
        topk: only the teacher's ``topk`` best valid tokens of each row take part, with relevance
            ``k, ..., 1`` (``k = min(topk, valid count)``); None ranks every valid token.
        weighting: ``"arp2"`` (the reference's choice) or ``"ndcg2"``.
        sigma: steepness of the pairwise logistic.

    Returns:
        A scalar: the mean over rows with at least two valid tokens of each row's loss divided by
        ``k^2``; zero (still connected to ``student_scores``) when no row qualifies.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if student_scores.shape != teacher_scores.shape or student_scores.shape != mask.shape or student_scores.dim() != 2:
        raise ValueError(
            "student_scores, teacher_scores and mask must all be [B, n]; got "
            f"{tuple(student_scores.shape)}, {tuple(teacher_scores.shape)}, {tuple(mask.shape)}"
        )
    if topk is not None and topk < 2:
        raise ValueError(f"topk must be at least 2 (or None), got {topk}")
    mask = mask.bool()
    batch, n = mask.shape
    width = n if topk is None else min(int(topk), n)

    teacher = teacher_scores.detach().masked_fill(~mask, float("-inf"))
    order = teacher.argsort(dim=1, descending=True, stable=True)[:, :width]  # teacher's best first
    k = mask.sum(dim=1).clamp(max=width)  # [B]
    slot = torch.arange(width, device=mask.device)
    valid = slot[None, :] < k[:, None]  # [B, width]
    relevance = (k[:, None] - slot[None, :]).clamp_min(0) * valid  # k, k-1, ..., 1, then 0

    scores = student_scores.gather(1, order)
    scores = torch.where(valid, scores, torch.zeros_like(scores))  # drop -inf / nan of masked slots
    diff = scores[:, :, None] - scores[:, None, :]  # s_i - s_j
    pairwise = F.softplus(-sigma * diff) / math.log(2.0)  # log2(1 + exp(-sigma (s_i - s_j)))

    # relevance strictly decreases along the valid slots: y_i > y_j  <=>  i < j (both valid)
    pairs = valid[:, :, None] & valid[:, None, :] & (slot[:, None] < slot[None, :])[None]
    if weighting == "arp2":
        weights = (relevance[:, :, None] - relevance[:, None, :]).to(scores.dtype)
    else:
        weights = _ndcg2_weights(relevance, scores, valid).to(scores.dtype)
    per_row = (pairwise * weights * pairs).sum(dim=(1, 2)) / k.clamp_min(1).to(scores.dtype) ** 2

    rows = k >= 2
    if not bool(rows.any()):
        return scores.sum() * 0.0
    return per_row[rows].mean()
