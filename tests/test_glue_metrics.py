"""Tests of the GLUE metrics in ``top.tasks.glue_metrics`` on hand-computed cases."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from top.tasks.glue_metrics import GLUE_METRICS, compute_glue_metrics, glue_predictions, primary_metric


def test_metric_keys_use_evaluate_names() -> None:
    assert GLUE_METRICS == {
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


def test_matthews_correlation_of_a_two_by_two_table() -> None:
    # TP=2 (0,1), FN=1 (2), TN=2 (3,4), FP=1 (5):
    # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (4 - 1) / sqrt(81) = 1/3.
    result = compute_glue_metrics("cola", [1, 1, 0, 0, 0, 1], [1, 1, 1, 0, 0, 0])
    assert result == {"matthews_correlation": pytest.approx(1 / 3)}


def test_matthews_correlation_unbalanced_table() -> None:
    # References 1,1,1,1,0,0; predictions 1,1,1,0,0,1: TP=3, FN=1, TN=1, FP=1.
    # MCC = (3*1 - 1*1) / sqrt(4*4*2*2) = 2/8 = 0.25.
    result = compute_glue_metrics("cola", [1, 1, 1, 0, 0, 1], [1, 1, 1, 1, 0, 0])
    assert result["matthews_correlation"] == pytest.approx(0.25)


def test_matthews_correlation_perfect_and_inverted() -> None:
    refs = [0, 1, 1, 0]
    assert compute_glue_metrics("cola", refs, refs)["matthews_correlation"] == pytest.approx(1.0)
    inverted = [1 - r for r in refs]
    assert compute_glue_metrics("cola", inverted, refs)["matthews_correlation"] == pytest.approx(-1.0)


@pytest.mark.parametrize("task", ["mrpc", "qqp"])
def test_accuracy_and_f1_with_known_counts(task: str) -> None:
    refs = [1, 1, 1, 0, 0, 0, 0, 1]
    preds = [1, 1, 0, 1, 0, 0, 1, 1]
    # TP=3 (0,1,7), FN=1 (2), FP=2 (3,6), TN=2 (4,5).
    # accuracy = 5/8; F1 = 2TP / (2TP + FP + FN) = 6/9 = 2/3.
    result = compute_glue_metrics(task, preds, refs)
    assert list(result) == ["accuracy", "f1"]
    assert result["accuracy"] == pytest.approx(5 / 8)
    assert result["f1"] == pytest.approx(2 / 3)


def test_f1_counts_class_one_as_positive() -> None:
    # All predictions 0: no true positives, so F1 of class 1 is 0 while accuracy is 3/4.
    result = compute_glue_metrics("mrpc", [0, 0, 0, 0], [0, 0, 0, 1])
    assert result["accuracy"] == pytest.approx(0.75)
    assert result["f1"] == 0.0


def test_three_class_accuracy() -> None:
    # mnli: 3 of 5 right.
    result = compute_glue_metrics("mnli", np.array([0, 1, 2, 2, 1]), np.array([0, 1, 2, 0, 0]))
    assert result == {"accuracy": pytest.approx(0.6)}


def test_values_are_plain_python_floats() -> None:
    for task, preds, refs in [
        ("sst2", [1, 0], [1, 1]),
        ("mrpc", np.array([1, 0]), np.array([1, 1])),
        ("cola", [1, 0, 1], [1, 0, 0]),
        ("stsb", np.array([0.5, 1.0, 2.0], dtype=np.float32), [1.0, 2.0, 4.0]),
    ]:
        result = compute_glue_metrics(task, preds, refs)
        assert tuple(result) == GLUE_METRICS[task]
        assert all(type(value) is float for value in result.values())


def test_correlations_perfect_and_anti() -> None:
    refs = [0.0, 1.5, 2.0, 4.5, 5.0]
    positive = compute_glue_metrics("stsb", [2 * r + 1 for r in refs], refs)
    assert positive == {"pearson": pytest.approx(1.0), "spearmanr": pytest.approx(1.0)}
    negative = compute_glue_metrics("stsb", [-r for r in refs], refs)
    assert negative == {"pearson": pytest.approx(-1.0), "spearmanr": pytest.approx(-1.0)}


def test_monotone_but_nonlinear_correlations() -> None:
    # y = x^2 on 1..4: ranks agree (Spearman 1). Pearson: deviations of x -1.5,-.5,.5,1.5
    # (sum of squares 5), of y (mean 7.5) -6.5,-3.5,1.5,8.5 (sum of squares 129), cross sum 25,
    # so r = 25 / sqrt(5 * 129) = 25 / sqrt(645).
    result = compute_glue_metrics("stsb", [1.0, 4.0, 9.0, 16.0], [1.0, 2.0, 3.0, 4.0])
    assert result["spearmanr"] == pytest.approx(1.0)
    assert result["pearson"] == pytest.approx(25 / math.sqrt(645))


def test_spearman_with_ties_uses_average_ranks() -> None:
    # Predictions 1,2,2,3 rank as 1, 2.5, 2.5, 4; references 1..4 rank as 1..4.
    # Rank deviations: x -1.5,-.5,.5,1.5 (SS 5); y -1.5,0,0,1.5 (SS 4.5); cross sum 4.5.
    # rho = 4.5 / sqrt(5 * 4.5) = sqrt(0.9).
    result = compute_glue_metrics("stsb", [1.0, 2.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0])
    assert result["spearmanr"] == pytest.approx(math.sqrt(0.9))


def test_constant_regression_prediction_gives_nan() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SciPy warns that the correlation is undefined
        result = compute_glue_metrics("stsb", [2.0, 2.0, 2.0], [1.0, 2.0, 3.0])
    assert math.isnan(result["pearson"]) and math.isnan(result["spearmanr"])


def test_unknown_task_lists_allowed_names() -> None:
    with pytest.raises(ValueError, match=r"unknown GLUE task 'squad'.*'cola'.*'wnli'"):
        compute_glue_metrics("squad", [1], [1])


def test_length_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match="differ in length: 3 != 2"):
        compute_glue_metrics("sst2", [1, 0, 1], [1, 0])


@pytest.mark.parametrize("task", ["sst2", "stsb"])
def test_empty_input_is_rejected(task: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        compute_glue_metrics(task, [], [])


def test_logits_instead_of_class_ids_are_rejected() -> None:
    with pytest.raises(ValueError, match="one-dimensional"):
        compute_glue_metrics("sst2", [[0.1, 0.9], [0.8, 0.2]], [1, 0])
    with pytest.raises(ValueError, match="integer class ids"):
        compute_glue_metrics("sst2", [0.9, 0.2], [1, 0])


def test_primary_metric_follows_the_top_paper_table() -> None:
    assert {task: primary_metric(task) for task in GLUE_METRICS} == {
        "cola": "matthews_correlation",
        "sst2": "accuracy",
        "mrpc": "f1",
        "stsb": "pearson",
        "qqp": "accuracy",
        "mnli": "accuracy",
        "qnli": "accuracy",
        "rte": "accuracy",
        "wnli": "accuracy",
    }
    assert all(primary_metric(task) in keys for task, keys in GLUE_METRICS.items())
    with pytest.raises(ValueError, match="unknown GLUE task"):
        primary_metric("squad_v2")


def test_glue_predictions_take_a_regression_heads_score_and_a_classifiers_argmax():
    assert glue_predictions(np.array([[0.5], [4.25]])).tolist() == [0.5, 4.25]
    assert glue_predictions(np.array([[0.1, 0.9], [2.0, -1.0], [0.0, 0.0]])).tolist() == [1, 0, 0]
    with pytest.raises(ValueError, match=r"logits must be \[N, C\], got shape \(3,\)"):
        glue_predictions(np.zeros(3))
