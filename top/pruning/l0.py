"""Hard-concrete gates for L0 regularisation (Louizos, Welling & Kingma, ICLR 2018).

A gate ``z`` in ``[0, 1]`` is a "stretched and clamped" binary-concrete variable with a learned
location ``log_alpha``. In training it is sampled with the reparameterisation trick
(differentiable in ``log_alpha``, and exactly 0 or 1 with non-zero probability); the
probability that it is non-zero, ``P(z > 0)``, is a smooth function of ``log_alpha`` and is what
an expected-L0 (or expected-FLOPs) constraint uses. At evaluation the gates are deterministic
0/1 masks.

Constants and conventions follow ToP's and CoFiPruning's ``L0Module``: the stretch interval is
``(limit_a, limit_b) = (-0.1, 1.1)``, the temperature ``beta = 2/3``, probabilities are clamped to
``[eps, 1 - eps]`` with ``eps = 1e-6``, ``log_alpha`` starts at
``log(1 - droprate_init) - log(droprate_init)`` (plus N(0, 0.01) noise) and may be kept inside
``[log 1e-2, log 1e2]`` after every update. The deterministic mask of a group of gates keeps
``size - round(size - sum P(z > 0))`` gates, those with the largest ``log_alpha``.

Everything is created on the parameter's device and dtype: nothing here assumes CUDA.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

LIMIT_A = -0.1
LIMIT_B = 1.1
EPSILON = 1e-6
TEMPERATURE = 2.0 / 3.0
#: ToP/CoFi clamp ``log_alpha`` to ``[log(1e-2), log(1e2)]`` after every optimiser step.
LOG_ALPHA_RANGE = (math.log(1e-2), math.log(1e2))


def log_alpha_for_droprate(droprate: float) -> float:
    """The ``log_alpha`` whose sigmoid is ``1 - droprate`` (the CoFi/ToP initialisation)."""
    if not 0.0 < droprate < 1.0:
        raise ValueError(f"droprate must be in (0, 1), got {droprate}")
    return math.log(1.0 - droprate) - math.log(droprate)


class HardConcreteGate(nn.Module):
    """A tensor of independent hard-concrete gates.

    The gates form ``shape`` (e.g. ``(bins,)`` or ``(groups, bins)``); the last dimension is the
    *group* over which the deterministic mask rounds its number of zeros (one group per row).

    Args:
        shape: shape of ``log_alpha``; an int means ``(shape,)``.
        droprate_init: initial probability of dropping, sets the mean of ``log_alpha``.
        temperature: ``beta`` of the concrete distribution.
        limit_a, limit_b: the stretch interval (``limit_a < 0 < 1 < limit_b``).
        epsilon: clamp of uniform noise and of probabilities.
        magical_number: scale of ``log_alpha / beta`` in the deterministic soft mask (0.8 in
            CoFi/ToP; only the order of the gates matters, so any positive value is equivalent).
        log_alpha_range: ``(low, high)`` bounds kept by :meth:`constrain_`, applied (as a value
            clamp) wherever ``log_alpha`` is read; None disables both.
        init_std: standard deviation of the initial noise on ``log_alpha``.

    Attributes:
        log_alpha: ``nn.Parameter`` of ``shape``.
    """

    def __init__(
        self,
        shape: int | Sequence[int],
        *,
        droprate_init: float = 0.5,
        temperature: float = TEMPERATURE,
        limit_a: float = LIMIT_A,
        limit_b: float = LIMIT_B,
        epsilon: float = EPSILON,
        magical_number: float = 0.8,
        log_alpha_range: tuple[float, float] | None = LOG_ALPHA_RANGE,
        init_std: float = 0.01,
    ):
        super().__init__()
        shape = (shape,) if isinstance(shape, int) else tuple(int(s) for s in shape)
        if not shape or min(shape) < 1:
            raise ValueError(f"gate shape must be non-empty with positive sizes, got {shape}")
        if not limit_a < 0.0 < 1.0 < limit_b:
            raise ValueError(f"need limit_a < 0 < 1 < limit_b, got ({limit_a}, {limit_b})")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if log_alpha_range is not None and not log_alpha_range[0] < log_alpha_range[1]:
            raise ValueError(f"log_alpha_range must be (low, high) with low < high, got {log_alpha_range}")
        self.temperature = float(temperature)
        self.limit_a = float(limit_a)
        self.limit_b = float(limit_b)
        self.epsilon = float(epsilon)
        self.magical_number = float(magical_number)
        self.log_alpha_range = None if log_alpha_range is None else tuple(float(v) for v in log_alpha_range)
        self.init_std = float(init_std)
        self.log_alpha = nn.Parameter(torch.empty(shape))
        self.reset_parameters(droprate_init)

    # -- parameters ---------------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self, droprate_init: float) -> None:
        """Set ``log_alpha`` to ``N(log((1 - d) / d), init_std^2)``, clamped into the range."""
        self.log_alpha.normal_(log_alpha_for_droprate(droprate_init), self.init_std)
        self.constrain_()

    @torch.no_grad()
    def constrain_(self) -> None:
        """Clamp ``log_alpha`` in place into ``log_alpha_range`` (ToP's ``constrain_parameters``).

        Call it after an optimiser step and before the next use; :class:`top.pruning.top.ToP`
        calls it at the start of every training forward, before the gates enter the graph.
        """
        if self.log_alpha_range is not None:
            self.log_alpha.clamp_(*self.log_alpha_range)

    def _log_alpha(self) -> torch.Tensor:
        """``log_alpha`` as used in computations (value-clamped into the range, if any)."""
        if self.log_alpha_range is None:
            return self.log_alpha
        return self.log_alpha.clamp(*self.log_alpha_range)

    # -- distribution ---------------------------------------------------------------------------
    def prob_nonzero(self) -> torch.Tensor:
        """``P(z > 0)`` of every gate, shape of ``log_alpha``, differentiable.

        ``1 - Q(0)`` where ``Q`` is the CDF of the stretched concrete distribution:
        ``sigmoid(log_alpha - beta * log(-limit_a / limit_b))``, clamped to ``[eps, 1 - eps]``.
        """
        shift = self.temperature * math.log(-self.limit_a / self.limit_b)
        return torch.sigmoid(self._log_alpha() - shift).clamp(self.epsilon, 1.0 - self.epsilon)

    def expected_l0(self) -> torch.Tensor:
        """Expected number of non-zero gates (a differentiable scalar)."""
        return self.prob_nonzero().sum()

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One reparameterised sample of every gate, in ``[0, 1]``, shape of ``log_alpha``.

        ``u ~ U(eps, 1 - eps)``, ``s = sigmoid((logit(u) + log_alpha) / beta)``,
        ``z = clamp(s * (limit_b - limit_a) + limit_a, 0, 1)``.
        """
        log_alpha = self._log_alpha()
        u = torch.rand(log_alpha.shape, generator=generator, device=log_alpha.device, dtype=log_alpha.dtype)
        u = u * (1.0 - 2.0 * self.epsilon) + self.epsilon
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / self.temperature)
        return (s * (self.limit_b - self.limit_a) + self.limit_a).clamp(0.0, 1.0)

    @torch.no_grad()
    def deterministic(self) -> torch.Tensor:
        """The evaluation mask: 0/1 floats, shape of ``log_alpha``, no gradient.

        Per group (last dimension, size ``m``): ``m - round(m - sum P(z > 0))`` gates are 1, those
        with the largest ``log_alpha`` (ties: lower index first). ``round`` is half-to-even, as
        Python's ``round`` in the reference.
        """
        log_alpha = self._log_alpha()
        size = log_alpha.shape[-1]
        expected_zeros = size - self.prob_nonzero().sum(dim=-1)  # [...]
        num_keep = (size - torch.round(expected_zeros)).long().clamp(0, size)
        score = torch.sigmoid(log_alpha / self.temperature * self.magical_number)
        order = score.argsort(dim=-1, descending=True, stable=True)
        rank = order.argsort(dim=-1)
        return (rank < num_keep[..., None]).to(log_alpha.dtype)

    def forward(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """A sample in training mode, the deterministic mask in eval mode."""
        return self.sample(generator) if self.training else self.deterministic()

    def extra_repr(self) -> str:
        return (
            f"shape={tuple(self.log_alpha.shape)}, temperature={self.temperature:.4g}, "
            f"limits=({self.limit_a}, {self.limit_b}), log_alpha_range={self.log_alpha_range}"
        )
