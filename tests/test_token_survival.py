"""Token survival by role (top/analysis/token_survival.py): every token's role, the shares dropped
per layer, and a gather-mode trace that keeps what the evaluation keeps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import BertForQuestionAnswering, BertForSequenceClassification, BertTokenizerFast

from tests.conftest import WORDS, collate_pad0, tiny_config, write_tiny_model, write_tiny_sst2, write_tiny_sst2_config
from top.analysis.token_survival import ROLES, bins_in_rank_order, dropped_by_role, token_roles, trace_kept
from top.encoder import PrunableModel
from top.evaluate import predict
from top.pipeline import evaluate_run, finetune_teacher, train_method
from top.pruning.topk import TopK

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return BertTokenizerFast.from_pretrained(write_tiny_model(tmp_path_factory.mktemp("model")))


def pairs(tokenizer, n: int, seed: int = 0) -> Dataset:
    """``n`` encoded sentence pairs of random lengths, some with punctuation, labelled 0/1."""
    rng = np.random.default_rng(seed)

    def sentence() -> str:
        words = [WORDS[i] for i in rng.integers(0, len(WORDS), rng.integers(2, 9))]
        return " ".join(words) + (" ." if rng.random() < 0.5 else "")

    encoded = [dict(tokenizer(sentence(), sentence()), labels=int(i % 2)) for i in range(n)]
    return Dataset.from_list(encoded)


def test_every_token_but_cls_has_exactly_one_role(tokenizer):
    data = Dataset.from_list([dict(tokenizer("the movie , good .", "a dull plot"))])
    roles = token_roles(data, tokenizer)
    # [CLS] the movie , good . [SEP] a dull plot [SEP]
    expected = {
        "[SEP]": [0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1],
        "punctuation": [0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0],
        "words A": [0, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0],
        "words B": [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0],
    }
    assert list(roles) == list(ROLES)
    for role, mask in expected.items():
        np.testing.assert_array_equal(roles[role][0], np.asarray(mask, dtype=bool), err_msg=role)
    # a single sentence: every word is of segment A
    single = token_roles(Dataset.from_list([dict(tokenizer("not very fun"))]), tokenizer)
    assert single["words A"][0].sum() == 3 and single["words B"][0].sum() == 0 and single["[SEP]"][0].sum() == 1


def test_a_token_dropped_at_an_earlier_layer_counts_as_dropped_after_every_later_one():
    # two examples, two layers; rows: real tokens, alive after layer 0, alive after layer 1
    alive = [
        np.array([[1, 1, 1, 1], [1, 0, 1, 1], [1, 0, 1, 0]], dtype=bool),
        np.array([[1, 1, 1], [1, 1, 1], [1, 0, 0]], dtype=bool),
    ]
    roles = {
        "[SEP]": [np.array([0, 0, 0, 1], dtype=bool), np.array([0, 0, 1], dtype=bool)],
        "words A": [np.array([0, 1, 1, 0], dtype=bool), np.array([0, 1, 0], dtype=bool)],
        "words B": [np.zeros(4, dtype=bool), np.zeros(3, dtype=bool)],
    }
    first, second = dropped_by_role(alive, roles)
    assert (first["layer"], first["tokens_in"], first["tokens_kept"]) == (0, 3.5, 3.0)
    assert (second["layer"], second["tokens_in"], second["tokens_kept"]) == (1, 3.0, 1.5)
    assert first["roles"]["[SEP]"] == {"tokens": 2, "dropped": 0.0} and second["roles"]["[SEP]"] == {"tokens": 2, "dropped": 1.0}
    assert first["roles"]["words A"] == {"tokens": 3, "dropped": 1 / 3} and second["roles"]["words A"] == {"tokens": 3, "dropped": 2 / 3}
    assert second["roles"]["words B"] == {"tokens": 0, "dropped": None}
    assert dropped_by_role([], roles) == []


def test_bins_in_rank_order_counts_a_top_runs_kept_bins_among_its_best_ranked():
    from tests.test_top import set_gates
    from top.pruning.top import ToP

    method = ToP(tiny_config(layers=4), {"bin_num": 6, "prune_layers": [0, 1, 2], "log_alpha_range": None})
    for layer, bins in ((0, [0, 1, 1, 0, 1, 0]), (1, [1, 1, 1, 1, 1, 1]), (2, [1, 1, 0, 0, 0, 0])):
        set_gates(method, layer, bins)  # every layer prunes
    record = json.loads(json.dumps({"method": "top", "decisions": method.export()}))
    # layer 0 keeps bins 1, 2, 4: two of them among its best three; layer 1 keeps every bin
    assert bins_in_rank_order(record) == [{"layer": 0, "bins": 6, "kept": 3, "best": 2}, {"layer": 2, "bins": 6, "kept": 2, "best": 2}]
    with pytest.raises(ValueError, match="rank bins are ToP's; this run's method is 'topk'"):
        bins_in_rank_order({"method": "topk", "decisions": {"keep_ratios": [0.5]}})


def test_the_trace_keeps_what_the_evaluation_keeps_and_gives_its_logits(tokenizer):
    torch.manual_seed(0)
    hf = BertForSequenceClassification(tiny_config(vocab_size=tokenizer.vocab_size)).eval()
    method = TopK(hf.config, {"keep_ratios": [0.7, 0.4, 0.4]})
    model = PrunableModel(hf, TopK.inference_selectors(method.export(), hf.config)).eval()
    data = pairs(tokenizer, 23)
    alive, logits = trace_kept(model, data, collate_pad0, batch_size=4)
    evaluated = predict(model, data, collate_pad0, batch_size=4)
    np.testing.assert_allclose(logits, evaluated.logits, rtol=1e-6, atol=1e-6)
    assert [mask.shape for mask in alive] == [(hf.config.num_hidden_layers + 1, len(ids)) for ids in data["input_ids"]]
    for mask, lengths_kept in zip(alive, evaluated.lengths_kept):
        assert mask[0].all() and mask[:, 0].all()  # row 0: the real tokens; [CLS] always kept
        assert not (mask[1:] & ~mask[:-1]).any()  # a token once dropped stays dropped
        np.testing.assert_array_equal(mask[1:].sum(axis=1), lengths_kept)
    assert any(mask[-1].sum() < mask[0].sum() for mask in alive)  # it prunes
    with pytest.raises(ValueError, match="span-extraction"):
        trace_kept(PrunableModel(BertForQuestionAnswering(tiny_config()).eval()), data, collate_pad0)


def test_the_script_traces_every_run_of_the_seed_and_refuses_one_that_scores_otherwise(tmp_path):
    glue = write_tiny_sst2(tmp_path / "glue", train_rows=24, dev_rows=12)
    cfg = write_tiny_sst2_config(tmp_path, glue, {"topk": {"settings": {"half": {"keep_ratios": [0.5, 0.5], "finetune_epochs": 1}}}})
    finetune_teacher(cfg, "sst2", 7, tmp_path / "teacher")
    results = tmp_path / "results/sst2"
    train_method(cfg, "sst2", "topk", "half", 7, tmp_path / "teacher", results / "models/sst2/topk/half/seed7")
    metrics = results / "eval/sst2/topk/half/seed7/metrics.json"
    evaluate_run(cfg, "sst2", results / "models/sst2/topk/half/seed7", metrics, tmp_path / "l.npz", {})
    command = [sys.executable, str(ROOT / "benchmarks/token_survival.py"), "--config", str(tmp_path / "config.yaml"), "--glue-dir", str(glue)]
    command += ["--task", "sst2", "--seed", "7", "--results-root", str(tmp_path / "results")]

    def script(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([*command, *extra], cwd=ROOT, capture_output=True, text=True, timeout=300)

    done = script("--out", str(tmp_path / "survival.json"))
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "survival.json").read_text())
    (run,) = record["runs"].values()
    assert list(record["runs"]) == ["topk/half"] and record["dev_examples"] == 12
    assert run["score"] == json.loads(metrics.read_text())["score"]
    first, last = run["layers"]
    assert first["tokens_kept"] < first["tokens_in"] and last["tokens_in"] == first["tokens_kept"]
    assert first["roles"]["[SEP]"]["tokens"] == 12 and first["roles"]["words B"]["tokens"] == 0  # one sentence each
    assert "## topk/half (score" in (tmp_path / "survival.md").read_text()
    # a run whose pass no longer scores what was recorded is refused, and nothing is written
    saved = metrics.read_text()
    metrics.write_text(json.dumps({**json.loads(saved), "score": 0.123}))
    failed = script("--out", str(tmp_path / "other.json"))
    metrics.write_text(saved)
    assert failed.returncode != 0 and "topk/half/seed7: this pass scores" in failed.stderr and "0.123" in failed.stderr
    assert not (tmp_path / "other.json").exists()
    missing = script("--runs", "ltp/lam1")
    assert missing.returncode == 2 and "models/sst2/ltp/lam1/seed7" in missing.stderr
