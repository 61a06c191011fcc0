"""Dev-set sampling noise: how far a run's dev score, and the difference between two runs' dev
scores, would move on another sample of the task's examples (a bootstrap over dev examples).

The reproduction's verdict (:mod:`top.report.equal_flops`) reads the spread over seeds, and the
seeds share one dev set, so that spread holds the training's noise but not the dev set's own.
Resampling the dev examples with replacement gives the latter for one score (Efron & Tibshirani,
*An Introduction to the Bootstrap*, 1993, ch. 13); resampling two runs with the same indices
(the paired bootstrap, Koehn, EMNLP 2004) gives it for their difference, which is smaller than
either score's wherever the two runs get the same examples right and wrong.

GLUE tasks only: one prediction per dev example. (SQuAD's metric groups a question's features
and its several answers; a resample would have to draw questions, not features.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from top.report.equal_flops import score_at
from top.tasks import is_qa_task
from top.tasks.glue_metrics import compute_glue_metrics, glue_predictions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Interval:
    """A statistic on the full dev set and its bootstrap distribution.

    Attributes:
        estimate: the statistic on the dev set as it is.
        std: the standard deviation over the resamples.
        low, high: the percentile interval at the bootstrap's ``level`` (e.g. 2.5th and 97.5th).
        samples: the number of resamples.
    """

    estimate: float
    std: float
    low: float
    high: float
    samples: int

    def scaled(self, factor: float) -> Interval:
        """The same interval in other units (e.g. ``100``: a 0-1 metric as the report's x100)."""
        return Interval(self.estimate * factor, self.std * factor, self.low * factor, self.high * factor, self.samples)

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def bootstrap(statistic: Callable[[np.ndarray], float], n: int, samples: int = 2000, seed: int = 0, level: float = 0.95) -> Interval:
    """``statistic`` (dev-example indices ``[n]`` -> a number) on the dev set as it is and on
    ``samples`` resamples of its ``n`` examples drawn with replacement (a generator seeded with
    ``seed``: the same ``seed`` and ``n`` draw the same resamples, which is what pairs two runs).
    Resamples whose statistic is undefined (NaN, e.g. a correlation of constant predictions) are
    left out of the spread."""
    if n < 2:
        raise ValueError(f"a bootstrap needs at least 2 examples, got {n}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, size=n)) for _ in range(samples)], dtype=float)
    values = values[~np.isnan(values)]
    if len(values) < 2:
        raise ValueError(f"the statistic is undefined on all but {len(values)} of {samples} resamples")
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(statistic(np.arange(n))), float(values.std(ddof=1)), float(low), float(high), len(values))


def glue_score(task: str, metric: str, predicted: np.ndarray, labels: np.ndarray) -> Callable[[np.ndarray], float]:
    """Dev-example indices -> ``metric`` of ``predicted`` against ``labels`` on those examples
    (``[N]`` each: class ids, or scores for STS-B), computed as the evaluation computes it
    (:func:`top.tasks.glue_metrics.compute_glue_metrics`)."""
    if len(predicted) != len(labels):
        raise ValueError(f"{task}: {len(predicted)} predictions for {len(labels)} labels")
    return lambda index: float(compute_glue_metrics(task, predicted[index], labels[index])[metric])


def paired_difference(
    first: Callable[[np.ndarray], float], second: Callable[[np.ndarray], float], n: int, samples: int = 2000, seed: int = 0, level: float = 0.95
) -> Interval:
    """``first`` minus ``second`` (two statistics of the same ``n`` dev examples: two runs' scores,
    :func:`glue_score`, or two methods' readouts, :func:`weighted_score`), both computed on each
    resample's examples."""
    return bootstrap(lambda index: first(index) - second(index), n, samples, seed, level)


def readout_weights(reductions: Mapping[str, float], target: float) -> dict[str, float] | None:
    """The weights that make a method's score at FLOPs reduction ``target`` out of its settings'
    scores (``reductions``: setting -> its FLOPs reduction, one seed's curve): the two settings
    that bracket the target, weighted as :func:`top.report.equal_flops.score_at` interpolates
    them in log FLOPs (settings at the same reduction share their point's weight); None where
    the curve does not reach the target. The FLOPs reductions are held at their dev-set values."""
    reading = score_at(((reduction, 0.0) for reduction in reductions.values()), target)  # only the FLOPs place the bracket
    if reading.score is None:
        return None
    low, high = reading.bracket
    weights: dict[str, float] = {}
    for point, weight in ((low, 1.0 - reading.share), (high, reading.share)):
        at_point = [setting for setting, reduction in reductions.items() if float(reduction) == point]
        for setting in at_point:
            weights[setting] = weights.get(setting, 0.0) + weight / len(at_point)
    return {setting: weight for setting, weight in weights.items() if weight > 0}


def weighted_score(scores: Mapping[str, Callable[[np.ndarray], float]], weights: Mapping[str, float]) -> Callable[[np.ndarray], float]:
    """Dev-example indices -> the weighted sum of the settings' scores (:func:`readout_weights`)
    on those examples: a method's score at a FLOPs target, on one resample."""
    return lambda index: sum(weight * scores[setting](index) for setting, weight in weights.items())


@dataclass(frozen=True)
class RunPredictions:
    """One run's predictions on a dev split (:func:`run_predictions`).

    Attributes:
        predicted: ``[N]`` class ids, or scores for a regression task.
        labels: ``[N]``.
        score: the task's primary metric on the full split, on the 0-1 scale.
    """

    predicted: np.ndarray
    labels: np.ndarray
    score: float


def run_predictions(cfg: Mapping[str, Any], task: str, model_dir: str | Path) -> RunPredictions:
    """A saved run's predictions on ``task``'s first dev split, made as the workflow's
    ``evaluate`` rule makes them (gather mode, tokens really removed; the configuration's
    ``eval`` batch size and limit)."""
    from top.evaluate import predict
    from top.models import load_run
    from top.pipeline import resolve_device
    from top.tasks.base import get_task
    from top.tasks.settings import TaskConfig

    if is_qa_task(task):
        raise ValueError(f"{task}: the dev-set bootstrap covers GLUE tasks (one prediction per example), not span extraction")
    spec = get_task(TaskConfig.from_config(cfg), task)
    model, tokenizer, _ = load_run(model_dir)
    split, limit = spec.dev_splits[0], cfg["eval"].get("limit")
    dataset = spec.dev_features(split, tokenizer, limit)
    device = resolve_device(cfg["device"])
    preds = predict(model, dataset, spec.collate(tokenizer), batch_size=cfg["eval"]["batch_size"], mode="gather", device=device)
    score = spec.score(split, dataset, preds.logits, preds.labels, limit)[spec.primary_metric]
    return RunPredictions(glue_predictions(preds.logits), preds.labels, float(score))
