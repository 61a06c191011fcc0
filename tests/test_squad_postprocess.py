"""Tests of ``top.tasks.squad_postprocess`` on hand-built features and logits."""

from __future__ import annotations

import numpy as np
import pytest

from top.tasks.squad_postprocess import (
    NO_CANDIDATE_SCORE_DIFF,
    QAPredictions,
    postprocess_qa_predictions,
)

CONTEXT = "The cat sat on the mat."
#          0123456789012345678901 2
NO = [-1, -1]
# [CLS] q q [SEP] The cat sat on the mat . [SEP]
#   0   1 2   3    4   5   6   7  8   9  10  11
OFFSETS = [NO, NO, NO, NO, [0, 3], [4, 7], [8, 11], [12, 14], [15, 18], [19, 22], [22, 23], NO]
WIDTH = 14  # two padding positions beyond the 12 tokens
LOW = -10.0


def logits(peaks: dict[int, float], width: int = WIDTH) -> np.ndarray:
    """A row of ``LOW`` logits with the given ``{position: value}`` peaks."""
    row = np.full(width, LOW)
    for position, value in peaks.items():
        row[position] = value
    return row


def run_one(start: dict[int, float], end: dict[int, float], **kwargs) -> QAPredictions:
    """Post-process one example with one feature (``OFFSETS``) and the given logit peaks."""
    return postprocess_qa_predictions(
        [{"id": "ex", "context": CONTEXT}],
        [{"example_id": "ex", "offset_mapping": OFFSETS}],
        logits(start)[None],
        logits(end)[None],
        **kwargs,
    )


def test_offsets_match_the_context() -> None:
    words = [CONTEXT[s:e] for s, e in OFFSETS if s >= 0]
    assert words == ["The", "cat", "sat", "on", "the", "mat", "."]


def test_best_pair_is_predicted() -> None:
    # start 5 ("cat") = 5, end 6 ("sat") = 4: score 9, text "cat sat"; CLS sum = -20.
    result = run_one({5: 5.0}, {6: 4.0})
    assert result.predictions == {"ex": "cat sat"}
    assert result.nbest["ex"][0] == {"text": "cat sat", "score": 9.0, "start": 4, "end": 11, "feature": 0, "start_token": 5, "end_token": 6}
    assert result.null_scores == {"ex": pytest.approx(-20.0 - 9.0)}


def test_end_before_start_is_rejected() -> None:
    # (8, 6) would score 20 but ends before it starts; (5, 6) = 6 + 10 = 16 beats (8, 9) = 15.
    result = run_one({8: 10.0, 5: 6.0}, {6: 10.0, 9: 5.0})
    assert result.predictions["ex"] == "cat sat"
    assert result.nbest["ex"][0]["score"] == 16.0
    assert [c["text"] for c in result.nbest["ex"][:2]] == ["cat sat", "the mat"]


def test_too_long_span_is_rejected() -> None:
    # (4, 10) = 20 spans 7 tokens; (6, 7) = 10 spans 2; (4, 7) and (6, 10) span 4 and 5.
    start, end = {4: 10.0, 6: 5.0}, {10: 10.0, 7: 5.0}
    long = run_one(start, end, max_answer_length=30)
    assert long.predictions["ex"] == CONTEXT
    assert long.nbest["ex"][0]["score"] == 20.0
    short = run_one(start, end, max_answer_length=3)
    assert short.predictions["ex"] == "sat on"
    assert short.nbest["ex"][0]["score"] == 10.0
    # Exactly max_answer_length tokens is allowed: (4, 7) spans 4 tokens.
    assert run_one(start, end, max_answer_length=4).predictions["ex"] == "The cat sat on"


def test_question_and_special_tokens_are_rejected() -> None:
    # Start on question token 1 with end "cat" would score 20; the [SEP] at 11 as an end
    # would score 5 + 12. The best valid pair is (5, 5) = 4 + 10 = 14: "cat".
    result = run_one({1: 10.0, 5: 4.0}, {5: 10.0, 11: 12.0})
    assert result.predictions["ex"] == "cat"
    assert result.nbest["ex"][0]["score"] == 14.0


def test_padding_positions_are_ignored() -> None:
    # Huge logits at padding position 13 (beyond the 12 tokens) must not be picked, even with
    # n_best_size=1 (they would otherwise take the only slot).
    result = run_one({5: 5.0, 13: 100.0}, {6: 4.0, 13: 100.0}, n_best_size=1)
    assert result.predictions["ex"] == "cat sat"


def test_top_n_counts_non_context_positions() -> None:
    # As in the BERT and run_qa.py references, the top-n is taken over all real positions:
    # with n_best_size=1 the top start is question token 1, so no candidate is valid.
    result = run_one({1: 10.0, 5: 4.0}, {5: 10.0}, n_best_size=1)
    assert result.predictions["ex"] == ""
    assert result.nbest["ex"] == []
    assert result.null_scores["ex"] == NO_CANDIDATE_SCORE_DIFF
    assert run_one({1: 10.0, 5: 4.0}, {5: 10.0}, n_best_size=2).predictions["ex"] == "cat"


def test_nbest_is_sorted_and_truncated() -> None:
    # Top-3 starts: 5 (5), 6 (3), then 0 (first of the LOW ties, [CLS]: invalid).
    # Top-3 ends: 6 (4), 7 (2), then 0. Valid pairs: (5,6)=9, (5,7)=7, (6,6)=7, (6,7)=5; the
    # tie at 7 keeps grid order (start-major). n_best_size=3 keeps the first three.
    result = run_one({5: 5.0, 6: 3.0}, {6: 4.0, 7: 2.0}, n_best_size=3)
    assert result.nbest["ex"] == [
        {"text": "cat sat", "score": 9.0, "start": 4, "end": 11, "feature": 0, "start_token": 5, "end_token": 6},
        {"text": "cat sat on", "score": 7.0, "start": 4, "end": 14, "feature": 0, "start_token": 5, "end_token": 7},
        {"text": "sat", "score": 7.0, "start": 8, "end": 11, "feature": 0, "start_token": 6, "end_token": 6},
    ]
    everything = run_one({5: 5.0, 6: 3.0}, {6: 4.0, 7: 2.0})
    scores = [c["score"] for c in everything.nbest["ex"]]
    assert len(scores) == 20
    assert scores == sorted(scores, reverse=True)


def two_window_inputs(score_a: float, score_b: float) -> tuple:
    """One example split into two windows; window A's best is "cat", window B's "the mat"."""
    examples = [{"id": "ex", "context": CONTEXT}]
    # A: [CLS] q [SEP] The cat sat [SEP];  B: [CLS] q [SEP] sat on the mat . [SEP]
    offsets_a = [NO, NO, NO, [0, 3], [4, 7], [8, 11], NO]
    offsets_b = [NO, NO, NO, [8, 11], [12, 14], [15, 18], [19, 22], [22, 23], NO]
    features = [
        {"example_id": "ex", "offset_mapping": offsets_a},
        {"example_id": "ex", "offset_mapping": offsets_b},
    ]
    width = 10
    # A: start = end = "cat" (token 4), each score_a / 2. B: start "the" (5), end "mat" (6).
    start = np.stack([logits({0: 1.0, 4: score_a / 2}, width), logits({0: 3.0, 5: score_b / 2}, width)])
    end = np.stack([logits({0: 1.0, 4: score_a / 2}, width), logits({0: 4.0, 6: score_b / 2}, width)])
    return examples, features, start, end


def test_the_better_window_wins() -> None:
    # CLS sums: A 1 + 1 = 2, B 3 + 4 = 7; the null score is the smaller, 2.
    result = postprocess_qa_predictions(*two_window_inputs(6.0, 9.0))
    assert result.predictions["ex"] == "the mat"
    assert result.nbest["ex"][0] == {"text": "the mat", "score": 9.0, "start": 15, "end": 22, "feature": 1, "start_token": 5, "end_token": 6}
    assert result.nbest["ex"][1] == {"text": "cat", "score": 6.0, "start": 4, "end": 7, "feature": 0, "start_token": 4, "end_token": 4}
    assert result.null_scores["ex"] == pytest.approx(2.0 - 9.0)
    swapped = postprocess_qa_predictions(*two_window_inputs(9.0, 6.0))
    assert swapped.predictions["ex"] == "cat"
    assert swapped.null_scores["ex"] == pytest.approx(2.0 - 9.0)


def test_several_examples_keep_their_order_and_features() -> None:
    examples = [{"id": "b", "context": CONTEXT}, {"id": "a", "context": CONTEXT}]
    features = [
        {"example_id": "a", "offset_mapping": OFFSETS},
        {"example_id": "b", "offset_mapping": OFFSETS},
    ]
    start = np.stack([logits({5: 5.0}), logits({8: 5.0})])
    end = np.stack([logits({5: 5.0}), logits({9: 5.0})])
    result = postprocess_qa_predictions(examples, features, start, end)
    assert list(result.predictions.items()) == [("b", "the mat"), ("a", "cat")]


@pytest.mark.parametrize(
    ("version_2", "threshold", "expected"),
    [
        # Best span (5, 6) = 9; CLS sum = 6 + 4 = 10; null - best = 1.
        (True, 0.0, ""),
        (True, 0.999, ""),
        (True, 1.0, "cat sat"),  # not above the threshold: keep the answer
        (True, 2.0, "cat sat"),
        (False, 0.0, "cat sat"),  # v1.1 never abstains
    ],
)
def test_v2_null_threshold(version_2: bool, threshold: float, expected: str) -> None:
    result = run_one({0: 6.0, 5: 5.0}, {0: 4.0, 6: 4.0}, version_2=version_2, null_threshold=threshold)
    assert result.predictions["ex"] == expected
    assert result.null_scores["ex"] == pytest.approx(1.0)
    assert result.nbest["ex"][0]["text"] == "cat sat"


def test_none_offsets_mark_non_context_tokens() -> None:
    offsets = [None if pair == NO else pair for pair in OFFSETS]
    result = postprocess_qa_predictions(
        [{"id": "ex", "context": CONTEXT}],
        [{"example_id": "ex", "offset_mapping": offsets}],
        logits({1: 20.0, 5: 5.0})[None],
        logits({6: 4.0})[None],
    )
    assert result.predictions["ex"] == "cat sat"


def brute_force(start: np.ndarray, end: np.ndarray, offsets: list, n_best: int, max_len: int):
    """Reference: all pairs of the top-n starts and ends, checked one by one."""
    length = len(offsets)
    top_s = sorted(range(length), key=lambda i: -start[i])[:n_best]
    top_e = sorted(range(length), key=lambda i: -end[i])[:n_best]
    best = None
    for s in top_s:
        for e in top_e:
            if offsets[s][0] < 0 or offsets[e][0] < 0 or e < s or e - s + 1 > max_len:
                continue
            score = start[s] + end[e]
            if best is None or score > best[0]:
                best = (score, offsets[s][0], offsets[e][1])
    return best


def test_matches_a_brute_force_search_on_random_inputs() -> None:
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(300)]
    context = " ".join(words)
    word_spans, position = [], 0
    for word in words:
        word_spans.append([position, position + len(word)])
        position += len(word) + 1
    examples, features = [], []
    for k in range(30):
        examples.append({"id": f"e{k}", "context": context})
        for _window in range(2):
            first = int(rng.integers(0, 200))
            n_context = int(rng.integers(20, 90))
            offsets = [NO] * 5 + word_spans[first : first + n_context] + [NO]
            features.append({"example_id": f"e{k}", "offset_mapping": offsets})
    width = 128
    start = rng.normal(size=(len(features), width))
    end = rng.normal(size=(len(features), width))
    result = postprocess_qa_predictions(examples, features, start, end, n_best_size=7, max_answer_length=12)
    for k in range(30):
        candidates = [brute_force(start[f], end[f], features[f]["offset_mapping"], 7, 12) for f in (2 * k, 2 * k + 1)]
        score, s, e = max(c for c in candidates if c is not None)
        assert result.nbest[f"e{k}"][0]["score"] == pytest.approx(score)
        assert result.predictions[f"e{k}"] == context[s:e]


# --- errors --------------------------------------------------------------------------------


def test_logit_shape_errors() -> None:
    examples = [{"id": "ex", "context": CONTEXT}]
    features = [{"example_id": "ex", "offset_mapping": OFFSETS}]
    row = logits({})[None]
    with pytest.raises(ValueError, match="differ in shape"):
        postprocess_qa_predictions(examples, features, row, row[:, :-1])
    with pytest.raises(ValueError, match="2 rows but there are 1 features"):
        two = np.vstack([row, row])
        postprocess_qa_predictions(examples, features, two, two)
    with pytest.raises(ValueError, match=r"\[num_features, seq_len\]"):
        postprocess_qa_predictions(examples, features, row[0], row[0])
    with pytest.raises(ValueError, match="feature 0 has 12 tokens; expected 1 to 10"):
        postprocess_qa_predictions(examples, features, row[:, :10], row[:, :10])


def test_unknown_example_id_is_an_error() -> None:
    with pytest.raises(ValueError, match="feature 1 belongs to example 'zz'"):
        postprocess_qa_predictions(
            [{"id": "ex", "context": CONTEXT}],
            [
                {"example_id": "ex", "offset_mapping": OFFSETS},
                {"example_id": "zz", "offset_mapping": OFFSETS},
            ],
            np.zeros((2, WIDTH)),
            np.zeros((2, WIDTH)),
        )


def test_example_without_features_is_an_error() -> None:
    with pytest.raises(ValueError, match="1 examples have no features: 'lonely'"):
        postprocess_qa_predictions(
            [{"id": "ex", "context": CONTEXT}, {"id": "lonely", "context": CONTEXT}],
            [{"example_id": "ex", "offset_mapping": OFFSETS}],
            np.zeros((1, WIDTH)),
            np.zeros((1, WIDTH)),
        )


def test_other_input_errors() -> None:
    feature = {"example_id": "ex", "offset_mapping": OFFSETS}
    one = ([feature], np.zeros((1, WIDTH)), np.zeros((1, WIDTH)))
    with pytest.raises(ValueError, match="duplicate example id 'ex'"):
        postprocess_qa_predictions([{"id": "ex", "context": CONTEXT}] * 2, *one)
    with pytest.raises(ValueError, match="reaches character 23"):
        postprocess_qa_predictions([{"id": "ex", "context": "short"}], *one)
    with pytest.raises(ValueError, match="n_best_size"):
        postprocess_qa_predictions([{"id": "ex", "context": CONTEXT}], *one, n_best_size=0)
    with pytest.raises(ValueError, match="max_answer_length"):
        postprocess_qa_predictions([{"id": "ex", "context": CONTEXT}], *one, max_answer_length=0)
    with pytest.raises(ValueError, match="pairs"):
        postprocess_qa_predictions(
            [{"id": "ex", "context": CONTEXT}],
            [{"example_id": "ex", "offset_mapping": [[0, 1, 2]]}],
            np.zeros((1, WIDTH)),
            np.zeros((1, WIDTH)),
        )
