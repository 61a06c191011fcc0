"""Dev-set sampling noise (top/analysis/dev_noise.py, benchmarks/dev_noise.py): the bootstrap
over dev examples, its pairing, and a run's predictions made as the evaluation makes them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import write_tiny_sst2, write_tiny_sst2_config
from top.analysis.dev_noise import bootstrap, glue_score, paired_difference, readout_weights, run_predictions, weighted_score

ROOT = Path(__file__).resolve().parents[1]


def correct_on(n: int, right: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels ``[n]`` and predictions right on ``right`` of them (at random places)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    wrong = rng.permutation(n)[: n - right]
    predicted = labels.copy()
    predicted[wrong] = 1 - predicted[wrong]
    return predicted, labels


def test_a_scores_spread_is_the_binomial_standard_error():
    predicted, labels = correct_on(400, 300)
    interval = bootstrap(glue_score("sst2", "accuracy", predicted, labels), 400, samples=2000)
    assert interval.estimate == 0.75
    assert interval.std == pytest.approx(np.sqrt(0.75 * 0.25 / 400), rel=0.1)
    assert interval.low < 0.75 < interval.high and interval.high - interval.low == pytest.approx(4 * interval.std, rel=0.15)


def test_pairing_leaves_out_the_noise_two_runs_share():
    """Two runs that differ on 10 of 400 examples: the paired difference's spread is a small
    part of what it would be if their errors were independent."""
    first, labels = correct_on(400, 320)
    second = first.copy()
    second[:10] = 1 - second[:10]
    score = {name: bootstrap(glue_score("mrpc", "f1", run, labels), 400) for name, run in (("first", first), ("second", second))}
    difference = paired_difference(glue_score("mrpc", "f1", first, labels), glue_score("mrpc", "f1", second, labels), 400)
    assert difference.estimate == pytest.approx(score["first"].estimate - score["second"].estimate)
    assert difference.std < 0.5 * np.hypot(score["first"].std, score["second"].std)
    # a run against itself: no noise at all
    same = paired_difference(glue_score("mrpc", "f1", first, labels), glue_score("mrpc", "f1", first, labels), 400, samples=200)
    assert (same.estimate, same.std, same.low, same.high) == (0.0, 0.0, 0.0, 0.0)


def test_the_same_seed_draws_the_same_resamples_and_another_does_not():
    predicted, labels = correct_on(100, 70)
    score = glue_score("sst2", "accuracy", predicted, labels)
    assert bootstrap(score, 100, samples=300, seed=1) == bootstrap(score, 100, samples=300, seed=1)
    assert bootstrap(score, 100, samples=300, seed=1).std != bootstrap(score, 100, samples=300, seed=2).std


def test_a_statistic_undefined_on_every_resample_is_an_error():
    labels = np.linspace(0.0, 5.0, 20)
    constant = np.full(20, 2.5)  # Pearson's r of a constant prediction is undefined
    with pytest.warns(Warning), pytest.raises(ValueError, match="undefined on all but 0 of 50 resamples"):
        bootstrap(glue_score("stsb", "pearson", constant, labels), 20, samples=50)
    with pytest.raises(ValueError, match="3 predictions for 20 labels"):
        glue_score("stsb", "pearson", constant[:3], labels)


def _shift_classifier(run: Path, shift: float) -> None:
    """Move the run's classifier bias towards class 0, so that its predictions differ."""
    weights = load_file(run / "model.safetensors")
    (key,) = [name for name in weights if name.endswith("classifier.bias")]
    weights[key] = weights[key] + torch.tensor([shift, -shift])
    save_file(weights, run / "model.safetensors", metadata={"format": "pt"})


RUNS = {("topk", "r2"): (1.5, -20.0), ("topk", "r4"): (3.0, 20.0), ("top", "s50"): (2.0, 0.0), ("top", "s50_more"): (2.0, -20.0)}
"""The fixture's runs: (method, setting) -> (FLOPs reduction in the ledger, classifier shift:
-20 answers class 1 throughout, +20 class 0, whatever the teacher learnt)."""


@pytest.fixture(scope="module")
def reproduction(tmp_path_factory):
    """A tiny configuration file with one ablation, a results folder with four runs made from its
    teacher (some with their predictions moved), and a ledger that records them."""
    from top.config import validate_config
    from top.pipeline import evaluate_run, finetune_teacher
    from top.report.ledger import PROVENANCE_COLUMNS
    from top.report.reproduction import SUMMARY_COLUMNS

    root = tmp_path_factory.mktemp("dev_noise")
    glue = write_tiny_sst2(root / "glue", train_rows=48, dev_rows=40)
    dev = (glue / "SST-2/dev.tsv").read_text().splitlines()  # 20 positive, 10 negative: constant answers score apart
    (glue / "SST-2/dev.tsv").write_text("\n".join([dev[0], *(row for i, row in enumerate(dev[1:]) if row.endswith("1") or i < 20)]) + "\n")
    methods = {
        "dense": {"settings": {"default": {}}},
        "topk": {"settings": {"r2": {"keep_ratios": [1.0, 0.5]}, "r4": {"keep_ratios": [1.0, 0.25]}}},
        "top": {"settings": {name: {"target_sparsity": 0.5, "epochs": 1, "bin_num": 4} for name in ("s50", "s50_more")}},
    }
    ablations = {"top": {"s50_more": {"of": "s50", "change": "a shifted copy", "tasks": ["sst2"]}}}
    cfg = write_tiny_sst2_config(root, glue, methods, ablations=ablations)
    validate_config(cfg)  # a configuration the workflow would take: the ablation's settings are configured
    finetune_teacher(cfg, "sst2", 7, root / "teacher")
    results, rows = root / "results/sst2", []
    for (method, setting), (reduction, shift) in RUNS.items():
        run = results / f"models/sst2/{method}/{setting}/seed7"
        shutil.copytree(root / "teacher", run)
        if shift:
            _shift_classifier(run, shift)
        metrics = evaluate_run(cfg, "sst2", run, results / f"eval/sst2/{method}/{setting}/seed7/metrics.json", root / "l.npz", {})
        rows.append({"task": "sst2", "method": method, "setting": setting, "seed": 7, "score": metrics["score"] * 100, "flops_reduction": reduction})
    ledger = pd.DataFrame(rows).reindex(columns=[*SUMMARY_COLUMNS, *PROVENANCE_COLUMNS])
    (root / "ledgers/runs").mkdir(parents=True)
    ledger.to_csv(root / "ledgers/runs/sst2.csv", index=False, float_format="%.6g")
    return root, cfg, glue


def test_a_runs_predictions_score_what_its_evaluation_scored(reproduction):
    root, cfg, _ = reproduction
    run = root / "results/sst2/models/sst2/topk/r4/seed7"
    preds = run_predictions(cfg, "sst2", run)
    recorded = json.loads((root / "results/sst2/eval/sst2/topk/r4/seed7/metrics.json").read_text())["score"]
    assert preds.score == recorded and len(preds.predicted) == len(preds.labels) == 30
    assert glue_score("sst2", "accuracy", preds.predicted, preds.labels)(np.arange(30)) == recorded
    with pytest.raises(ValueError, match="squad: the dev-set bootstrap covers GLUE tasks"):
        run_predictions(cfg, "squad", run)


def test_a_methods_readout_weighs_its_two_nearest_settings_in_log_flops():
    assert readout_weights({"a": 1.5, "b": 3.0, "c": 5.0}, 2.0) == pytest.approx(
        {"a": 1 - np.log(2 / 1.5) / np.log(2), "b": np.log(2 / 1.5) / np.log(2)}
    )
    assert readout_weights({"a": 1.5, "b": 2.0, "c": 3.0}, 2.0) == {"b": 1.0}
    assert readout_weights({"a": 1.5, "b": 3.0, "c": 3.0}, 2.0) == pytest.approx({"a": 0.585, "b": 0.2075, "c": 0.2075}, abs=1e-3)
    assert readout_weights({"a": 1.5, "b": 3.0}, 4.0) is None  # never extrapolated
    # the weights read what the reproduction's comparison reads off the same curve
    from top.report.equal_flops import score_at

    curve, scores = {"a": 1.4, "b": 2.6, "c": 4.9}, {"a": 0.9, "b": 0.8, "c": 0.6}
    for target in (2.0, 4.0):
        read = weighted_score({s: (lambda index, v=v: v) for s, v in scores.items()}, readout_weights(curve, target))
        assert read(np.arange(3)) == pytest.approx(score_at([(curve[s], scores[s]) for s in curve], target).score)


def _script(root: Path, glue: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "benchmarks/dev_noise.py"), "--config", str(root / "config.yaml"), "--glue-dir", str(glue)]
    command += [
        "--task",
        "sst2",
        "--seed",
        "7",
        "--results-root",
        str(root / "results"),
        "--ledgers",
        str(root / "ledgers"),
        "--samples",
        "50",
        *extra,
    ]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": ""})


def test_the_script_reads_the_curves_and_pairs_each_ablation_with_its_setting(reproduction):
    root, _, glue = reproduction
    out = root / "noise.json"
    done = _script(root, glue, "--out", str(out))
    assert done.returncode == 0, done.stderr
    record = json.loads(out.read_text())
    scores = {run: record["runs"][run]["estimate"] for run in record["runs"]}
    assert set(scores) == {"top/s50_more", "top/s50", "topk/r2", "topk/r4"} and record["dev_examples"] == 30
    assert (scores["topk/r2"], scores["topk/r4"], scores["top/s50_more"]) == (pytest.approx(200 / 3), pytest.approx(100 / 3), pytest.approx(200 / 3))
    (pair,) = record["pairs"]
    assert (pair["first"], pair["second"]) == ("top/s50_more", "top/s50")
    assert pair["estimate"] == pytest.approx(scores["top/s50_more"] - scores["top/s50"])
    # top-k at 2x: between r2 (1.5x) and r4 (3x); ToP at 2x: s50 itself (its ablation is off the curve)
    at2 = record["readouts"]["2"]
    share = np.log(2 / 1.5) / np.log(2)
    assert at2["methods"]["topk"]["estimate"] == pytest.approx((1 - share) * scores["topk/r2"] + share * scores["topk/r4"])
    assert at2["methods"]["top"]["estimate"] == scores["top/s50"] and at2["weights"]["top"] == {"s50": 1.0}
    (difference,) = at2["differences"]
    assert (difference["first"], difference["second"]) == ("top", "topk")
    assert difference["estimate"] == pytest.approx(scores["top/s50"] - at2["methods"]["topk"]["estimate"])
    assert record["readouts"]["4"]["methods"] == {"topk": None, "top": None} and record["readouts"]["4"]["differences"] == []
    text = out.with_suffix(".md").read_text()
    assert "| top/s50_more − top/s50 |" in text and "| topk | cannot reach 4x | | |" in text
    # a run whose predictions no longer score what was recorded is named
    metrics = root / "results/sst2/eval/sst2/topk/r2/seed7/metrics.json"
    saved = metrics.read_text()
    metrics.write_text(json.dumps({**json.loads(saved), "score": 0.123}))
    try:
        failed = _script(root, glue, "--out", str(root / "other.json"))
    finally:
        metrics.write_text(saved)
    assert failed.returncode != 0 and "topk/r2/seed7: this pass scores" in failed.stderr and "recorded score is 0.123" in failed.stderr
    assert not (root / "other.json").exists()
    # a run that is not there is named before anything is predicted
    missing = _script(root, glue, "--pairs", "topk/r2:ltp/lam1", "--targets")
    assert missing.returncode == 2 and "models/sst2/ltp/lam1/seed7" in missing.stderr
