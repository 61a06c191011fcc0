"""The workflow's steps as library functions; ``workflow/scripts/*.py`` only call these.

Each function reads its inputs, does one step and writes its outputs atomically (temporary
name, then rename), with the resolved configuration as JSON beside them:

``finetune_teacher`` -> ``train_method`` -> ``evaluate_run`` -> ``count_flops`` ->
``measure_latency`` -> :mod:`top.report` (collect, tables, plots).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from top.config import resolve_run, teacher_settings
from top.encoder import PrunableModel
from top.evaluate import predict
from top.files import atomic_path, atomic_write_text, json_text
from top.measure.flops import flops_summary, head_kind
from top.models import PRUNING_FILE, load_pretrained, load_run, save_run
from top.pruning.base import PruningMethod
from top.pruning.dense import Finetune
from top.pruning.registry import build_method, method_class
from top.selection import CheckpointSelection, Evaluator
from top.tasks.base import Task, get_task
from top.tasks.settings import TaskConfig
from top.train import MODEL_INPUTS, TrainSettings, resolve_device, run_stages, set_seed

log = logging.getLogger(__name__)


def write_json(path: str | Path, payload: Any) -> None:
    """Write strict JSON atomically (temporary name, then rename): a NaN or infinite metric
    (e.g. Pearson of constant predictions) is written as ``null``, never as a bare ``NaN``
    token, which is not JSON (:func:`top.files.json_text`, ``allow_nan=False``)."""
    atomic_write_text(path, json_text(payload, indent=2, sort_keys=True))


def _task(cfg: Mapping[str, Any], name: str) -> Task:
    """The task ``name``, with the task settings of the workflow configuration ``cfg``."""
    return get_task(TaskConfig.from_config(cfg), name)


def _dev_features(cfg: Mapping[str, Any], spec: Task, tokenizer):
    """The features of the dev split that FLOPs are counted on and checkpoints are selected on:
    the task's first dev split, with the evaluation's ``limit``."""
    return spec.dev_features(spec.dev_splits[0], tokenizer, cfg["eval"].get("limit"))


def dev_evaluator(cfg: Mapping[str, Any], spec: Task, tokenizer, dataset=None) -> Evaluator:
    """The dev evaluation (on ``dataset``, default :func:`_dev_features`) that checkpoint selection (:mod:`top.selection`) scores each candidate
    with: what :func:`evaluate_run` and :func:`count_flops` would measure on the run saved at that
    point. The first dev split with ``eval.limit`` and ``eval.batch_size``, gather mode, the
    selectors rebuilt from ``method.export()``, the task's primary metric, and the FLOPs
    sparsity from the per-example lengths (:func:`top.measure.flops.flops_summary`)."""
    split = spec.dev_splits[0]
    limit = cfg["eval"].get("limit")
    dataset = _dev_features(cfg, spec, tokenizer) if dataset is None else dataset
    collate = spec.collate(tokenizer)
    device = resolve_device(cfg["device"])

    def evaluate(model: PrunableModel, method: PruningMethod) -> dict[str, Any]:
        exported = method.export()
        runner = PrunableModel(model.hf, type(method).inference_selectors(exported, model.hf.config))
        preds = predict(runner, dataset, collate, batch_size=cfg["eval"]["batch_size"], mode="gather", device=device)
        metrics = spec.score(split, dataset, preds.logits, preds.labels, limit)
        flops = flops_summary(model.hf.config, spec.head, preds.lengths_in, preds.lengths_kept)
        return {
            "split": split,
            "metric": spec.primary_metric,
            "score": float(metrics[spec.primary_metric]),
            "sparsity": 1.0 - flops["flops_ratio"],
            "flops_reduction": flops["flops_reduction"],
            "target_sparsity": type(method).flops_target(exported),
            "n_examples": len(dataset),
        }

    return evaluate


def finetune_teacher(cfg: Mapping[str, Any], task: str, seed: int, out_dir: str | Path) -> None:
    """Fine-tune the pretrained model on ``task``: the teacher every method starts from and the
    ``dense`` reference row. The epoch kept follows ``teacher.selection`` (:mod:`top.selection`)."""
    settings = teacher_settings(cfg, task)
    set_seed(seed)
    spec = _task(cfg, task)
    model, tokenizer = load_pretrained(cfg["model"], num_labels=spec.num_labels, head=spec.head)
    train = spec.train_features(tokenizer, settings.get("train_limit"), seed)
    train_settings = TrainSettings.from_dict({**settings, "seed": seed, "device": cfg["device"], "progress": True})
    method = Finetune(model.config, settings["epochs"])
    selection = CheckpointSelection(dev_evaluator(cfg, spec, tokenizer), settings["selection"])
    out_dir = Path(out_dir)
    history = run_stages(
        model,
        method,
        train,
        train_settings,
        collate=spec.collate(tokenizer),
        checkpoint_dir=out_dir.with_name(out_dir.name + ".ckpt"),
        selection=selection,
    )
    resolved = {"task": task, "seed": seed, "model": cfg["model"], "teacher": settings, "train_examples": len(train)}
    extra = {"config": resolved, "history": history, "selection": {**selection.summary(), "trained": "teacher"}}
    save_run(model, tokenizer, out_dir, "dense", {}, extra=extra)
    _drop_checkpoint(out_dir)


def _drop_checkpoint(out_dir: Path) -> None:
    checkpoint = out_dir.with_name(out_dir.name + ".ckpt") / "checkpoint.pt"
    if checkpoint.exists():
        checkpoint.unlink()
        checkpoint.parent.rmdir()


def train_method(cfg: Mapping[str, Any], task: str, method_name: str, setting: str, seed: int, teacher_dir: str | Path, out_dir: str | Path) -> None:
    """Train one method from the fine-tuned teacher and save weights + ``pruning.json``.

    The epoch kept follows the run's ``train.selection`` (:mod:`top.selection`); a method with
    nothing to train keeps the teacher's weights, and ``pruning.json`` repeats the teacher's
    selection record."""
    run = resolve_run(cfg, task, method_name, setting, seed)
    set_seed(seed)
    student, tokenizer, teacher_record = load_run(teacher_dir)
    method = build_method(method_name, student.config, run["method_settings"])
    stages = method.stages()
    history: list[dict[str, float]] = []
    selection_record = teacher_record.get("selection")
    if stages:
        teacher, _, _ = load_run(teacher_dir)
        spec = _task(cfg, task)
        train = spec.train_features(tokenizer, run["train"].get("train_limit"), seed)
        dev = _dev_features(cfg, spec, tokenizer)  # read once: the constraint's lengths and the selection's evaluation
        method.prepare(_token_counts(train, dev, spec.protects_tokens), spec.head)
        settings = TrainSettings.from_dict({**run["train"], "seed": seed, "device": cfg["device"], "progress": True})
        selection = CheckpointSelection(dev_evaluator(cfg, spec, tokenizer, dev), run["train"]["selection"])
        out_dir = Path(out_dir)
        history = run_stages(
            student,
            method,
            train,
            settings,
            collate=spec.collate(tokenizer),
            teacher=teacher,
            checkpoint_dir=out_dir.with_name(out_dir.name + ".ckpt"),
            selection=selection,
        )
        selection_record = {**selection.summary(), "trained": "method"}
    decisions = method.export()
    extra = {"config": run, "history": history, "selection": selection_record}
    save_run(student.cpu(), tokenizer, out_dir, method_name, decisions, extra=extra)
    _drop_checkpoint(Path(out_dir))


def _token_counts(train, dev, protects_tokens: bool = False) -> dict[str, torch.Tensor]:
    """Real lengths ``[N]`` of the training features and of the dev features (:func:`_dev_features`)
    and, when the task protects tokens, ``"train_protected"`` and ``"validation_protected"``:
    the tokens each feature keeps whatever a method decides, its ``protect_mask`` tokens and
    [CLS] (slot 0) (:meth:`top.pruning.base.PruningMethod.prepare`)."""
    counts = {
        "train": torch.tensor([len(ids) for ids in train["input_ids"]]),
        "validation": torch.tensor([len(ids) for ids in dev["input_ids"]]),
    }
    if protects_tokens:
        for split, features in (("train", train), ("validation", dev)):
            counts[f"{split}_protected"] = torch.tensor([1 + sum(mask[1:]) for mask in features["protect_mask"]])
    return counts


def evaluate_run(
    cfg: Mapping[str, Any], task: str, model_dir: str | Path, metrics_path: str | Path, lengths_path: str | Path, run_info: Mapping[str, Any]
) -> dict[str, Any]:
    """Evaluate a saved run on every dev split in gather mode (tokens really removed).

    Writes ``metrics_path`` (task metrics per split, the primary score, and which checkpoint
    the run kept: ``selection``, ``selected_epoch``, ``selection_fallback``, from
    ``pruning.json``) and ``lengths_path`` (``.npz`` with per-example
    ``lengths_in``/``lengths_kept`` of the first dev split, for FLOPs).
    """
    model, tokenizer, record = load_run(model_dir)
    spec = _task(cfg, task)
    device = resolve_device(cfg["device"])
    eval_cfg = cfg["eval"]
    result: dict[str, Any] = {**run_info, "primary_metric": spec.primary_metric, "metric_scale": spec.metric_scale, "splits": {}}
    for index, split in enumerate(spec.dev_splits):
        dataset = spec.dev_features(split, tokenizer, eval_cfg.get("limit"))
        preds = predict(model, dataset, spec.collate(tokenizer), batch_size=eval_cfg["batch_size"], mode="gather", device=device, progress=True)
        metrics = spec.score(split, dataset, preds.logits, preds.labels, eval_cfg.get("limit"))
        result["splits"][split] = {**metrics, "n_examples": len(dataset)}
        log.info("%s %s: %s", task, split, metrics)
        if index == 0:
            result["score"] = metrics[result["primary_metric"]]
            _write_npz(lengths_path, lengths_in=preds.lengths_in, lengths_kept=preds.lengths_kept)
    result["method"] = record["method"]
    result["decisions"] = record["decisions"]
    selection = record.get("selection") or {}
    result.update(
        selection=selection.get("rule"),
        selected_stage=selection.get("stage"),
        selected_epoch=selection.get("selected_epoch"),
        selection_epochs=selection.get("epochs"),
        selection_fallback=selection.get("fallback"),
        selection_trained=selection.get("trained"),
    )
    write_json(metrics_path, result)
    return result


def _write_npz(path: str | Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


def count_flops(model_dir: str | Path, lengths_path: str | Path, out_path: str | Path, run_info: Mapping[str, Any]) -> dict[str, Any]:
    """FLOPs of a run over the dev set from its per-example lengths (:mod:`top.measure.flops`)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    lengths = np.load(lengths_path)
    summary = {**run_info, **flops_summary(config, head_kind(config), lengths["lengths_in"], lengths["lengths_kept"])}
    record = json.loads((Path(model_dir) / PRUNING_FILE).read_text())
    target = method_class(record["method"]).flops_target(record["decisions"])
    if target is not None:
        target_reduction = 1.0 / (1.0 - target)
        summary.update(
            target_sparsity=target,
            achieved_sparsity=1.0 - summary["flops_ratio"],
            target_flops_reduction=target_reduction,
            target_error_pct=100.0 * (summary["flops_reduction"] / target_reduction - 1.0),
        )
        log.info("FLOPs reduction %.3fx, target %.3fx (%+.1f%%)", summary["flops_reduction"], target_reduction, summary["target_error_pct"])
    write_json(out_path, summary)
    return summary


def _latency_rows(cfg: Mapping[str, Any], task: str, tokenizer) -> tuple[Any, list[int], Any]:
    """The dev set, the indices of the fixed latency sample (sorted) and the task's collate."""
    lat = cfg["latency"]
    spec = _task(cfg, task)
    dataset = spec.dev_features(spec.dev_splits[0], tokenizer, None)
    count = min(lat["n_examples"], len(dataset))
    rng = np.random.default_rng(lat["sample_seed"])
    indices = sorted(rng.choice(len(dataset), size=count, replace=False).tolist())
    return dataset, indices, spec.collate(tokenizer)


def latency_sample(cfg: Mapping[str, Any], task: str, tokenizer) -> list[dict[str, torch.Tensor]]:
    """The fixed sample of dev examples every method is timed on, as batch-1 model inputs."""
    dataset, indices, collate = _latency_rows(cfg, task, tokenizer)
    return [{k: v for k, v in collate([dataset[i]]).items() if k in MODEL_INPUTS} for i in indices]


def latency_batches(cfg: Mapping[str, Any], task: str, tokenizer, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """The latency sample in ragged batches: consecutive groups of ``batch_size`` examples (in
    sample order; the last group may be smaller), each padded to its longest row."""
    dataset, indices, collate = _latency_rows(cfg, task, tokenizer)
    groups = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    return [{k: v for k, v in collate([dataset[i] for i in group]).items() if k in MODEL_INPUTS} for group in groups]


def _throughput(timings: Mapping[str, Any], batches: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Examples per second of each runner over ``batches`` (examples / the sum of per-batch
    medians), and the pruned model's throughput speedup over the dense reference's."""
    examples = sum(int(b["input_ids"].shape[0]) for b in batches)
    per_second = {name: examples / (sum(stats["per_input_ms"]) / 1000.0) for name, stats in timings["runners"].items()}
    return {
        "n_batches": len(batches),
        "n_examples": examples,
        "mean_padded_length": float(np.mean([b["input_ids"].shape[1] for b in batches])),
        "mean_real_length": float(np.mean([float(b["attention_mask"].sum()) / b["attention_mask"].shape[0] for b in batches])),
        "examples_per_s": per_second,
        "speedup": per_second["pruned"] / per_second["dense"],
        "timings": timings,
    }


def measure_latency(
    cfg: Mapping[str, Any], task: str, dense_dir: str | Path, model_dir: str | Path, out_path: str | Path, run_info: Mapping[str, Any]
) -> dict[str, Any]:
    """CPU latency of a run against the stock dense model, interleaved in one process
    (docs/design.md, "Latency protocol"). The process must already be pinned
    (:func:`top.measure.pinning.pin_process`); :func:`top.measure.latency.check_pinning` refuses otherwise.

    Batch 1, four runners on the latency sample: ``dense`` (the teacher as a user deploys it: the
    plain Hugging Face forward with SDPA; every speedup divides by it), ``dense_harness`` (the
    teacher through this harness's encoder, all tokens), ``pruned`` (the run, gather mode) and
    ``ideal`` (the run's own SDPA layers at each example's per-layer lengths from the pruned
    model, :meth:`top.encoder.PrunableModel.forward_at_lengths`: no scoring, no gather). Then,
    per ``latency.batch_sizes``, the throughput of ``dense`` and ``pruned`` on the sample in
    ragged batches (:func:`latency_batches`), and each batch-1 runner's peak resident memory
    (:func:`top.measure.latency.measure_peak_memory`).
    """
    from top.measure.latency import check_pinning, environment_info, measure_interleaved, measure_peak_memory, parameter_bytes
    from top.measure.pinning import parse_cores

    lat = cfg["latency"]
    cores, threads = parse_cores(str(lat["cores"])), int(lat["threads"])
    check_pinning(cores, threads)
    dense, _, _ = load_run(dense_dir)
    pruned, tokenizer, _ = load_run(model_dir)
    dense.eval()
    pruned.eval()
    stock = dense.hf
    sample = latency_sample(cfg, task, tokenizer)

    with torch.inference_mode():
        outputs = [pruned(**x, mode="gather", record=False) for x in sample]
    lengths = [(out.lengths_in[0].tolist(), out.lengths_kept[0].tolist()) for out in outputs]
    kept = [kept for _, kept in lengths]
    items = list(range(len(sample)))
    runners = {
        "dense": lambda i: stock(**sample[i]),
        "dense_harness": lambda i: dense(**sample[i], mode="gather", record=False),
        "pruned": lambda i: pruned(**sample[i], mode="gather", record=False),
        "ideal": lambda i: pruned.forward_at_lengths(sample[i]["input_ids"], sample[i].get("token_type_ids"), *lengths[i]),
    }
    timings = measure_interleaved(
        runners, items, warmup=lat["warmup"], repeats=lat["repeats"], reference="dense", seed=lat["sample_seed"], progress=True
    )
    runners_out = timings["runners"]
    throughput = {}
    for size in lat.get("batch_sizes", [8, 32]):
        batches = latency_batches(cfg, task, tokenizer, int(size))
        batch_timings = measure_interleaved(
            {"dense": lambda b: stock(**b), "pruned": lambda b: pruned(**b, mode="gather", record=False)},
            batches,
            warmup=lat["warmup"],
            repeats=lat["repeats"],
            reference="dense",
            seed=lat["sample_seed"],
            progress=True,
        )
        throughput[str(size)] = {"batch_size": int(size), **_throughput(batch_timings, batches)}
        log.info("batch %d: %.2fx the dense model's examples/s", size, throughput[str(size)]["speedup"])
    memory = measure_peak_memory(runners, items)
    memory["parameter_bytes"] = {"dense": parameter_bytes(dense.hf), "pruned": parameter_bytes(pruned)}
    result = {
        **run_info,
        "batch_size": 1,
        "reference": "dense: the stock Hugging Face model with SDPA",
        "speedup": runners_out["pruned"]["speedup"],
        "speedup_ideal": runners_out["ideal"]["speedup"],
        "speedup_harness": runners_out["dense_harness"]["speedup"],
        "pruned_vs_ideal": runners_out["ideal"]["median_ms"] / runners_out["pruned"]["median_ms"],
        "timings": timings,
        "throughput": throughput,
        "memory": memory,
        "environment": environment_info(cores, threads),
        "mean_input_length": float(np.mean([x["input_ids"].shape[1] for x in sample])),
        "mean_lengths_kept": np.mean(np.array(kept, dtype=np.float64), axis=0).tolist(),
    }
    write_json(out_path, result)
    return result
