"""ToP's rank bins and gates (ToP §3.3): which bin a token falls in, how many candidates each
bin holds at a given length, and the hard-concrete gates of every pruning layer and its bins."""

from __future__ import annotations

import torch
from torch import nn

from top.pruning.l0 import HardConcreteGate
from top.pruning.top.settings import ToPSettings


def prunable(alive: torch.Tensor, protected: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, n]`` bool: the rank-bin candidates, the alive slots other than slot 0 ([CLS]) and
    the ``protected`` ones (``[B, n]`` bool or None), which the encoder keeps in any case."""
    candidates = alive.clone()
    candidates[:, 0] = False
    if protected is not None:
        candidates &= ~protected
    return candidates


def rank_bins(scores: torch.Tensor, alive: torch.Tensor, bin_num: int, protected: torch.Tensor | None = None) -> torch.Tensor:
    """Rank bin of every token slot (ToP §3.3).

    Args:
        scores: ``[B, n]`` importance (higher first); ties are broken by slot order.
        alive: ``[B, n]`` bool.
        bin_num: number of bins.
        protected: ``[B, n]`` bool or None: slots kept whatever the bins say (a SQuAD question
            under ``qa.protect_question``); they are no candidates.

    Returns:
        ``[B, n]`` long: ``floor(rank * bin_num / a)`` for the ``a`` candidates (alive slots other
        than slot 0, [CLS], and the protected ones), ranked from 0; ``bin_num`` for every other
        slot.
    """
    candidates = prunable(alive, protected)
    keyed = scores.detach().masked_fill(~candidates, float("-inf"))
    order = keyed.argsort(dim=1, descending=True, stable=True)
    rank = order.argsort(dim=1)
    count = candidates.sum(dim=1, keepdim=True).clamp_min(1)
    bins = torch.div(rank * bin_num, count, rounding_mode="floor")
    return torch.where(candidates, bins, torch.full_like(bins, bin_num))


def bin_occupancy(candidates: torch.Tensor, bin_num: int) -> torch.Tensor:
    """Number of candidates that fall into each rank bin (:func:`rank_bins`).

    With ``a`` candidates, bin ``b`` holds the ranks ``r`` with ``floor(r B / a) = b``, that is
    ``ceil((b + 1) a / B) - ceil(b a / B)`` of them (``B = bin_num``; some bins are empty when
    ``a < B``). A fractional ``a`` (an expected count) interpolates linearly between
    ``floor(a)`` and ``floor(a) + 1``, so the result is exact at integers and differentiable in
    ``a`` between them.

    Args:
        candidates: ``[...]`` float, non-negative.
        bin_num: ``B``.

    Returns:
        ``[..., B]`` float (same dtype as ``candidates``); sums to ``candidates``.
    """
    low = candidates.detach().floor()
    frac = candidates - low  # carries the gradient
    edges = torch.arange(bin_num + 1, device=candidates.device, dtype=torch.long)

    def occupancy(a: torch.Tensor) -> torch.Tensor:
        a = a.to(torch.long)[..., None]
        ceil = torch.div(edges * a + bin_num - 1, bin_num, rounding_mode="floor")  # ceil(b a / B)
        return (ceil[..., 1:] - ceil[..., :-1]).to(candidates.dtype)

    lower, upper = occupancy(low), occupancy(low + 1)
    return lower + frac[..., None] * (upper - lower)


def bin_keep_values(scores: torch.Tensor, alive: torch.Tensor, values: torch.Tensor, protected: torch.Tensor | None = None) -> torch.Tensor:
    """Each slot's keep value: ``values[bin]`` for candidates, 1 for [CLS] and protected slots,
    0 if not alive.

    Args:
        scores, alive: ``[B, n]``; values: ``[bin_num]`` keep value of every bin (differentiable);
        protected: ``[B, n]`` bool or None (:func:`rank_bins`).

    Returns:
        ``[B, n]`` float.
    """
    bins = rank_bins(scores, alive, values.shape[0], protected)
    padded = torch.cat([values, values.new_ones(1)])  # index bin_num: [CLS], protected (and dead) slots
    keep = padded[bins]
    return torch.where(alive, keep, torch.zeros_like(keep))


def at_least(probabilities: torch.Tensor) -> torch.Tensor:
    """``[B]`` ``P(K > b)`` for ``b = 0..B-1``, where ``K`` counts the successes of ``B``
    independent trials with success ``probabilities`` ``[B]`` (a Poisson-binomial survival
    function; exact, by dynamic programming over the trials, and differentiable).

    With ``bin_order: ranked`` this is the probability that the ``b``-th best rank bin is kept:
    the sampled gate values are sorted, so the best ``K`` bins get the ``K`` open gates.
    """
    size = probabilities.shape[-1]
    counts = torch.zeros(size + 1, dtype=probabilities.dtype, device=probabilities.device)  # P(K = k)
    counts[0] = 1.0  # before any trial
    for p in probabilities.unbind(-1):
        counts = counts * (1.0 - p) + torch.cat([counts.new_zeros(1), counts[:-1]]) * p
    return 1.0 - counts.cumsum(0)[:-1]


# --------------------------------------------------------------------------------- gates


class ToPLayerGates(nn.Module):
    """The gates of one pruning layer: ``bins`` (one per rank bin) and ``layer`` (prune or not,
    the coarse step of ToP §3.3's coarse-to-fine selection).

    With ``layer_gates: false`` (an ablation) there is no layer gate (``layer`` is None): the
    layer always prunes with its bins, and a bin survives with probability ``P(z_b > 0)``.

    With ``bin_order: ranked`` (an ablation) the gates decide only how many bins survive, and
    the survivors are always the best-ranked: the sampled values are sorted in descending order
    before they are assigned to bins 0, 1, ... (bin 0 holds the highest scores), the
    deterministic gates keep the first bins, and bin ``b`` survives with probability
    ``P(K > b)`` (:func:`at_least`; ``K`` the number of open gates).
    """

    def __init__(self, s: ToPSettings):
        super().__init__()
        common = dict(
            temperature=s.temperature,
            magical_number=s.magical_number,
            log_alpha_range=None if s.log_alpha_range is None else tuple(s.log_alpha_range),
        )
        self.bins = HardConcreteGate(s.bin_num, droprate_init=s.droprate_init, **common)
        self.layer = HardConcreteGate(1, droprate_init=s.layer_droprate_init, **common) if s.layer_gates else None
        #: Whether the kept bins are always the best-ranked ones (``bin_order: ranked``).
        self.ranked = s.bin_order == "ranked"
        #: Bins added to (or, if negative, removed from) ``round(bin_num * r)`` by the FLOPs
        #: calibration at the end of the ``prune`` stage (:meth:`ToP.calibrate`).
        self.register_buffer("bin_offset", torch.zeros((), dtype=torch.long))

    def constrain_(self) -> None:
        self.bins.constrain_()
        if self.layer is not None:
            self.layer.constrain_()

    def layer_probability(self) -> torch.Tensor:
        """``P(g > 0)``, the probability that the layer prunes (scalar); 1 without a layer gate."""
        if self.layer is None:
            return torch.ones((), dtype=self.bins.log_alpha.dtype, device=self.bins.log_alpha.device)
        return self.layer.prob_nonzero()[0]

    def sampled_keep(self) -> torch.Tensor:
        """``[bin_num]`` training keep values: sampled bins, straight-through binary layer gate
        (the sampled bins alone without a layer gate)."""
        z = self.bins.sample()
        if self.ranked:
            z = z.sort(descending=True).values
        if self.layer is None:
            return z
        g = self.layer.sample()
        g_hard = (g > 0).to(g.dtype)
        g = g_hard + (g - g.detach())  # forward: 0/1; backward: d/dg = 1
        return 1.0 - (1.0 - z) * g

    @torch.no_grad()
    def deterministic_keep(self) -> torch.Tensor:
        """``[bin_num]`` 0/1 evaluation keep values: the ``round(bin_num * r)`` bins with the
        largest ``log_alpha`` (with ``bin_order: ranked``, the first ones), where ``r`` is the
        expected keep ratio (:meth:`keep_ratio`).

        The reference thresholds the layer gate and the bin gates separately; a layer gate with
        ``P(g > 0) = 0.7`` then prunes fully at evaluation although the constraint counted it at
        70%, and the evaluated FLOPs miss the target (measured: 59% sparsity for a 50% target on
        SST-2). Keeping the expected fraction of bins makes the deterministic model's FLOPs
        those the constraint was trained to, up to one bin per layer. ``bin_offset`` (set by the
        calibration, :meth:`ToP.calibrate`) shifts the count.
        """
        size = self.bins.log_alpha.shape[-1]
        num_keep = min(max(int(torch.round(self.keep_ratio() * size)) + int(self.bin_offset), 0), size)
        if self.ranked:
            order = torch.arange(size, device=self.bins.log_alpha.device)
        else:
            order = self.bins.log_alpha.detach().argsort(descending=True, stable=True)
        keep = torch.zeros(size, dtype=self.bins.log_alpha.dtype, device=self.bins.log_alpha.device)
        keep[order[:num_keep]] = 1.0
        return keep

    def bin_keep_probability(self, deterministic: bool = False) -> torch.Tensor:
        """``[bin_num]`` probability that each bin's tokens survive: ``1 - (1 - P(z_b>0)) P(g>0)``
        (a bin is dropped only when the layer prunes and the bin's gate is 0; ``P(g>0) = 1``
        without a layer gate; ``P(K > b)`` in place of ``P(z_b > 0)`` with ``bin_order: ranked``);
        the 0/1 :meth:`deterministic_keep` values if ``deterministic``."""
        if deterministic:
            return self.deterministic_keep()
        opened = self.bins.prob_nonzero()
        if self.ranked:
            opened = at_least(opened)
        return self._survival(opened)

    def keep_ratio(self, deterministic: bool = False) -> torch.Tensor:
        """Expected fraction of bins kept (scalar): the mean of :meth:`bin_keep_probability`.

        The bins' order does not change it: with ``bin_order: ranked`` the mean of ``P(K > b)``
        over the bins is ``E[K] / bin_num``, the mean of ``P(z_b > 0)``, so the Poisson-binomial
        recursion (:func:`at_least`) is not run for it.
        """
        if deterministic:
            return self.deterministic_keep().mean()
        return self._survival(self.bins.prob_nonzero().mean())

    def _survival(self, opened: torch.Tensor) -> torch.Tensor:
        """Probability that a bin's tokens survive, ``1 - (1 - opened) P(g>0)``, from the
        probability ``opened`` that its gate is open (``[bin_num]``, or their mean: the formula
        is linear in ``opened``, so the mean of the survivals is the survival of the mean)."""
        return 1.0 - (1.0 - opened) * self.layer_probability()


class ToPGates(nn.Module):
    """Everything ToP learns besides the encoder: per pruning layer gates and the multipliers."""

    def __init__(self, s: ToPSettings):
        super().__init__()
        self.layers = nn.ModuleDict({str(layer): ToPLayerGates(s) for layer in s.prune_layers})
        self.lambda_1 = nn.Parameter(torch.zeros(()))
        self.lambda_2 = nn.Parameter(torch.zeros(()))

    def gate_parameters(self) -> list[nn.Parameter]:
        return list(self.layers.parameters())

    def lambda_parameters(self) -> list[nn.Parameter]:
        return [self.lambda_1, self.lambda_2]
