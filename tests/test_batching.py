"""Length-grouped training batches (the Hugging Face Trainer's recipe, seeded, resumable) and
length-sorted evaluation that gives the same outputs in dataset order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import BertForQuestionAnswering, BertForSequenceClassification
from transformers.trainer_pt_utils import get_length_grouped_indices

from tests.conftest import collate_pad0, tiny_config
from top.batching import INDEX_KEY, IndexedDataset, LengthGroupedSampler, example_lengths, length_grouped_indices, with_index
from top.encoder import PrunableModel
from top.evaluate import predict
from top.pruning.base import Stage
from top.pruning.dense import Dense
from top.pruning.topk import TopK
from top.train import TrainSettings, run_stages


def rows(n: int, seed: int = 0, low: int = 3, high: int = 40) -> list[dict]:
    """Examples of random lengths in [low, high); the label is token 1's parity."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(low, high, (1,), generator=g))
        ids = torch.randint(5, 60, (length,), generator=g)
        ids[0] = 2
        out.append({"input_ids": ids.tolist(), "attention_mask": [1] * length, "token_type_ids": [0] * length, "labels": int(ids[1]) % 2})
    return out


@pytest.mark.parametrize("n, batch_size", [(5000, 32), (1000, 8), (37, 8), (3, 4)])
def test_the_order_is_the_hugging_face_trainers(n, batch_size):
    lengths = torch.randint(1, 128, (n,), generator=torch.Generator().manual_seed(n)).tolist()
    ours = length_grouped_indices(lengths, batch_size, torch.Generator().manual_seed(7))
    theirs = get_length_grouped_indices(lengths, batch_size, generator=torch.Generator().manual_seed(7))
    assert ours == theirs


def _padding(order: list[int], lengths: list[int], batch_size: int) -> int:
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)


def test_grouped_batches_hold_similar_lengths_longest_first_and_every_example_once():
    lengths = torch.randint(3, 120, (4000,), generator=torch.Generator().manual_seed(0)).tolist()
    generator = torch.Generator().manual_seed(1)
    order = length_grouped_indices(lengths, 16, generator)
    assert sorted(order) == list(range(len(lengths)))
    assert lengths[order[0]] == max(lengths)  # the longest batch first
    shuffled = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(1)).tolist()
    assert _padding(order, lengths, 16) < 0.1 * _padding(shuffled, lengths, 16)
    # within a mega-batch (50 batches) the lengths never increase (the swapped first slot aside)
    mega = order[1 : 50 * 16]
    assert all(lengths[a] >= lengths[b] for a, b in zip(mega, mega[1:]))


def test_the_order_changes_every_epoch_and_is_seeded():
    lengths = torch.randint(3, 120, (2000,), generator=torch.Generator().manual_seed(0)).tolist()
    sampler = LengthGroupedSampler(lengths, 16, torch.Generator().manual_seed(3))
    first, second = list(sampler), list(sampler)
    assert first != second and sorted(first) == sorted(second) == list(range(2000))
    again = LengthGroupedSampler(lengths, 16, torch.Generator().manual_seed(3))
    assert [list(again), list(again)] == [first, second]


def test_indexed_batches_carry_their_rows():
    data = rows(10)
    items = IndexedDataset(data).__getitems__([7, 2, 5])
    batch = with_index(collate_pad0)(items)
    assert batch[INDEX_KEY].tolist() == [7, 2, 5]
    assert batch["attention_mask"].sum(1).tolist() == [len(data[i]["input_ids"]) for i in (7, 2, 5)]
    assert example_lengths(data) == [len(r["input_ids"]) for r in data]


class Recorder(Dense):
    """One ``finetune`` stage that records every batch's row indices and width."""

    def __init__(self, config, epochs):
        super().__init__(config)
        self.epochs = epochs
        self.seen: list[tuple[list[int], int]] = []

    def stages(self):
        return [Stage("finetune", self.epochs)]

    def extra_loss(self, stage, step):
        self.seen.append((step.batch[INDEX_KEY].tolist(), step.batch["attention_mask"].shape[1]))
        return None, {}


def _model(seed=0):
    torch.manual_seed(seed)
    return PrunableModel(BertForSequenceClassification(tiny_config()))


def test_training_batches_are_grouped_by_length_only_when_asked():
    data = rows(400)
    lengths = example_lengths(data)
    padding = {}
    for grouped in (True, False):
        model = _model()
        method = Recorder(model.config, 1)
        run_stages(model, method, data, TrainSettings(batch_size=8, learning_rate=1e-4, group_by_length=grouped), collate=collate_pad0)
        assert sorted(i for indices, _ in method.seen for i in indices) == list(range(400))
        padding[grouped] = sum(len(ix) * width - sum(lengths[i] for i in ix) for ix, width in method.seen)
        assert all(width == max(lengths[i] for i in ix) for ix, width in method.seen)
    assert padding[True] < 0.25 * padding[False]


def test_resume_repeats_the_grouped_order(tmp_path):
    data, settings = rows(64), TrainSettings(batch_size=8, learning_rate=1e-4, seed=4, group_by_length=True)
    straight_model = _model()
    straight = Recorder(straight_model.config, 3)
    run_stages(straight_model, straight, data, settings, collate=collate_pad0)
    epochs = [straight.seen[i : i + 8] for i in (0, 8, 16)]
    assert epochs[0] != epochs[1] != epochs[2]  # a new order every epoch

    class Stop(Exception):
        pass

    model = _model()
    interrupted = Recorder(model.config, 3)
    original = interrupted.extra_loss

    def stop_in_epoch_three(stage, step):
        if step.step == 16:
            raise Stop
        return original(stage, step)

    interrupted.extra_loss = stop_in_epoch_three
    with pytest.raises(Stop):
        run_stages(model, interrupted, data, settings, collate=collate_pad0, checkpoint_dir=tmp_path)
    resumed_model = _model(seed=1)
    resumed = Recorder(resumed_model.config, 3)
    run_stages(resumed_model, resumed, data, settings, collate=collate_pad0, checkpoint_dir=tmp_path)
    assert interrupted.seen == straight.seen[:16]
    assert resumed.seen == epochs[2]
    for a, b in zip(straight_model.state_dict().values(), resumed_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ----------------------------------------------------------------------------- evaluation


def _widths(monkeypatch_target: list[int], collate):
    def recording(features):
        batch = collate(features)
        monkeypatch_target.append(batch["input_ids"].shape[1])
        return batch

    return recording


def test_sorted_evaluation_gives_the_unsorted_outputs_in_dataset_order():
    torch.manual_seed(0)
    model = PrunableModel(BertForSequenceClassification(tiny_config()).eval())
    method = TopK(model.config, {"keep_ratios": [1.0, 0.6, 0.4]})
    runner = PrunableModel(model.hf, TopK.inference_selectors(method.export(), model.config)).eval()
    data = rows(37, seed=3)
    widths = {True: [], False: []}
    out = {s: predict(runner, data, _widths(widths[s], collate_pad0), batch_size=4, sort_by_length=s) for s in (True, False)}
    assert widths[True] == sorted(widths[True], reverse=True) and widths[False] != sorted(widths[False], reverse=True)
    assert sum(widths[True]) < sum(widths[False])  # less padding
    np.testing.assert_allclose(out[True].logits, out[False].logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out[True].labels, out[False].labels)
    np.testing.assert_array_equal(out[True].labels, [r["labels"] for r in data])
    np.testing.assert_array_equal(out[True].lengths_in, out[False].lengths_in)
    np.testing.assert_array_equal(out[True].lengths_kept, out[False].lengths_kept)
    np.testing.assert_array_equal(out[True].lengths_in[:, 0], example_lengths(data))
    assert (out[True].lengths_kept[:, -1] < out[True].lengths_in[:, 0]).any()  # it prunes


def test_sorted_span_logits_are_minus_inf_past_each_example_and_equal_unsorted():
    torch.manual_seed(0)
    config = tiny_config()
    model = PrunableModel(BertForQuestionAnswering(config).eval())
    data = [{k: v for k, v in r.items() if k != "labels"} for r in rows(13, seed=5)]
    out = {s: predict(model, data, collate_pad0, batch_size=4, sort_by_length=s) for s in (True, False)}
    lengths = np.array(example_lengths(data))
    for preds in out.values():
        assert preds.logits.shape == (13, lengths.max(), 2) and preds.labels is None
        past = np.arange(lengths.max())[None, :] >= lengths[:, None]
        assert np.isneginf(preds.logits[past]).all() and np.isfinite(preds.logits[~past]).all()
    np.testing.assert_allclose(out[True].logits, out[False].logits, rtol=1e-5, atol=1e-5)
