"""Comparison at equal FLOPs: each method's score at a given FLOPs reduction, read off its own
accuracy-vs-FLOPs curve, and whether ToP is ahead of the best baseline there.

The ToP paper's question is whether, at the same FLOPs, ToP keeps more accuracy than the other
token-pruning methods. Each method setting lands at its own FLOPs reduction, so scores are
compared at fixed targets (2x and 4x by default) instead of setting by setting:

1. Per (task, method, seed), the method's curve is its settings' points (FLOPs reduction, score)
   for that seed. :func:`score_at` reads the score at the target by linear interpolation in
   log(FLOPs reduction) between the two nearest points that bracket it (a point at the target
   itself is read as it is). It never extrapolates: a target beyond the curve is missing, with
   the reason (``cannot reach 4x: max 3.6x``, ``does not go down to 2x: min 2.3x``).
2. Per (task, method), :func:`readouts` aggregates the seeds: mean, sample standard deviation
   (ddof 1) and min–max. If any seed cannot reach the target the method has no value there, and
   the reason names those seeds.
3. Per (task, target), :func:`verdict` compares ToP with the best baseline (the baseline method,
   ``topk``, ``ltp`` or ``power_bert``, with the highest mean there). The rule, with ``s`` the
   sample standard deviation over seeds:

   * ``ahead``: mean(ToP) - s(ToP) > mean(best) + s(best);
   * ``behind``: mean(ToP) + s(ToP) < mean(best) - s(best);
   * ``within spread`` otherwise.

   With fewer than two seeds on either side there is no spread, and the verdict is
   ``undetermined (one seed)``. Given ``seeds``, the number of seeds the configuration asks for
   (a task still running), fewer seeds on either side leave the verdict undetermined too, with
   what the rule reads so far: ``undetermined: 2 of 3 seeds (so far ahead)``; two seeds' standard
   deviation is too rough an estimate of the spread to rest a verdict on. Where ToP or every
   baseline lacks a value, the verdict says why.

Scores are on the tables' 0-100 scale; FLOPs reductions are dense FLOPs / pruned FLOPs
(docs/design.md, "FLOPs convention").
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

TARGETS = (2.0, 4.0)
"""FLOPs reductions the comparison reads scores at."""
BASELINES = ("topk", "ltp", "power_bert")
PROPOSED = "top"
_SAME = 1e-9  # relative tolerance for "a point at the target"


@dataclass(frozen=True)
class Reading:
    """A score read off one seed's curve at ``target``; ``score`` None with ``reason`` when the
    curve cannot give one. ``bracket``: the FLOPs reductions of the points used; ``share``: the
    upper point's weight in the interpolation (the lower one's is ``1 - share``; 1 when the
    target is a point of the curve)."""

    target: float
    score: float | None
    reason: str | None = None
    bracket: tuple[float, float] | None = None
    share: float | None = None


def _fmt(x: float) -> str:
    return f"{x:.3g}x"


def _fmt_bound(bound: float, target: float) -> str:
    """``bound`` with as many significant digits as it takes not to print as ``target`` (a
    curve ending at 2.0004x reads "min 2.0004x", not "min 2x", beside a 2x target)."""
    for digits in range(3, 10):
        text = f"{bound:.{digits}g}x"
        if text != f"{target:.{digits}g}x":
            return text
    return f"{bound!r}x"


def score_at(points: Iterable[tuple[float, float]], target: float) -> Reading:
    """The score at FLOPs reduction ``target`` on the curve through ``points``
    ((FLOPs reduction, score) pairs, any order).

    Points with a missing score (NaN: an undefined metric) or a non-positive reduction are left
    out; points at the same reduction are averaged. The score is interpolated linearly in
    log(FLOPs reduction) between the largest reduction <= ``target`` and the smallest >=
    ``target``; never extrapolated."""
    if not target > 0:
        raise ValueError(f"target FLOPs reduction must be positive, got {target}")
    merged: dict[float, list[float]] = {}
    for reduction, score in points:
        if reduction is None or score is None or not (reduction > 0) or math.isnan(score) or math.isnan(reduction):
            continue
        merged.setdefault(float(reduction), []).append(float(score))
    if not merged:
        return Reading(target, None, "no point with a score")
    curve = sorted((x, sum(ys) / len(ys)) for x, ys in merged.items())
    for x, y in curve:
        if abs(x - target) <= _SAME * target:
            return Reading(target, y, None, (x, x), 1.0)
    below = [(x, y) for x, y in curve if x < target]
    above = [(x, y) for x, y in curve if x > target]
    if not above:
        return Reading(target, None, f"cannot reach {_fmt(target)}: max {_fmt_bound(curve[-1][0], target)}")
    if not below:
        return Reading(target, None, f"does not go down to {_fmt(target)}: min {_fmt_bound(curve[0][0], target)}")
    (x0, y0), (x1, y1) = below[-1], above[0]
    weight = (math.log(target) - math.log(x0)) / (math.log(x1) - math.log(x0))
    return Reading(target, y0 + weight * (y1 - y0), None, (x0, x1), weight)


@dataclass(frozen=True)
class Readout:
    """One method's value at ``target`` on one task, over seeds.

    ``mean``/``std``/``low``/``high`` are None when some seed has no reading (``reason`` says
    which and why); ``std`` is None for a single seed."""

    task: str
    method: str
    target: float
    seeds: tuple[int, ...]
    scores: tuple[float, ...]
    mean: float | None
    std: float | None
    low: float | None
    high: float | None
    reason: str | None = None

    @property
    def available(self) -> bool:
        return self.mean is not None

    def text(self, digits: int = 1) -> str:
        """``81.2 ± 0.4 [80.8–81.6] (3 seeds)``, or the reason it is missing."""
        if not self.available:
            return f"– ({self.reason})"
        spread = f" ± {self.std:.{digits}f}" if self.std is not None else ""
        seeds = len(self.scores)
        span = f" [{self.low:.{digits}f}–{self.high:.{digits}f}]" if seeds > 1 else ""
        return f"{self.mean:.{digits}f}{spread}{span} ({seeds} seed{'s' if seeds != 1 else ''})"


def readouts(frame: pd.DataFrame, targets: Sequence[float] = TARGETS) -> list[Readout]:
    """Every (task, method other than ``dense``, target) readout of ``frame``.

    ``frame`` has one row per run with columns ``task``, ``method``, ``setting``, ``seed``,
    ``score`` and ``flops_reduction`` (a ``results.csv``, or a reproduction summary)."""
    missing = {"task", "method", "setting", "seed", "score", "flops_reduction"} - set(frame.columns)
    if missing:
        raise ValueError(f"equal-FLOPs comparison needs columns {sorted(missing)}")
    out = []
    runs = frame[frame["method"] != "dense"]
    for (task, method), group in runs.groupby(["task", "method"], sort=False):
        for target in targets:
            per_seed = {int(seed): score_at(zip(rows["flops_reduction"], rows["score"]), target) for seed, rows in group.groupby("seed", sort=True)}
            out.append(_aggregate(str(task), str(method), target, per_seed))
    return out


def _aggregate(task: str, method: str, target: float, per_seed: Mapping[int, Reading]) -> Readout:
    seeds = tuple(per_seed)
    failed: dict[str, list[int]] = {}
    for seed, reading in per_seed.items():
        if reading.score is None:
            failed.setdefault(str(reading.reason), []).append(seed)
    if failed:
        reasons = "; ".join(f"seed{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))}: {reason}" for reason, ids in failed.items())
        return Readout(task, method, target, seeds, (), None, None, None, None, reasons)
    scores = tuple(float(r.score) for r in per_seed.values())
    mean = sum(scores) / len(scores)
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / (len(scores) - 1)) if len(scores) > 1 else None
    return Readout(task, method, target, seeds, scores, mean, std, min(scores), max(scores))


@dataclass(frozen=True)
class Verdict:
    """ToP against the best baseline on one task at one target (module docstring's rule)."""

    task: str
    target: float
    verdict: str
    top: Readout | None
    best: Readout | None
    detail: str


def verdict(task: str, target: float, available: Sequence[Readout], seeds: int | None = None) -> Verdict:
    """The verdict for ``task`` at ``target`` from the readouts of that task and target;
    ``seeds``: how many seeds the configuration asks for (None: those present are all)."""
    by_method = {r.method: r for r in available if r.task == task and r.target == target}
    top = by_method.get(PROPOSED)
    baselines = [by_method[m] for m in BASELINES if m in by_method]
    reached = [r for r in baselines if r.available]
    best = max(reached, key=lambda r: r.mean) if reached else None
    if top is None:
        return Verdict(task, target, "no ToP runs", None, best, "")
    if not top.available:
        return Verdict(task, target, "ToP has no value", top, best, top.reason or "")
    if best is None:
        why = "; ".join(f"{r.method}: {r.reason}" for r in baselines) or "no baseline runs"
        return Verdict(task, target, "no baseline has a value", top, None, why)
    detail = f"ToP {top.text()} vs {best.method} {best.text()}"
    if top.std is None or best.std is None:
        return Verdict(task, target, "undetermined (one seed)", top, best, detail)
    if top.mean - top.std > best.mean + best.std:
        reading = "ahead"
    elif top.mean + top.std < best.mean - best.std:
        reading = "behind"
    else:
        reading = "within spread"
    have = min(len(top.seeds), len(best.seeds))
    if seeds is not None and have < seeds:
        return Verdict(task, target, f"undetermined: {have} of {seeds} seeds (so far {reading})", top, best, detail)
    return Verdict(task, target, reading, top, best, detail)


def verdicts(available: Sequence[Readout], targets: Sequence[float] = TARGETS, seeds: int | None = None) -> list[Verdict]:
    """:func:`verdict` for every task of ``available`` (in order of appearance) and target."""
    tasks = list(dict.fromkeys(r.task for r in available))
    return [verdict(task, target, available, seeds) for task in tasks for target in targets]
