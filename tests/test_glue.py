"""Tests of the GLUE task registry, loaders, tokenisation and batching in ``top.tasks.glue``."""

from __future__ import annotations

import os
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from transformers import BertTokenizerFast

from top.tasks.glue import (
    HUB_DATASET,
    SPECS,
    collate,
    encode,
    get_spec,
    load_split,
)
from top.tasks.glue_metrics import GLUE_METRICS
from top.tasks.sources import DataError

# The real GLUE files sit beside the project (../shared/data/glue from its root); GLUE_DIR
# points the tests at another copy of the same layout.
GLUE_DIR = Path(os.environ.get("GLUE_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"))
needs_glue = pytest.mark.skipif(not GLUE_DIR.is_dir(), reason=f"no GLUE data at {GLUE_DIR}")

# Row counts of the official splits (shared/data/README.md).
REAL_SPLITS = [
    ("cola", "train", 8551),
    ("cola", "validation", 1043),
    ("cola", "test", 1063),
    ("sst2", "train", 67349),
    ("sst2", "validation", 872),
    ("sst2", "test", 1821),
    ("mrpc", "train", 3668),
    ("mrpc", "validation", 408),
    ("mrpc", "test", 1725),
    ("stsb", "train", 5749),
    ("stsb", "validation", 1500),
    ("stsb", "test", 1379),
    ("qnli", "validation", 5463),
    ("qnli", "test", 5463),
    ("rte", "train", 2490),
    ("rte", "validation", 277),
    ("rte", "test", 3000),
    ("wnli", "train", 635),
    ("wnli", "validation", 71),
    ("wnli", "test", 146),
]

MNLI_PREFIX = [
    "index",
    "promptID",
    "pairID",
    "genre",
    "sentence1_binary_parse",
    "sentence2_binary_parse",
    "sentence1_parse",
    "sentence2_parse",
    "sentence1",
    "sentence2",
]


def write_tsv(path: Path, rows: list[list[str]], bom: bool = False) -> Path:
    """Write tab-separated ``rows`` to ``path`` (creating its folder), unquoted."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join("\t".join(row) + "\n" for row in rows)
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    return path


def mnli_row(i: int, premise: str, hypothesis: str, labels: list[str]) -> list[str]:
    """One row of an MNLI file: ids, genre, parses, the two sentences, then label columns."""
    parse = "( x )"
    return [str(i), "p", "q", "fiction", parse, parse, parse, parse, premise, hypothesis, *labels]


# --------------------------------------------------------------------------- registry


def test_registry_names_match_metric_registry_and_glue_dirs() -> None:
    assert set(SPECS) == set(GLUE_METRICS)
    assert {name: spec.glue_dir for name, spec in SPECS.items()} == {
        "cola": "CoLA",
        "sst2": "SST-2",
        "mrpc": "MRPC",
        "stsb": "STS-B",
        "qqp": "QQP",
        "mnli": "MNLI",
        "qnli": "QNLI",
        "rte": "RTE",
        "wnli": "WNLI",
    }
    assert all(spec.max_length == 128 for spec in SPECS.values())


def test_task_spec_label_properties() -> None:
    assert get_spec("stsb").is_regression and get_spec("stsb").num_labels == 1
    assert get_spec("stsb").label_names is None
    assert get_spec("mnli").num_labels == 3 and not get_spec("mnli").is_regression
    assert get_spec("mnli").label_names == ("entailment", "neutral", "contradiction")
    assert get_spec("qnli").label_names == ("entailment", "not_entailment")
    assert get_spec("cola").num_labels == 2
    assert get_spec("mnli").dev_splits == ("validation_matched", "validation_mismatched")
    assert get_spec("rte").dev_splits == ("validation",)
    assert get_spec("qqp").text_columns == ("question1", "question2")


def test_get_task_unknown_name_lists_allowed() -> None:
    with pytest.raises(ValueError, match="unknown GLUE task 'sst-2'.*'cola'.*'wnli'"):
        get_spec("sst-2")


def test_unknown_split_and_source_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no split 'dev'.*'validation'"):
        load_split("rte", "dev", data_dir=tmp_path)
    with pytest.raises(ValueError, match="no split 'validation'.*validation_matched"):
        load_split("mnli", "validation", data_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown source 'disk'"):
        load_split("rte", "train", source="disk", data_dir=tmp_path)


# --------------------------------------------------------------------------- real files


@needs_glue
@pytest.mark.parametrize(("task", "split", "rows"), REAL_SPLITS)
def test_real_split_loads_with_official_row_count(task: str, split: str, rows: int) -> None:
    spec = get_spec(task)
    dataset = load_split(task, split, data_dir=GLUE_DIR)
    assert len(dataset) == rows
    assert dataset.column_names == [*spec.text_columns, "label", "idx"]
    assert dataset["idx"] == list(range(rows))
    labels = np.asarray(dataset["label"])
    if split == "test":
        assert set(labels.tolist()) == {-1}
    elif spec.is_regression:
        assert dataset.features["label"] == datasets.Value("float32")
        assert labels.min() == 0.0 and labels.max() == 5.0
    else:
        assert set(labels.tolist()) == set(range(spec.num_labels))
    assert all(isinstance(text, str) and text for text in dataset[spec.text_columns[0]])


@needs_glue
def test_quote_characters_survive() -> None:
    mrpc = load_split("mrpc", "validation", data_dir=GLUE_DIR)
    # The first dev pair's second sentence opens with an unbalanced quote.
    assert mrpc[0]["sentence2"] == ('" The foodservice pie business does not fit our long-term growth strategy .')
    cola = load_split("cola", "train", data_dir=GLUE_DIR)
    assert cola[3056]["sentence"] == 'Susan whispered "Shut up".'


@needs_glue
def test_mrpc_byte_order_mark_does_not_pollute_first_field() -> None:
    train = load_split("mrpc", "train", data_dir=GLUE_DIR)
    first = train[0]
    # The label sits in the first column ("Quality"), right after the BOM.
    assert first["label"] == 1
    assert first["sentence1"].startswith("Amrozi accused his brother")
    assert not any("\ufeff" in text for text in [*train["sentence1"], *train["sentence2"]])


@needs_glue
def test_cola_headerless_file_keeps_first_row() -> None:
    dev = load_split("cola", "validation", data_dir=GLUE_DIR)
    assert dev[0] == {
        "sentence": "The sailors rode the breeze clear of the rocks.",
        "label": 1,
        "idx": 0,
    }
    unacceptable = [row["sentence"] for row in dev if row["label"] == 0]
    assert "As you eat the most, you want the least." in unacceptable
    assert dev.features["label"] == datasets.Value("int64")


@needs_glue
def test_stsb_scores_are_floats() -> None:
    dev = load_split("stsb", "validation", data_dir=GLUE_DIR, limit=3)
    assert dev.features["label"] == datasets.Value("float32")
    full = load_split("stsb", "train", data_dir=GLUE_DIR)
    assert full[1]["label"] == pytest.approx(3.8)


# --------------------------------------------------------------------------- synthetic files


def test_synthetic_mnli_matched_and_mismatched(tmp_path: Path) -> None:
    mnli = tmp_path / "MNLI"
    dev_header = [*MNLI_PREFIX, "label1", "label2", "label3", "label4", "label5", "gold_label"]
    votes = ["neutral"] * 5
    write_tsv(
        mnli / "train.tsv",
        [
            [*MNLI_PREFIX, "label1", "gold_label"],
            mnli_row(0, 'He said "hi.', "He spoke.", ["entailment", "entailment"]),
            mnli_row(1, "A cat.", "A dog.", ["contradiction", "contradiction"]),
        ],
    )
    write_tsv(
        mnli / "dev_matched.tsv",
        [
            dev_header,
            mnli_row(0, "P0", "H0", [*votes, "neutral"]),
            mnli_row(1, "P1", "H1", [*votes, "contradiction"]),
            mnli_row(2, "P2", "H2", [*votes, "entailment"]),
        ],
    )
    write_tsv(mnli / "dev_mismatched.tsv", [dev_header, mnli_row(0, "M0", "N0", [*votes, "entailment"])])
    write_tsv(mnli / "test_matched.tsv", [MNLI_PREFIX, mnli_row(0, "T0", "U0", [])])

    train = load_split("mnli", "train", data_dir=tmp_path)
    assert train.column_names == ["premise", "hypothesis", "label", "idx"]
    assert train["premise"] == ['He said "hi.', "A cat."]
    assert train["label"] == [0, 2]
    matched = load_split("mnli", "validation_matched", data_dir=tmp_path)
    assert matched["label"] == [1, 2, 0]
    assert matched["hypothesis"] == ["H0", "H1", "H2"]
    mismatched = load_split("mnli", "validation_mismatched", data_dir=tmp_path)
    assert mismatched[0] == {"premise": "M0", "hypothesis": "N0", "label": 0, "idx": 0}
    test = load_split("mnli", "test_matched", data_dir=tmp_path)
    assert test[0] == {"premise": "T0", "hypothesis": "U0", "label": -1, "idx": 0}


def test_synthetic_qqp(tmp_path: Path) -> None:
    write_tsv(
        tmp_path / "QQP" / "train.tsv",
        [
            ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
            ["0", "1", "2", 'What is "AI"?', "What is AI?", "1"],
            ["1", "3", "4", "How old?", "Where?", "0"],
        ],
    )
    write_tsv(
        tmp_path / "QQP" / "test.tsv",
        [["id", "question1", "question2"], ["0", "Why?", "Why not?"]],
    )
    train = load_split("qqp", "train", data_dir=tmp_path)
    assert train.column_names == ["question1", "question2", "label", "idx"]
    assert train[0] == {
        "question1": 'What is "AI"?',
        "question2": "What is AI?",
        "label": 1,
        "idx": 0,
    }
    assert train["label"] == [1, 0]
    test = load_split("qqp", "test", data_dir=tmp_path)
    assert test[0] == {"question1": "Why?", "question2": "Why not?", "label": -1, "idx": 0}


def test_synthetic_qnli_train(tmp_path: Path) -> None:
    write_tsv(
        tmp_path / "QNLI" / "train.tsv",
        [
            ["index", "question", "sentence", "label"],
            ["0", "Who?", "Ann did.", "entailment"],
            ["1", "When?", "It rained.", "not_entailment"],
        ],
    )
    train = load_split("qnli", "train", data_dir=tmp_path)
    assert train["question"] == ["Who?", "When?"]
    assert train["sentence"] == ["Ann did.", "It rained."]
    assert train["label"] == [0, 1]


# --------------------------------------------------------------------------- errors


def rte_file(tmp_path: Path, rows: list[list[str]]) -> Path:
    """Write an RTE dev file whose header is followed by ``rows``."""
    header = ["index", "sentence1", "sentence2", "label"]
    return write_tsv(tmp_path / "RTE" / "dev.tsv", [header, *rows])


def test_missing_data_dir_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"needs data_dir.*DATA_DIR/RTE/dev\.tsv"):
        load_split("rte", "validation")
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=rf"{missing} does not exist.*DATA_DIR/RTE/dev\.tsv"):
        load_split("rte", "validation", data_dir=missing)


def test_missing_split_file_names_path_and_layout(tmp_path: Path) -> None:
    expected = tmp_path / "MNLI" / "dev_mismatched.tsv"
    with pytest.raises(DataError) as info:
        load_split("mnli", "validation_mismatched", data_dir=tmp_path)
    assert str(expected) in str(info.value)
    assert "DATA_DIR/MNLI/dev_mismatched.tsv" in str(info.value)


def test_wrong_column_count_names_file_line_and_counts(tmp_path: Path) -> None:
    path = rte_file(tmp_path, [["0", "A.", "B.", "entailment"], ["1", "A.", "entailment"]])
    with pytest.raises(DataError) as info:
        load_split("rte", "validation", data_dir=tmp_path)
    message = str(info.value)
    assert str(path) in message
    assert "line 3" in message
    assert "expected 4" in message and "found 3" in message


def test_blank_line_is_not_skipped(tmp_path: Path) -> None:
    rte_file(tmp_path, [["0", "A.", "B.", "entailment"], [""], ["1", "A.", "B.", "entailment"]])
    with pytest.raises(DataError, match="line 3: expected 4 tab-separated columns, found 0"):
        load_split("rte", "validation", data_dir=tmp_path)


def test_headerless_cola_with_wrong_column_count(tmp_path: Path) -> None:
    path = write_tsv(tmp_path / "CoLA" / "train.tsv", [["gj04", "1", "", "Fine."], ["gj04", "1"]])
    with pytest.raises(DataError, match=rf"{path}, line 2: expected 4 .* found 2"):
        load_split("cola", "train", data_dir=tmp_path)


def test_unknown_label_names_file_line_value_and_allowed(tmp_path: Path) -> None:
    path = rte_file(tmp_path, [["0", "A.", "B.", "entailment"], ["1", "A.", "B.", "neutral"]])
    with pytest.raises(DataError) as info:
        load_split("rte", "validation", data_dir=tmp_path)
    message = str(info.value)
    assert str(path) in message and "line 3" in message and "'neutral'" in message
    assert "'entailment', 'not_entailment'" in message


def test_non_numeric_score_is_rejected(tmp_path: Path) -> None:
    header = ["index", "genre", "filename", "year", "old_index", "source1", "source2"]
    path = write_tsv(
        tmp_path / "STS-B" / "train.tsv",
        [
            [*header, "sentence1", "sentence2", "score"],
            ["0", "g", "f", "y", "0", "none", "none", "A.", "B.", "high"],
        ],
    )
    with pytest.raises(DataError, match=rf"{path}, line 2: label 'high' is not a finite number"):
        load_split("stsb", "train", data_dir=tmp_path)


@pytest.mark.parametrize("content", ["", "index\tsentence1\tsentence2\tlabel\n"])
def test_empty_file_is_a_data_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "RTE" / "dev.tsv"
    path.parent.mkdir()
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path} (is empty|has no data rows)"):
        load_split("rte", "validation", data_dir=tmp_path)


def test_header_without_expected_column(tmp_path: Path) -> None:
    path = write_tsv(
        tmp_path / "RTE" / "dev.tsv",
        [["index", "premise", "sentence2", "label"], ["0", "A.", "B.", "entailment"]],
    )
    with pytest.raises(DataError, match=rf"{path}: header has no column 'sentence1'"):
        load_split("rte", "validation", data_dir=tmp_path)


# --------------------------------------------------------------------------- limit


def test_limit_is_a_seeded_subset_in_file_order(tmp_path: Path) -> None:
    rte_file(tmp_path, [[str(i), f"A{i}.", f"B{i}.", "entailment"] for i in range(50)])
    first = load_split("rte", "validation", data_dir=tmp_path, limit=10, seed=3)
    again = load_split("rte", "validation", data_dir=tmp_path, limit=10, seed=3)
    other = load_split("rte", "validation", data_dir=tmp_path, limit=10, seed=4)
    assert len(first) == 10
    assert first["idx"] == again["idx"]
    assert first["idx"] != other["idx"]
    assert first["idx"] == sorted(first["idx"])
    assert first["idx"] != list(range(10))  # a sample, not the head of the file
    assert first["sentence1"] == [f"A{i}." for i in first["idx"]]


def test_limit_larger_than_split_keeps_every_row(tmp_path: Path) -> None:
    rte_file(tmp_path, [[str(i), "A.", "B.", "entailment"] for i in range(5)])
    assert load_split("rte", "validation", data_dir=tmp_path, limit=99)["idx"] == list(range(5))
    with pytest.raises(ValueError, match="limit must be a positive"):
        load_split("rte", "validation", data_dir=tmp_path, limit=0)


# --------------------------------------------------------------------------- hub


def test_hub_source_returns_the_local_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    hub_rows = datasets.Dataset.from_dict(
        {"sentence1": ["A.", "C."], "sentence2": ["B.", "D."], "label": [1, 0], "idx": [0, 1]},
        features=datasets.Features(
            {
                "sentence1": datasets.Value("string"),
                "sentence2": datasets.Value("string"),
                "label": datasets.ClassLabel(names=["entailment", "not_entailment"]),
                "idx": datasets.Value("int32"),
            }
        ),
    )

    def fake_load_dataset(path: str, name: str, split: str) -> datasets.Dataset:
        calls.append((path, name, split))
        return hub_rows

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    dataset = load_split("rte", "validation", source="hub")
    assert calls == [(HUB_DATASET, "rte", "validation")]
    assert dataset.features == get_spec("rte").features()
    assert dataset[0] == {"sentence1": "A.", "sentence2": "B.", "label": 1, "idx": 0}


# --------------------------------------------------------------------------- encode/collate

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "a", "dog", "ran", "."]


@pytest.fixture()
def tokenizer(tmp_path: Path) -> BertTokenizerFast:
    """A WordPiece tokenizer over a dozen words ([PAD]=0, [CLS]=2, [SEP]=3)."""
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return BertTokenizerFast(vocab=str(vocab))


def ids(*words: str) -> list[int]:
    """Vocabulary ids of ``words``."""
    return [VOCAB.index(word) for word in words]


def test_encode_pairs_and_collate_right_pads(tokenizer: BertTokenizerFast) -> None:
    spec = get_spec("rte")
    dataset = datasets.Dataset.from_dict(
        {
            "sentence1": ["the cat sat .", "a dog"],
            "sentence2": ["the dog ran .", "ran"],
            "label": [0, 1],
            "idx": [0, 1],
        },
        features=spec.features(),
    )
    encoded = encode(dataset, tokenizer, spec)
    cls, sep = ids("[CLS]"), ids("[SEP]")
    assert encoded[0]["input_ids"] == [*cls, *ids("the", "cat", "sat", "."), *sep, *ids("the", "dog", "ran", "."), *sep]
    assert encoded[0]["token_type_ids"] == [0] * 6 + [1] * 5
    assert encoded[1]["input_ids"] == [*cls, *ids("a", "dog"), *sep, *ids("ran"), *sep]
    assert encoded.features["labels"] == datasets.Value("int64")
    assert encoded["sentence1"] == dataset["sentence1"]  # original columns are kept

    batch = collate([encoded[0], encoded[1]], pad_token_id=tokenizer.pad_token_id)
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert batch["input_ids"].shape == (2, 11)
    assert batch["input_ids"].dtype == torch.long
    assert batch["input_ids"][1].tolist() == encoded[1]["input_ids"] + [0] * 5
    assert batch["attention_mask"].tolist() == [[1] * 11, [1] * 6 + [0] * 5]
    assert batch["token_type_ids"][1].tolist() == [0] * 4 + [1] * 2 + [0] * 5
    assert batch["attention_mask"].dtype == batch["token_type_ids"].dtype == torch.long
    assert batch["labels"].tolist() == [0, 1] and batch["labels"].dtype == torch.long


def test_protected_separators_mark_cls_and_every_sep_and_collate_pads_them(tokenizer: BertTokenizerFast) -> None:
    spec = get_spec("rte")
    dataset = datasets.Dataset.from_dict(
        {"sentence1": ["the cat sat .", "a dog"], "sentence2": ["the dog ran .", "ran"], "label": [0, 1], "idx": [0, 1]},
        features=spec.features(),
    )
    assert "protect_mask" not in encode(dataset, tokenizer, spec).column_names
    encoded = encode(dataset, tokenizer, spec, protect_separators=True)
    # [CLS] the cat sat . [SEP] the dog ran . [SEP] / [CLS] a dog [SEP] ran [SEP]
    assert encoded[0]["protect_mask"] == [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
    assert encoded[1]["protect_mask"] == [1, 0, 0, 1, 0, 1]
    batch = collate([encoded[0], encoded[1]], pad_token_id=tokenizer.pad_token_id)
    assert batch["protect_mask"].tolist() == [encoded[0]["protect_mask"], [1, 0, 0, 1, 0, 1] + [0] * 5]
    assert batch["protect_mask"].dtype == torch.long


def test_encode_truncates_to_max_length(tokenizer: BertTokenizerFast) -> None:
    spec = get_spec("sst2")
    dataset = datasets.Dataset.from_dict(
        {"sentence": ["the cat sat . the dog ran ."], "label": [1], "idx": [0]},
        features=spec.features(),
    )
    encoded = encode(dataset, tokenizer, spec, max_length=5)
    assert encoded[0]["input_ids"] == [*ids("[CLS]", "the", "cat", "sat"), *ids("[SEP]")]
    assert len(encode(dataset, tokenizer, spec)[0]["input_ids"]) == 10


def test_regression_labels_collate_to_float(tokenizer: BertTokenizerFast) -> None:
    spec = get_spec("stsb")
    dataset = datasets.Dataset.from_dict(
        {
            "sentence1": ["the cat", "a"],
            "sentence2": ["a dog", "dog"],
            "label": [3.5, 0.0],
            "idx": [0, 1],
        },
        features=spec.features(),
    )
    encoded = encode(dataset, tokenizer, spec)
    assert encoded.features["labels"] == datasets.Value("float32")
    batch = collate(list(encoded), pad_token_id=tokenizer.pad_token_id)
    assert batch["labels"].dtype == torch.float32
    assert batch["labels"].tolist() == [3.5, 0.0]
    assert batch["input_ids"].shape == (2, 7)


def test_collate_pads_with_the_given_pad_id() -> None:
    features = [
        {"input_ids": [2, 7, 3], "attention_mask": [1, 1, 1], "labels": 1},
        {"input_ids": [2, 3], "attention_mask": [1, 1], "labels": 0},
    ]
    batch = collate(features, pad_token_id=99)
    assert batch["input_ids"].tolist() == [[2, 7, 3], [2, 3, 99]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert "token_type_ids" not in batch


def test_collate_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="empty"):
        collate([], pad_token_id=0)
    with pytest.raises(ValueError, match="example 1: attention_mask has shape"):
        collate(
            [
                {"input_ids": [2, 3], "attention_mask": [1, 1]},
                {"input_ids": [2, 5, 3], "attention_mask": [1, 1]},
            ],
            pad_token_id=0,
        )
    with pytest.raises(ValueError, match="need 'input_ids'"):
        collate([{"attention_mask": [1]}], pad_token_id=0)
