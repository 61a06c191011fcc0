"""Invented results in the workflow's own formats, for the documentation's example figures.

:func:`write_example_runs` writes, for every run of a small made-up benchmark, the three files
the workflow's rules write (``metrics.json``, ``flops.json``, ``latency.json``), and
:func:`write_example_results` collects them into ``results.csv`` and ``layers.csv`` with
:func:`top.report.tables.collect`, as the ``collect`` rule does. The numbers are invented
(plausible, never measured): BERT-base dimensions, SST-2 and MRPC, every method at two settings,
three seeds. Each run's FLOPs reduction follows from its per-layer token counts by the harness's
FLOPs formula (:func:`top.measure.flops.encoder_macs`), so the three figures agree with each
other; scores and speedups are made up around it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from top.files import atomic_write_text
from top.report.outputs import RUN_DIR
from top.report.tables import collect

#: the example's model: its name (paper points are drawn for it) and BERT-base's dimensions
MODEL = "bert-base-uncased"
LAYERS, HIDDEN, INTERMEDIATE = 12, 768, 3072
SEEDS = (42, 43, 44)
#: task -> (primary metric, second metric or None, mean input length, dense score x100)
TASKS = {"sst2": ("accuracy", None, 25.0, 92.4), "mrpc": ("f1", "accuracy", 53.0, 89.6)}


@dataclass(frozen=True)
class ExampleSetting:
    """One method setting: the share of tokens kept after each layer (a decay from layer
    ``start`` to ``final`` after the last layer; ``curve`` < 1 drops more early), the score it
    loses against the dense model per unit of FLOPs sparsity, and ToP's FLOPs target where the
    method has one (then ``final`` is solved for, so the run lands on it, as ToP's does)."""

    method: str
    setting: str
    start: int = 0
    final: float = 1.0
    curve: float = 1.0
    loss: float = 0.0
    target: float | None = None

    def kept_fractions(self, final: float | None = None) -> np.ndarray:
        final = self.final if final is None else final
        layer = np.arange(LAYERS)
        progress = np.clip((layer - self.start + 1) / (LAYERS - self.start), 0.0, 1.0) ** self.curve
        return 1.0 - (1.0 - final) * progress


SETTINGS = (
    ExampleSetting("dense", "default"),
    ExampleSetting("topk", "keep50", start=1, final=0.25, curve=0.6, loss=5.0),
    ExampleSetting("topk", "keep30", start=0, final=0.08, curve=0.5, loss=7.0),
    ExampleSetting("ltp", "lam0.05", start=2, final=0.30, curve=0.8, loss=2.5),
    ExampleSetting("ltp", "lam0.2", start=1, final=0.15, curve=0.7, loss=3.0),
    ExampleSetting("power_bert", "lr1e-2", start=3, final=0.55, curve=1.0, loss=2.0),
    ExampleSetting("power_bert", "lr2e-2", start=0, final=0.05, curve=0.4, loss=5.0),
    ExampleSetting("top", "t50", start=1, curve=0.6, loss=2.0, target=2.0),
    ExampleSetting("top", "t75", start=0, curve=0.3, loss=3.5, target=4.0),
)


def _macs(lengths_in: np.ndarray, lengths_kept: np.ndarray) -> float:
    # top.measure.flops.encoder_macs, without importing torch for a figure
    return float((4 * lengths_in * HIDDEN**2 + 2 * lengths_in**2 * HIDDEN + 2 * lengths_kept * HIDDEN * INTERMEDIATE).sum())


def _lengths(setting: ExampleSetting, input_length: float, final: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    kept = input_length * setting.kept_fractions(final)
    entering = np.concatenate([[input_length], kept[:-1]])
    return entering, kept


def _reduction(setting: ExampleSetting, input_length: float, final: float | None = None) -> float:
    dense = _macs(*_lengths(SETTINGS[0], input_length))
    return dense / _macs(*_lengths(setting, input_length, final))


def _final(setting: ExampleSetting, input_length: float) -> float:
    """``setting.final``, or for a FLOPs target the share kept after the last layer that meets
    it (bisection: the reduction falls as ``final`` grows)."""
    if setting.target is None:
        return setting.final
    low, high = 0.0, 1.0
    for _ in range(50):
        middle = (low + high) / 2
        low, high = (middle, high) if _reduction(setting, input_length, middle) > setting.target else (low, middle)
    return (low + high) / 2


def write_example_runs(root: str | Path) -> tuple[list[Path], list[Path], list[Path]]:
    """Write every example run's ``metrics.json``, ``flops.json`` and ``latency.json`` under
    ``root/{task}/{method}/{setting}/seed{seed}/``; return the three lists of paths."""
    root = Path(root)
    metrics_files, flops_files, latency_files = [], [], []
    for task, (metric, second, input_length, dense_score) in TASKS.items():
        dense_macs = _macs(*_lengths(SETTINGS[0], input_length))
        for setting in SETTINGS:
            entering, kept = _lengths(setting, input_length, _final(setting, input_length))
            reduction = dense_macs / _macs(entering, kept)
            for seed in SEEDS:
                rng = np.random.default_rng([seed, len(task), len(setting.method), len(setting.setting)])
                keys = {"task": task, "method": setting.method, "setting": setting.setting, "seed": seed}
                folder = root / RUN_DIR.format(**keys)
                folder.mkdir(parents=True, exist_ok=True)
                score = (dense_score - setting.loss * (1.0 - 1.0 / reduction) + rng.normal(0.0, 0.4)) / 100.0
                split = {metric: score, "n_examples": 872 if task == "sst2" else 408}
                if second:
                    split[second] = score - 0.04
                metrics = {
                    **keys,
                    "primary_metric": metric,
                    "score": score,
                    "metric_scale": 1.0,
                    "splits": {"validation": split},
                    "selection": "best_dev",
                    "selected_epoch": 2,
                    "selection_epochs": 3,
                    "selection_fallback": False,
                }
                flops = {
                    **keys,
                    "flops": 2 * dense_macs / reduction,
                    "dense_flops": 2 * dense_macs,
                    "flops_reduction": reduction,
                    "mean_input_length": input_length,
                    "mean_lengths_in": entering.tolist(),
                    "mean_lengths_kept": kept.tolist(),
                }
                if setting.target is not None:
                    flops.update(target_flops_reduction=setting.target, target_error_pct=100.0 * (reduction / setting.target - 1.0))
                # batch 1 on a CPU is bound by reading the weights: speedups well below the FLOPs
                # reduction, the pruned model a few percent behind the ideal
                ideal = reduction**0.6 * (1.0 + rng.normal(0.0, 0.02))
                speedup = 1.0 if setting.method == "dense" else ideal * 0.92
                latency = _latency_record(keys, speedup, ideal if setting.method != "dense" else 1.0)
                for name, record, files in (
                    ("metrics.json", metrics, metrics_files),
                    ("flops.json", flops, flops_files),
                    ("latency.json", latency, latency_files),
                ):
                    atomic_write_text(folder / name, json.dumps(record, indent=1))
                    files.append(folder / name)
    return metrics_files, flops_files, latency_files


def _latency_record(keys: dict, speedup: float, ideal: float) -> dict:
    dense_ms = 12.0
    runners = {
        "dense": {"median_ms": dense_ms, "iqr_ms": 0.3},
        "dense_harness": {"median_ms": dense_ms * 1.03, "iqr_ms": 0.3},
        "pruned": {"median_ms": dense_ms / speedup, "iqr_ms": 0.3},
        "ideal": {"median_ms": dense_ms / ideal, "iqr_ms": 0.3},
    }
    throughput = {
        str(size): {
            "batch_size": size,
            "speedup": factor * speedup,
            "examples_per_s": {"dense": 400.0, "pruned": 400.0 * factor * speedup},
        }
        for size, factor in ((8, 0.9), (32, 0.8))
    }
    return {
        **keys,
        "speedup": speedup,
        "speedup_ideal": ideal,
        "speedup_harness": 1 / 1.03,
        "pruned_vs_ideal": speedup / ideal,
        "timings": {"runners": runners, "reference": "dense"},
        "throughput": throughput,
        "environment": {"cpu_model": "example CPU (invented numbers)", "threads": 1, "cores": [0]},
    }


def write_example_results(folder: str | Path) -> tuple[Path, Path]:
    """Write the example's runs under ``folder/runs/`` and collect them into
    ``folder/results.csv`` and ``folder/layers.csv``; return those two paths."""
    folder = Path(folder)
    results_csv, layers_csv = folder / "results.csv", folder / "layers.csv"
    collect(*write_example_runs(folder / "runs"), results_csv, layers_csv)
    return results_csv, layers_csv
