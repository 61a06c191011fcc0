"""GLUE evaluation metrics.

Metric keys and values follow the ``evaluate`` library's ``glue`` metric: the same key names
(``accuracy``, ``f1``, ``matthews_correlation``, ``pearson``, ``spearmanr``) on the same 0-1
scale, computed with scikit-learn and SciPy so that ``evaluate`` (and its hub download) is not
needed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

logger = logging.getLogger(__name__)

GLUE_METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("matthews_correlation",),
    "sst2": ("accuracy",),
    "mrpc": ("accuracy", "f1"),
    "stsb": ("pearson", "spearmanr"),
    "qqp": ("accuracy", "f1"),
    "mnli": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "wnli": ("accuracy",),
}
"""Metric keys reported for each GLUE task, named as ``evaluate``'s ``glue`` metric names them."""

# The metric that tables and plots use for each task. It follows the results table of the ToP
# paper's reference implementation (microsoft/Moonlit, ToP/README.md): Matthews correlation for
# CoLA, F1 for MRPC, Pearson for STS-B and accuracy for RTE, QQP, SST-2, MNLI and QNLI. WNLI is
# not in that table; accuracy is its only GLUE metric.
_PRIMARY_METRIC: dict[str, str] = {
    "cola": "matthews_correlation",
    "mrpc": "f1",
    "stsb": "pearson",
}


# scikit-learn scorers, called as scorer(y_true, y_pred). ``f1`` is the binary F1 of class 1
# (``equivalent`` for MRPC, ``duplicate`` for QQP), as in ``evaluate``.
_CLASSIFICATION_SCORERS = {
    "accuracy": accuracy_score,
    "f1": f1_score,
    "matthews_correlation": matthews_corrcoef,
}


def _check_task(task: str) -> None:
    """Raise ``ValueError`` naming the known tasks if ``task`` is not a GLUE task."""
    if task not in GLUE_METRICS:
        raise ValueError(f"unknown GLUE task {task!r}; expected one of {sorted(GLUE_METRICS)}")


def primary_metric(task: str) -> str:
    """Return the metric key used for ``task`` in tables and plots.

    The choice follows the ToP paper's results table: ``matthews_correlation`` for CoLA, ``f1``
    for MRPC, ``pearson`` for STS-B and ``accuracy`` for every other task.
    """
    _check_task(task)
    return _PRIMARY_METRIC.get(task, "accuracy")


def _as_vector(values: Sequence | np.ndarray, name: str) -> np.ndarray:
    """Convert ``values`` to a 1-D NumPy array, rejecting other shapes."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def compute_glue_metrics(
    task: str,
    predictions: Sequence | np.ndarray,
    references: Sequence | np.ndarray,
) -> dict[str, float]:
    """Compute the GLUE metrics of ``task`` for one set of predictions.

    Args:
        task: GLUE task name as ``evaluate`` spells it (``cola``, ``sst2``, ...).
        predictions: one prediction per example: integer class ids, or floats for ``stsb``.
        references: the gold labels, in the same form and order as ``predictions``.

    Returns:
        A dict with exactly the keys ``GLUE_METRICS[task]`` and plain Python float values on a
        0-1 scale. Correlations of a constant input are undefined and come back as ``nan``.

    Raises:
        ValueError: for an unknown task, inputs that are empty, not one-dimensional, of
            different lengths, or (for classification tasks) not integer class ids.
    """
    _check_task(task)
    preds = _as_vector(predictions, "predictions")
    refs = _as_vector(references, "references")
    if preds.shape != refs.shape:
        raise ValueError(f"predictions and references differ in length: {len(preds)} != {len(refs)}")
    if len(preds) == 0:
        raise ValueError("cannot compute metrics on empty predictions and references")

    if task == "stsb":
        preds = preds.astype(np.float64)
        refs = refs.astype(np.float64)
        return {
            "pearson": float(pearsonr(preds, refs)[0]),
            "spearmanr": float(spearmanr(preds, refs)[0]),
        }

    for array, name in ((preds, "predictions"), (refs, "references")):
        if array.dtype.kind not in "iub":
            raise ValueError(f"{name} for task {task!r} must be integer class ids, got dtype {array.dtype} (take the argmax of the logits first)")

    results = {key: float(_CLASSIFICATION_SCORERS[key](refs, preds)) for key in GLUE_METRICS[task]}
    logger.debug("GLUE metrics for %s on %d examples: %s", task, len(preds), results)
    return results


def glue_predictions(logits: np.ndarray) -> np.ndarray:
    """A GLUE head's outputs ``[N, C]`` as the metrics take them: ``[N]`` scores for a regression
    head (``C == 1``, STS-B), else the class ids (argmax)."""
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must be [N, C], got shape {logits.shape}")
    return logits[:, 0] if logits.shape[1] == 1 else logits.argmax(axis=1)
