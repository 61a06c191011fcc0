"""Tests of the SQuAD metrics in ``top.tasks.squad_metrics`` on hand-computed cases."""

from __future__ import annotations

import pytest

from top.tasks.squad_metrics import (
    compute_squad_metrics,
    exact_match_score,
    f1_score,
    normalize_answer,
    primary_qa_metric,
)


def ref(qid: str, *answers: str, **extra) -> dict:
    """A reference in the ``squad``/``squad_v2`` dataset format."""
    answers_field = {"text": list(answers), "answer_start": [0] * len(answers)}
    return {"id": qid, "answers": answers_field, **extra}


# --- normalisation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The  Cat!", "cat"),
        ("an apple a day", "apple day"),
        ("  Denver\tBroncos \n", "denver broncos"),
        # Punctuation inside words is deleted, not replaced by a space.
        ("don't", "dont"),
        ("U.S.A.", "usa"),
        ("co-op", "coop"),
        # Articles only as whole words ...
        ("theater anthem Annex", "theater anthem annex"),
        # ... and punctuation goes first, so "the-end" becomes the single word "theend".
        ("the-end", "theend"),
        ("A (the) an", ""),
        ("", ""),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


# --- per-question scores -------------------------------------------------------------------


def test_exact_match_after_normalisation() -> None:
    assert exact_match_score("The Cat", "cat!") == 1.0
    assert exact_match_score("cat", "cats") == 0.0
    assert exact_match_score("", "") == 1.0


def test_f1_partial_overlap() -> None:
    # Tokens: pred [cat, sat], gold [cat, sat, on, mat]: common 2, precision 2/2, recall 2/4,
    # F1 = 2 * 1 * 0.5 / 1.5 = 2/3 (66.67 on the 0-100 scale).
    assert f1_score("the cat sat", "cat sat on mat") == pytest.approx(2 / 3)


def test_f1_counts_tokens_as_a_multiset() -> None:
    # pred [cat, cat, dog], gold [cat, dog, dog, dog]: common = min(2,1) + min(1,3) = 2;
    # precision 2/3, recall 2/4; F1 = 2 * (2/3) * (1/2) / (2/3 + 1/2) = (2/3) / (7/6) = 4/7.
    assert f1_score("cat cat dog", "cat dog dog dog") == pytest.approx(4 / 7)


def test_f1_no_overlap_is_zero() -> None:
    assert f1_score("red", "blue") == 0.0


def test_f1_empty_answers() -> None:
    # v2.0 rule: both empty -> 1, one empty -> 0 ("the" and "a" normalise to nothing).
    assert f1_score("", "", version_2=True) == 1.0
    assert f1_score("the", "a", version_2=True) == 1.0
    assert f1_score("", "cat", version_2=True) == 0.0
    assert f1_score("cat", "", version_2=True) == 0.0
    # v1.1 has no such rule: two empty answers share no token.
    assert f1_score("", "") == 0.0


def test_primary_metric_is_f1() -> None:
    assert primary_qa_metric(False) == "f1"
    assert primary_qa_metric(True) == "f1"


# --- v1.1 aggregates -----------------------------------------------------------------------


def test_max_over_gold_answers() -> None:
    # pred [cat, sat]: vs "the cat" -> [cat]: P 1/2, R 1, F1 2/3; vs "cat sat down": P 1, R 2/3,
    # F1 0.8; vs "dog": 0. Max F1 = 0.8. EM: "Cat Sat." normalises to "cat sat" -> 1.
    result = compute_squad_metrics({"q": "cat sat"}, [ref("q", "the cat", "cat sat down", "dog")])
    assert result["f1"] == pytest.approx(80.0)
    assert result["exact_match"] == 0.0
    result = compute_squad_metrics({"q": "cat sat"}, [ref("q", "dog", "Cat Sat.")])
    assert result["exact_match"] == 100.0


def test_squad_v1_toy_set() -> None:
    predictions = {
        "q1": "Denver Broncos",  # gold 1: EM 1, F1 1
        "q2": "the cat sat",  # EM 0, F1 2/3 (see test_f1_partial_overlap)
        # [in, may, 1990] vs [may, 1990]: P 2/3, R 1, F1 0.8; vs [1990]: P 1/3, R 1, F1 0.5.
        "q3": "in May 1990",  # EM 0, F1 0.8
        "q4": "red",  # EM 0, F1 0
        "q5": "U.S.A.",  # "usa" == "usa": EM 1, F1 1
    }
    references = [
        ref("q1", "Denver Broncos", "The Denver Broncos"),
        ref("q2", "cat sat on mat"),
        ref("q3", "May 1990", "1990"),
        ref("q4", "blue"),
        ref("q5", "USA"),
    ]
    result = compute_squad_metrics(predictions, references)
    assert list(result) == ["exact_match", "f1", "total"]
    # EM = 2/5 = 40; F1 = (1 + 2/3 + 0.8 + 0 + 1) / 5 = (52/15) / 5 = 52/75 = 69.33.
    assert result["exact_match"] == pytest.approx(40.0)
    assert result["f1"] == pytest.approx(100 * 52 / 75)
    assert result["total"] == 5


# --- v2.0 aggregates -----------------------------------------------------------------------

V2_PREDICTIONS = {
    "a1": "Denver Broncos",  # answerable, right: EM 1, F1 1
    "a2": "cat sat",  # answerable, gold "cat sat on mat": EM 0, F1 2/3
    "a3": "",  # answerable, abstained: EM 0, F1 0
    "n1": "",  # unanswerable, abstained: EM 1, F1 1
    "n2": "London",  # unanswerable, answered: EM 0, F1 0
    "n3": "",  # unanswerable, abstained: EM 1, F1 1
}
V2_REFERENCES = [
    ref("a1", "Denver Broncos"),
    ref("a2", "cat sat on mat"),
    ref("a3", "Paris"),
    ref("n1", is_impossible=True),
    ref("n2"),
    ref("n3"),
]
V2_NULL_SCORES = {"a1": -3.0, "n1": -2.8, "a2": -2.5, "n2": -2.0, "a3": 2.0, "n3": 3.0}


def test_squad_v2_toy_set_without_null_scores() -> None:
    result = compute_squad_metrics(V2_PREDICTIONS, V2_REFERENCES, version_2=True)
    assert list(result) == [
        "exact", "f1", "total",
        "HasAns_exact", "HasAns_f1", "HasAns_total",
        "NoAns_exact", "NoAns_f1", "NoAns_total",
    ]  # fmt: skip
    # exact = (1+0+0+1+0+1)/6 = 50; f1 = (1 + 2/3 + 0 + 1 + 0 + 1)/6 = 11/18 = 61.11.
    assert result["exact"] == pytest.approx(50.0)
    assert result["f1"] == pytest.approx(100 * 11 / 18)
    assert result["total"] == 6
    # Answerable a1-a3: exact 1/3, f1 (1 + 2/3)/3 = 5/9. Unanswerable n1-n3: 2/3 for both.
    assert result["HasAns_exact"] == pytest.approx(100 / 3)
    assert result["HasAns_f1"] == pytest.approx(100 * 5 / 9)
    assert result["HasAns_total"] == 3
    assert result["NoAns_exact"] == pytest.approx(200 / 3)
    assert result["NoAns_f1"] == pytest.approx(200 / 3)
    assert result["NoAns_total"] == 3


def test_squad_v2_best_thresholds() -> None:
    result = compute_squad_metrics(V2_PREDICTIONS, V2_REFERENCES, version_2=True, null_scores=V2_NULL_SCORES)
    # The main figures are not re-thresholded.
    assert result["exact"] == pytest.approx(50.0)
    # Sweep in increasing null score, starting from "all abstain" = 3 (the unanswerable ones
    # score 1 each). Switching a question to its prediction adds its score if answerable,
    # -1 if unanswerable but answered (n2), 0 if unanswerable and abstaining (n1, n3):
    #            a1(-3)  n1(-2.8)  a2(-2.5)  n2(-2)  a3(2)  n3(3)
    # exact:  3 -> 4  -> 4      -> 4      -> 3    -> 3   -> 3      best 4 at -3
    # f1:     3 -> 4  -> 4      -> 4 2/3  -> 3 2/3 -> 3 2/3 -> 3 2/3  best 4 2/3 at -2.5
    assert result["best_exact"] == pytest.approx(100 * 4 / 6)
    assert result["best_exact_thresh"] == -3.0
    assert result["best_f1"] == pytest.approx(100 * (14 / 3) / 6)
    assert result["best_f1_thresh"] == -2.5
    assert list(result)[-4:] == ["best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh"]


def test_best_threshold_defaults_to_zero_when_abstaining_everywhere_is_best() -> None:
    # Start: 1 (n abstains correctly). a (null 4): its prediction "" scores 0 -> 1.
    # n (null 5): answered "x" -> 0. Nothing beats 1: best 1/2 at threshold 0.0.
    result = compute_squad_metrics(
        {"a": "", "n": "x"}, [ref("a", "y"), ref("n")], version_2=True,
        null_scores={"a": 4.0, "n": 5.0},
    )  # fmt: skip
    assert result["best_exact"] == pytest.approx(50.0)
    assert result["best_exact_thresh"] == 0.0
    assert result["best_f1"] == pytest.approx(50.0)
    assert result["best_f1_thresh"] == 0.0


@pytest.mark.parametrize(
    ("order", "best", "thresh"),
    # Tied null scores are swept one question at a time in reference order (as the official
    # script does). n first: 1 -> 0 -> 1, never above 1: 50 at 0.0. a first: 1 -> 2 -> 1: 100
    # at 1.0.
    [(("n", "a"), 50.0, 0.0), (("a", "n"), 100.0, 1.0)],
)
def test_best_threshold_ties_follow_reference_order(order, best, thresh) -> None:
    refs = {"a": ref("a", "y"), "n": ref("n")}
    result = compute_squad_metrics(
        {"a": "y", "n": "x"}, [refs[q] for q in order], version_2=True,
        null_scores={"a": 1.0, "n": 1.0},
    )  # fmt: skip
    assert result["best_exact"] == pytest.approx(best)
    assert result["best_exact_thresh"] == thresh


def test_v2_drops_gold_answers_that_normalise_to_nothing() -> None:
    # Golds ["the", "cat"] -> ["cat"]: the empty prediction scores 0.
    result = compute_squad_metrics({"q": ""}, [ref("q", "the", "cat")], version_2=True)
    assert result["exact"] == 0.0 and result["f1"] == 0.0
    # Golds ["a"] -> [] -> [""]: the empty prediction scores 1, but the question stays
    # answerable (it lists an answer), as in the official script.
    result = compute_squad_metrics({"q": ""}, [ref("q", "a")], version_2=True)
    assert result["exact"] == 100.0 and result["f1"] == 100.0
    assert result["HasAns_total"] == 1 and "NoAns_total" not in result


def test_v2_only_unanswerable() -> None:
    result = compute_squad_metrics({"n": ""}, [ref("n")], version_2=True)
    assert result == {
        "exact": 100.0, "f1": 100.0, "total": 1,
        "NoAns_exact": 100.0, "NoAns_f1": 100.0, "NoAns_total": 1,
    }  # fmt: skip


# --- errors --------------------------------------------------------------------------------


def test_missing_predictions_are_an_error() -> None:
    references = [ref(f"q{i}", "x") for i in range(8)]
    predictions = {"q0": "x"}
    with pytest.raises(ValueError, match=r"missing for 7 of 8 questions: 'q1', 'q2'.*2 more"):
        compute_squad_metrics(predictions, references)


def test_extra_predictions_are_an_error() -> None:
    with pytest.raises(ValueError, match=r"1 ids not in the references: 'zz'"):
        compute_squad_metrics({"q": "x", "zz": "y"}, [ref("q", "x")])


def test_null_scores_must_cover_the_references() -> None:
    with pytest.raises(ValueError, match=r"null scores missing for 1 of 2 questions: 'n'"):
        compute_squad_metrics(
            {"a": "y", "n": ""}, [ref("a", "y"), ref("n")], version_2=True,
            null_scores={"a": 0.0},
        )  # fmt: skip
    with pytest.raises(ValueError, match="finite"):
        compute_squad_metrics({"a": "y"}, [ref("a", "y")], version_2=True, null_scores={"a": float("nan")})


def test_null_scores_need_version_2() -> None:
    with pytest.raises(ValueError, match="version_2"):
        compute_squad_metrics({"a": "y"}, [ref("a", "y")], null_scores={"a": 0.0})


def test_v1_needs_a_gold_answer() -> None:
    with pytest.raises(ValueError, match=r"'q' has no gold answer"):
        compute_squad_metrics({"q": ""}, [ref("q")])


def test_malformed_references() -> None:
    with pytest.raises(ValueError, match="duplicate question id 'q'"):
        compute_squad_metrics({"q": "x"}, [ref("q", "x"), ref("q", "y")])
    with pytest.raises(ValueError, match="is_impossible"):
        compute_squad_metrics({"q": "x"}, [ref("q", "x", is_impossible=True)], version_2=True)
    with pytest.raises(ValueError, match="'answers'"):
        compute_squad_metrics({"q": "x"}, [{"id": "q", "answers": ["x"]}])
    with pytest.raises(ValueError, match="without references"):
        compute_squad_metrics({}, [])
    with pytest.raises(ValueError, match="must be strings"):
        compute_squad_metrics({"q": None}, [ref("q", "x")])
