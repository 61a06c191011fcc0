"""The training loop: it learns, it resumes from a checkpoint, it stops on a non-finite loss."""

from __future__ import annotations

import math

import datasets
import pytest
import torch
from transformers import BertForSequenceClassification

from tests.conftest import tiny_config
from top.encoder import PrunableModel
from top.pruning.dense import Finetune
from top.pruning.topk import TopK
from top.tasks.glue import collate
from top.train import NonFiniteLossError, TrainSettings, run_stages


def toy_data(n: int = 64, seed: int = 0) -> datasets.Dataset:
    """Label 1 iff token 7 occurs; random lengths."""
    g = torch.Generator().manual_seed(seed)
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for i in range(n):
        length = int(torch.randint(4, 12, (1,), generator=g))
        ids = torch.randint(10, 60, (length,), generator=g)
        ids[0] = 2
        label = i % 2
        if label:
            ids[int(torch.randint(1, length, (1,), generator=g))] = 7
        rows["input_ids"].append(ids.tolist())
        rows["attention_mask"].append([1] * length)
        rows["labels"].append(label)
    return datasets.Dataset.from_dict(rows)


def make_model(seed: int = 0) -> PrunableModel:
    torch.manual_seed(seed)
    return PrunableModel(BertForSequenceClassification(tiny_config()))


def collate0(features):
    return collate(features, pad_token_id=0)


def accuracy(model, data) -> float:
    batch = collate0(list(data))
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["attention_mask"], mode="gather").logits
    return float((logits.argmax(1) == batch["labels"]).float().mean())


def test_training_learns_a_toy_task():
    model, data = make_model(), toy_data()
    settings = TrainSettings(batch_size=8, learning_rate=2e-3, seed=0, log_every=1)
    history = run_stages(model, Finetune(model.config, 6), data, settings, collate=collate0)
    assert accuracy(model, data) >= 0.9
    assert history[-1]["loss"] < history[0]["loss"]


def test_topk_finetune_stage_trains_with_selectors_installed():
    model, data = make_model(), toy_data()
    method = TopK(model.config, {"keep_ratios": [1.0, 0.7, 0.5], "finetune_epochs": 1})
    run_stages(model, method, data, TrainSettings(batch_size=16, learning_rate=1e-3), collate=collate0)
    assert set(model.selectors) == {"1", "2"}


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path):
    data = toy_data(32)
    settings = TrainSettings(batch_size=8, learning_rate=1e-3, seed=5)
    straight = make_model()
    run_stages(straight, Finetune(straight.config, 3), data, settings, collate=collate0)

    checkpoint_dir = _interrupt_after_two_epochs(data, settings, tmp_path)
    resumed = make_model(seed=123)  # another init: everything must come from the checkpoint
    run_stages(resumed, Finetune(resumed.config, 3), data, settings, collate=collate0, checkpoint_dir=checkpoint_dir)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _interrupt_after_two_epochs(data, settings, folder, selection=None):
    """Start a 3-epoch run and kill it (an exception) in its third epoch."""

    class Stop(Exception):
        pass

    model = make_model()
    calls = {"n": 0}
    steps_per_epoch = -(-len(data) // settings.batch_size)
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2 * steps_per_epoch:
            raise Stop
        return original(self, *args, **kwargs)

    torch.optim.AdamW.step = step
    try:
        with pytest.raises(Stop):
            run_stages(model, Finetune(model.config, 3), data, settings, collate=collate0, checkpoint_dir=folder, selection=selection)
    finally:
        torch.optim.AdamW.step = original
    assert torch.load(folder / "checkpoint.pt", weights_only=False)["epoch"] == 1
    return folder


def test_non_finite_loss_names_the_step():
    model, data = make_model(), toy_data(16)
    with torch.no_grad():
        model.hf.classifier.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="stage 'finetune', step 0"):
        run_stages(model, Finetune(model.config, 1), data, TrainSettings(batch_size=8), collate=collate0)


def test_span_loss_is_the_mean_start_end_cross_entropy_without_padding():
    from top.train import task_loss

    logits = torch.zeros(1, 4, 2)
    logits[0, 3] = 100.0  # a padding position with a huge logit must not count
    labels = torch.tensor([[1, 2]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # three real positions with equal logits: each cross-entropy is log 3
    assert task_loss(logits, labels, mask).item() == pytest.approx(math.log(3))
    assert task_loss(logits, labels).item() > 50  # without the mask the padding dominates


class WithParameter(Finetune):
    """A method whose own parameter ``w`` enters the loss as ``100 * sum(w)`` (gradient 100
    everywhere), in a group that sets ``clip`` only when it is given; optionally freezes the
    encoder's embeddings."""

    def __init__(self, config, clip=None, frozen=()):
        super().__init__(config, 1)
        self.module.w = torch.nn.Parameter(torch.ones(3))
        self.clip, self.frozen = clip, tuple(frozen)

    def parameter_groups(self, stage):
        group = {"params": [self.module.w], "lr": 0.1}
        if self.clip is not None:
            group["clip"] = self.clip
        return [group]

    def extra_loss(self, stage, step):
        return 100.0 * self.module.w.sum(), {}

    def frozen_model_parameters(self, stage):
        return self.frozen


def _gradients_at_step(monkeypatch, method, model, data, max_grad_norm=1.0):
    """Train one step; the gradients each optimiser saw when it stepped, by parameter name."""
    names = {id(p): n for n, p in [*model.hf.named_parameters(), *(("w", method.module.w),)]}
    seen = {}
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        seen.update({names[id(p)]: p.grad.clone() for g in self.param_groups for p in g["params"]})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    run_stages(model, method, data, TrainSettings(batch_size=len(data), learning_rate=1e-2, max_grad_norm=max_grad_norm), collate=collate0)
    return seen


@pytest.mark.parametrize("clip", [None, True, False])
def test_method_groups_are_clipped_unless_they_set_clip_false(monkeypatch, clip):
    model, data = make_model(), toy_data(8)
    seen = _gradients_at_step(monkeypatch, WithParameter(model.config, clip), model, data)
    norm = float(torch.linalg.vector_norm(seen["w"]))
    if clip is False:
        assert torch.equal(seen["w"], torch.full((3,), 100.0))  # never clipped
    else:  # the default (LTP, PoWER-BERT): clipped on its own to max_grad_norm
        assert norm == pytest.approx(1.0, rel=1e-4)
    encoder = torch.linalg.vector_norm(torch.cat([g.flatten() for n, g in seen.items() if n != "w"]))
    assert float(encoder) <= 1.0 + 1e-4  # the encoder's own norm, not shrunk by the method's


def test_frozen_model_parameters_stay_put_and_count_in_the_clipping_norm(monkeypatch):
    model, data = make_model(), toy_data(8)
    before = {n: p.detach().clone() for n, p in model.hf.named_parameters()}
    method = WithParameter(model.config, frozen=("embeddings",))
    seen = _gradients_at_step(monkeypatch, method, model, data, max_grad_norm=1e-9)
    assert seen and not any("embeddings" in n for n in seen)  # in no optimiser
    for name, param in model.hf.named_parameters():
        assert torch.equal(param.detach(), before[name]) == ("embeddings" in name), name
        assert param.grad is None  # cleared after the step, frozen ones too
    # with the embeddings' gradients in the norm, the others' norm is below max_grad_norm
    trained = float(torch.linalg.vector_norm(torch.cat([g.flatten() for n, g in seen.items() if n != "w"])))
    assert trained < 1e-9 * (1 - 1e-3)


def test_frozen_embedding_tables_get_sparse_gradients_with_the_dense_norm(monkeypatch):
    """A frozen embedding table's gradient only counts in the clipping norm: it is computed sparse
    (the batch's rows), the clipped gradients are those of dense ones, and the tables are dense
    again after training."""
    data = toy_data(8)
    grads = {}
    for frozen in (("embeddings",), ("embeddings_off",)):  # the second freezes nothing
        model = make_model()
        seen = {}
        original = torch.optim.AdamW.step

        def step(self, *args, _seen=seen, _model=model, _original=original, **kwargs):
            if not _seen:
                _seen.update({n: p.grad.clone() for n, p in _model.hf.named_parameters() if p.grad is not None})
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.optim.AdamW, "step", step)
        run_stages(model, WithParameter(model.config, frozen=frozen), data, TrainSettings(batch_size=8, max_grad_norm=0.05), collate=collate0)
        monkeypatch.setattr(torch.optim.AdamW, "step", original)
        grads[frozen[0]] = seen
        assert not any(m.sparse for m in model.hf.modules() if isinstance(m, torch.nn.Embedding))
    sparse, dense = grads["embeddings"], grads["embeddings_off"]
    word = "bert.embeddings.word_embeddings.weight"
    assert sparse[word].is_sparse and not dense[word].is_sparse
    used = sorted({i for row in data for i in row["input_ids"]})
    assert sorted(sparse[word].coalesce().indices()[0].tolist()) == used  # only the batch's rows
    # the dense run clipped every gradient to the norm 0.05; the sparse one clipped the same
    # (so the sparse gradients counted in the norm) and left the sparse gradients unscaled
    norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in dense.values()]))
    assert float(norm) == pytest.approx(0.05, rel=1e-4)
    scale = float(torch.linalg.vector_norm(dense[word]) / torch.linalg.vector_norm(sparse[word].coalesce().values()))
    assert scale < 0.5
    for name, grad in sparse.items():
        torch.testing.assert_close(grad.to_dense() * (scale if grad.is_sparse else 1.0), dense[name], rtol=1e-4, atol=1e-9, msg=name)


# --------------------------------------------------------------------------- checkpoint selection


class ScriptedDev:
    """A dev evaluation that returns scripted (score, sparsity) pairs in call order, snapshots
    the weights and the method state it was called with, and draws from every random number
    generator (the training loop must put them back)."""

    def __init__(self, results, target=None):
        self.results = list(results)
        self.target = target
        self.weights: list[dict[str, torch.Tensor]] = []
        self.method_states: list[dict[str, torch.Tensor]] = []

    def __call__(self, model, method):
        import random

        import numpy as np

        torch.rand(3), random.random(), np.random.rand()
        self.weights.append({k: v.clone() for k, v in model.hf.state_dict().items()})
        self.method_states.append({k: v.clone() for k, v in method.module.state_dict().items()})
        score, sparsity = self.results.pop(0)
        return {"metric": "accuracy", "score": score, "sparsity": sparsity, "flops_reduction": 1 / (1 - sparsity), "target_sparsity": self.target}


def same_weights(model, weights) -> bool:
    return all(torch.equal(v, weights[k]) for k, v in model.hf.state_dict().items())


@pytest.mark.parametrize(
    "rule, scripted, evaluated, selected",
    [
        ("best_dev", [(0.6, 0.0), (0.9, 0.0), (0.7, 0.0)], [1, 2, 3], 2),
        ("last", [(0.7, 0.0)], [3], 3),  # the last candidate, the only one evaluated
    ],
)
def test_selection_restores_the_chosen_epoch_and_leaves_training_alone(rule, scripted, evaluated, selected):
    from top.selection import CheckpointSelection

    data, settings = toy_data(32), TrainSettings(batch_size=8, learning_rate=1e-3, seed=1)
    plain = make_model()
    plain_history = run_stages(plain, Finetune(plain.config, 3), data, settings, collate=collate0)

    model, dev = make_model(), ScriptedDev(scripted)
    selection = CheckpointSelection(dev, rule)
    history = run_stages(model, Finetune(model.config, 3), data, settings, collate=collate0, selection=selection)
    assert history == plain_history  # the evaluations (which draw random numbers) changed nothing
    assert len(dev.weights) == len(evaluated)
    assert same_weights(plain, dev.weights[-1])  # the last epoch, as without selection
    assert same_weights(model, dev.weights[evaluated.index(selected)])
    if rule == "best_dev":
        assert not same_weights(plain, dev.weights[1])  # epochs 2 and 3 differ: the check is not vacuous
    summary = selection.summary()
    assert summary["selected_epoch"] == selected and summary["epochs"] == 3 and summary["rule"] == rule
    assert [r["epoch"] for r in summary["history"]] == evaluated and [r["score"] for r in summary["history"]] == [s for s, _ in scripted]


@pytest.mark.parametrize(
    "results, selected, fallback",
    [
        # target 0.3: epoch 1 scores best but misses the budget; 0.295 is within 0.01 of it
        ([(0.95, 0.10), (0.80, 0.295), (0.85, 0.40), (0.70, 0.50)], 3, False),
        ([(0.95, 0.10), (0.80, 0.285), (0.85, 0.20), (0.70, 0.25)], 4, True),  # none meets it: the last
        ([(0.50, 0.30), (0.50, 0.30), (0.40, 0.30), (0.50, 0.10)], 2, False),  # a tie: the later qualifying one
        ([(float("nan"), 0.3), (0.20, 0.3), (float("nan"), 0.3), (0.10, 0.3)], 2, False),  # NaN ranks last
    ],
)
def test_best_dev_takes_the_best_score_among_epochs_that_meet_the_flops_budget(results, selected, fallback):
    from top.selection import CheckpointSelection

    model, dev = make_model(), ScriptedDev(results, target=0.3)
    selection = CheckpointSelection(dev, "best_dev")
    run_stages(model, Finetune(model.config, 4), toy_data(16), TrainSettings(batch_size=8, learning_rate=1e-3), collate=collate0, selection=selection)
    summary = selection.summary()
    assert summary["selected_epoch"] == selected and summary["fallback"] is fallback
    assert [r["qualifies"] for r in summary["history"]] == [s >= 0.29 for _, s in results]
    assert same_weights(model, dev.weights[selected - 1])


class Derives(Finetune):
    """A method whose learned state (``steps``, counted in training) is turned into its exported
    decisions (``derived``) only by ``on_stage_end``, as ToP's calibration does."""

    def __init__(self, config, epochs):
        super().__init__(config, epochs)
        self.module.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.module.register_buffer("derived", torch.zeros((), dtype=torch.long))

    def extra_loss(self, stage, step):
        self.module.steps += 1
        return None, {}

    def on_stage_end(self, stage):
        self.module.derived.fill_(10 * int(self.module.steps))

    def compare_stage_end(self, stage):
        return True


def test_a_candidate_is_the_model_the_run_would_export_had_it_stopped_there(tmp_path):
    from top.selection import CheckpointSelection

    data, settings = toy_data(16), TrainSettings(batch_size=8, learning_rate=1e-3)  # 2 steps per epoch
    model, dev = make_model(), ScriptedDev([(0.9, 0.0), (0.5, 0.0), (0.1, 0.0), (0.6, 0.0)])
    method = Derives(model.config, 3)
    selection = CheckpointSelection(dev, "best_dev")
    run_stages(model, method, data, settings, collate=collate0, selection=selection, checkpoint_dir=tmp_path)
    seen = [(int(s["steps"]), int(s["derived"])) for s in dev.method_states]
    # each epoch's candidate with on_stage_end applied to that epoch's state; at the last epoch
    # the state before on_stage_end is scored too
    assert seen == [(2, 20), (4, 40), (6, 0), (6, 60)]
    history = selection.summary()["history"]
    assert [(r["epoch"], r["finalised"], r["candidate"]) for r in history] == [(1, True, True), (2, True, True), (3, False, False), (3, True, True)]
    assert selection.summary()["stage_end"] == [
        {
            "stage": "finetune",
            "before": {"score": 0.1, "sparsity": 0.0, "flops_reduction": 1.0, "qualifies": True},
            "after": {"score": 0.6, "sparsity": 0.0, "flops_reduction": 1.0, "qualifies": True},
        }
    ]
    # training went on from the state without the hook (the checkpoint holds it)...
    assert int(torch.load(tmp_path / "checkpoint.pt", weights_only=False)["method"]["derived"]) == 0
    # ...and the run ends with epoch 1's weights and epoch 1's derived decisions
    assert (int(method.module.steps), int(method.module.derived)) == (2, 20)
    assert same_weights(model, dev.weights[0])


@pytest.mark.parametrize("best", [1, 2])
def test_resume_keeps_the_dev_history_and_the_best_checkpoint(tmp_path, best):
    from top.selection import CheckpointSelection

    data = toy_data(32)
    settings = TrainSettings(batch_size=8, learning_rate=1e-3, seed=5)
    scores = [(0.9, 0.0), (0.5, 0.0), (0.6, 0.0)] if best == 1 else [(0.5, 0.0), (0.9, 0.0), (0.6, 0.0)]
    straight, straight_dev = make_model(), ScriptedDev(scores)
    straight_selection = CheckpointSelection(straight_dev)
    run_stages(straight, Finetune(straight.config, 3), data, settings, collate=collate0, selection=straight_selection)

    checkpoint_dir = _interrupt_after_two_epochs(data, settings, tmp_path, selection=CheckpointSelection(ScriptedDev(scores[:2])))
    saved = torch.load(checkpoint_dir / "checkpoint.pt", weights_only=False)["selection"]
    assert [r["epoch"] for r in saved["history"]] == [1, 2] and saved["best"]["epoch"] == best
    assert saved["weights_are_checkpoint"] is (best == 2)  # epoch 2's weights are the checkpoint's own
    assert (saved["weights"] is None) is (best == 2)

    other = make_model(seed=9)
    with pytest.raises(ValueError, match="written with selection 'best_dev', this run asks for 'last'"):
        run_stages(
            other,
            Finetune(other.config, 3),
            data,
            settings,
            collate=collate0,
            checkpoint_dir=checkpoint_dir,
            selection=CheckpointSelection(ScriptedDev([]), "last"),
        )

    resumed, resumed_dev = make_model(seed=123), ScriptedDev(scores[2:])
    selection = CheckpointSelection(resumed_dev)
    run_stages(resumed, Finetune(resumed.config, 3), data, settings, collate=collate0, checkpoint_dir=checkpoint_dir, selection=selection)
    assert len(resumed_dev.weights) == 1  # only the third epoch was evaluated again
    assert selection.summary() == straight_selection.summary()
    assert selection.summary()["selected_epoch"] == best
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert same_weights(resumed, straight_dev.weights[best - 1])
