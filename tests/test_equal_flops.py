"""Comparison at equal FLOPs (top/report/equal_flops.py): scores read off each method's own curve
by interpolation in log(FLOPs reduction), never extrapolated; seeds aggregated; the verdict rule."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from top.report.equal_flops import Readout, readouts, score_at, verdict, verdicts


def test_interpolates_linearly_in_log_flops_reduction():
    # halfway between 1.5x and 6x in log space is 3x
    reading = score_at([(6.0, 70.0), (1.5, 90.0)], 3.0)
    assert reading.score == pytest.approx(80.0) and reading.bracket == (1.5, 6.0) and reading.reason is None
    assert reading.share == pytest.approx(0.5)  # the upper point's weight
    # a quarter of the way from 2x to 32x (log2: 1 -> 5) is 4x (log2: 2)
    assert score_at([(2.0, 88.0), (32.0, 80.0)], 4.0).score == pytest.approx(86.0)
    assert score_at([(2.0, 88.0), (32.0, 80.0)], 4.0).share == pytest.approx(0.25)


def test_uses_the_nearest_bracketing_points_and_a_point_at_the_target():
    points = [(1.2, 95.0), (1.8, 91.0), (2.5, 85.0), (5.0, 60.0)]
    low, high = 1.8, 2.5
    expected = 91.0 + (math.log(2.0) - math.log(low)) / (math.log(high) - math.log(low)) * (85.0 - 91.0)
    assert score_at(points, 2.0).score == pytest.approx(expected)
    assert score_at(points, 2.0).bracket == (1.8, 2.5)
    exact = score_at([*points, (4.0, 70.0)], 4.0)
    assert exact.score == 70.0 and exact.bracket == (4.0, 4.0) and exact.share == 1.0


def test_never_extrapolates_and_says_why():
    points = [(1.5, 90.0), (2.4, 88.0), (3.6, 80.0)]
    above = score_at(points, 4.0)
    assert above.score is None and above.reason == "cannot reach 4x: max 3.6x"
    below = score_at([(2.3, 88.0), (5.0, 80.0)], 2.0)
    assert below.score is None and below.reason == "does not go down to 2x: min 2.3x"
    assert score_at([], 2.0).reason == "no point with a score"
    # A bound just off the target prints with the digits that tell them apart.
    assert score_at([(2.0004, 87.0), (4.0, 82.0)], 2.0).reason == "does not go down to 2x: min 2.0004x"
    assert score_at([(1.5, 90.0), (3.996, 82.0)], 4.0).reason == "cannot reach 4x: max 3.996x"


def test_undefined_scores_are_left_out_and_equal_reductions_averaged():
    points = [(1.5, 90.0), (3.0, float("nan")), (3.0, 82.0), (3.0, 84.0), (6.0, 70.0)]
    assert score_at(points, 3.0).score == pytest.approx(83.0)
    assert score_at([(1.5, 90.0), (6.0, float("nan"))], 4.0).reason == "cannot reach 4x: max 1.5x"
    with pytest.raises(ValueError, match="positive"):
        score_at(points, 0.0)


def runs_frame(curves: dict[tuple[str, int], list[tuple[float, float]]], task: str = "mrpc") -> pd.DataFrame:
    rows = [{"task": task, "method": "dense", "setting": "default", "seed": seed, "score": 90.0, "flops_reduction": 1.0} for _, seed in curves]
    for (method, seed), points in curves.items():
        for i, (reduction, score) in enumerate(points):
            rows.append({"task": task, "method": method, "setting": f"s{i}", "seed": seed, "score": score, "flops_reduction": reduction})
    return pd.DataFrame(rows)


def test_readouts_aggregate_the_seeds():
    frame = runs_frame(
        {
            ("top", 1): [(1.0, 90.0), (4.0, 80.0)],  # 2x: halfway in log space -> 85
            ("top", 2): [(1.0, 92.0), (4.0, 82.0)],  # -> 87
            ("top", 3): [(2.0, 86.0), (4.0, 81.0)],  # -> 86
        }
    )
    (at2, at4) = readouts(frame, targets=(2.0, 4.0))
    assert (at2.task, at2.method, at2.seeds) == ("mrpc", "top", (1, 2, 3))
    assert at2.scores == pytest.approx((85.0, 87.0, 86.0))
    assert (at2.mean, at2.std, at2.low, at2.high) == pytest.approx((86.0, 1.0, 85.0, 87.0))
    assert at2.text() == "86.0 ± 1.0 [85.0–87.0] (3 seeds)"
    assert at4.mean == pytest.approx(81.0)


def test_a_seed_that_cannot_reach_the_target_leaves_the_method_without_a_value():
    frame = runs_frame({("ltp", 1): [(1.5, 90.0), (4.5, 80.0)], ("ltp", 2): [(1.5, 90.0), (3.6, 82.0)]})
    (at4,) = readouts(frame, targets=(4.0,))
    assert not at4.available and at4.reason == "seed 2: cannot reach 4x: max 3.6x"
    assert at4.text() == "– (seed 2: cannot reach 4x: max 3.6x)"
    frame = runs_frame({("ltp", seed): [(1.5, 90.0), (3.1, 82.0)] for seed in (1, 2)} | {("ltp", 3): [(2.5, 85.0), (3.0, 84.0)]})
    (at2,) = readouts(frame, targets=(2.0,))
    assert at2.reason == "seed 3: does not go down to 2x: min 2.5x"
    (at4,) = readouts(frame, targets=(4.0,))
    assert at4.reason == "seeds 1, 2: cannot reach 4x: max 3.1x; seed 3: cannot reach 4x: max 3x"


def test_readouts_need_the_run_columns():
    with pytest.raises(ValueError, match=r"needs columns \['flops_reduction'\]"):
        readouts(pd.DataFrame({"task": [], "method": [], "setting": [], "seed": [], "score": []}))


def readout(method: str, scores, target: float = 2.0, task: str = "mrpc") -> Readout:
    mean = sum(scores) / len(scores)
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / (len(scores) - 1)) if len(scores) > 1 else None
    return Readout(task, method, target, tuple(range(len(scores))), tuple(scores), mean, std, min(scores), max(scores))


@pytest.mark.parametrize(
    "top, best, expected",
    [
        ((85.0, 86.0, 87.0), (82.0, 83.0, 84.0), "ahead"),  # 86 - 1 > 83 + 1
        ((84.0, 85.0, 86.0), (82.0, 83.0, 84.0), "within spread"),  # 85 - 1 = 84 = 83 + 1: not beyond
        ((80.0, 81.0, 82.0), (82.0, 83.0, 84.0), "within spread"),  # 81 + 1 = 82 = 83 - 1
        ((79.0, 80.0, 81.0), (82.0, 83.0, 84.0), "behind"),
        ((86.0,), (82.0, 83.0, 84.0), "undetermined (one seed)"),
    ],
)
def test_verdict_rule(top, best, expected):
    found = [readout("top", top), readout("topk", best), readout("ltp", [s - 5 for s in best])]
    result = verdict("mrpc", 2.0, found)
    assert result.verdict == expected
    assert result.best.method == "topk"  # the baseline with the highest mean


def test_a_verdict_waits_for_every_seed_the_configuration_asks_for():
    found = [readout("top", (86.0, 86.1)), readout("topk", (85.8, 85.9))]
    assert verdict("mrpc", 2.0, found).verdict == "ahead"
    assert verdict("mrpc", 2.0, found, seeds=3).verdict == "undetermined: 2 of 3 seeds (so far ahead)"
    assert verdict("mrpc", 2.0, found, seeds=2).verdict == "ahead"
    found = [readout("top", (84.0, 85.0, 86.0)), readout("topk", (85.8, 85.9))]
    assert verdict("mrpc", 2.0, found, seeds=3).verdict == "undetermined: 2 of 3 seeds (so far within spread)"
    assert verdict("mrpc", 2.0, [readout("top", (86.0,)), *found[1:]], seeds=3).verdict == "undetermined (one seed)"


def test_verdict_says_when_a_side_has_no_value():
    missing = Readout("mrpc", "top", 4.0, (1,), (), None, None, None, None, "seed 1: cannot reach 4x: max 3.9x")
    result = verdict("mrpc", 4.0, [missing, readout("topk", (80.0, 81.0), 4.0)])
    assert (result.verdict, result.detail) == ("ToP has no value", "seed 1: cannot reach 4x: max 3.9x")
    unreached = Readout("mrpc", "ltp", 4.0, (1,), (), None, None, None, None, "seed 1: cannot reach 4x: max 2.1x")
    result = verdict("mrpc", 4.0, [readout("top", (80.0, 81.0), 4.0), unreached])
    assert result.verdict == "no baseline has a value" and "ltp: seed 1: cannot reach 4x: max 2.1x" in result.detail
    assert verdict("mrpc", 4.0, [readout("topk", (80.0, 81.0), 4.0)]).verdict == "no ToP runs"


def test_verdicts_cover_every_task_and_target():
    frame = pd.concat(
        [
            runs_frame({("top", 1): [(1.5, 90.0), (5.0, 80.0)], ("topk", 1): [(1.5, 89.0), (5.0, 70.0)]}, task="rte"),
            runs_frame({("top", 1): [(1.5, 90.0), (5.0, 80.0)], ("topk", 1): [(1.5, 89.0), (3.0, 70.0)]}, task="cola"),
        ]
    )
    results = verdicts(readouts(frame))
    assert [(v.task, v.target) for v in results] == [("rte", 2.0), ("rte", 4.0), ("cola", 2.0), ("cola", 4.0)]
    assert results[-1].verdict == "no baseline has a value"
    assert results[0].verdict == "undetermined (one seed)"
