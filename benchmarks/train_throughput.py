"""Training throughput: examples/s of the teacher fine-tune and of each method's main stage.

Real data and weights: all-MiniLM-L6-v2 on the full SST-2, MRPC and RTE training sets (the
settings of ``config/benchmark.yaml``, the first setting of each method; its ``train_limit`` is
ignored so that batches are drawn from the whole training set). Phases: the teacher fine-tune,
ToP ``prune``, LTP ``soft``, PoWER-BERT ``search``, top-k ``finetune``. Each phase is measured
in variants, interleaved in one process (a shuffled order every round, one step of each variant
per round, warm-up steps first), through the training loop's own step (:class:`top.train.StageStep`):

``before``
    the loop as it was before these changes (commit ad4cfa3), emulated: uniform shuffling, a
    teacher forward pass per step keeping every layer's attention probabilities, the per-tensor
    AdamW loop, the student carrying every position's state, dense gradients for frozen
    embedding tables.
``off``
    this loop with ``group_by_length: false`` and ``teacher_cache: false``.
``group``, ``cache``, ``group+cache``
    ``group_by_length`` on; ``teacher_cache`` on (methods that distil from the teacher); both.
``group+cache+amp`` (``group+amp`` for methods without a teacher)
    with ``--amp [PRECISION]`` (or on CUDA): the last variant with ``precision: PRECISION``
    (default ``auto``: bf16 on CUDA, fp32 on the CPU, so give ``--amp bf16`` there).

``--variants`` keeps only the named variants (e.g. ``group+cache group+cache+amp``).

A variant's timed batches are batches of its own first epoch at evenly spaced quantiles of their
padded size (so grouped batches are as long or short as in a real epoch); the exact padding of a
whole epoch and of the timed batches are reported beside. The
teacher cache is built over the examples of those batches; its build rate, extrapolated to the
whole training set and spread over the stage's configured epochs, gives an amortised rate. The
cached signals are checked against a per-step teacher pass on real data (``cache_max_abs_diff``).

    python benchmarks/train_throughput.py                 # full: sst2 mrpc rte, 20 timed steps per variant
    python benchmarks/train_throughput.py --quick         # smoke: 4 timed steps per variant (noise)
    python benchmarks/train_throughput.py --profile       # torch.profiler of one ToP prune step, before and after

Writes ``benchmarks/results/train_throughput.json`` (``train_throughput_quick.json`` with
``--quick``) with the CPU model, torch version, threads and date, and prints a Markdown table.
Numbers from a busy machine are noise; compare variants of one run only.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import importlib.metadata
import json
import logging
import math
import os
import platform
import random
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

from top.config import read_local_config, resolve_run, teacher_settings
from top.files import atomic_write_text
from top.models import load_pretrained
from top.optim import resolve_precision
from top.pruning.base import TeacherSignals, attention_token_scores
from top.pruning.dense import Finetune
from top.pruning.registry import build_method
from top.tasks.base import get_task
from top.tasks.settings import TaskConfig
from top.teacher import TeacherRunner
from top.train import MODEL_INPUTS, StageStep, TeacherSource, TrainData, TrainSettings, resolve_device

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("train_throughput")

#: phase -> (method, stage); None: the teacher fine-tune.
PHASES = {
    "teacher": (None, "finetune"),
    "top": ("top", "prune"),
    "ltp": ("ltp", "soft"),
    "power_bert": ("power_bert", "search"),
    "topk": ("topk", "finetune"),
}
AMP = "amp"
"""The precision of the ``+amp`` variants: ``--amp``'s value."""
#: variant -> (emulate the old loop, group_by_length, teacher_cache, precision)
VARIANTS = {
    "before": (True, False, False, "fp32"),
    "off": (False, False, False, "fp32"),
    "group": (False, True, False, "fp32"),
    "cache": (False, False, True, "fp32"),
    "group+cache": (False, True, True, "fp32"),
    "group+cache+amp": (False, True, True, AMP),
    "group+amp": (False, True, False, AMP),
}
#: Each timed batch is stepped once (rounds x steps = batches), one step per variant per round.
MODES = {"full": {"warmup": 2, "rounds": 20, "steps": 1, "batches": 20}, "quick": {"warmup": 1, "rounds": 4, "steps": 1, "batches": 4}}


@dataclass
class Case:
    """One variant of one phase, ready to step."""

    name: str
    step: StageStep
    data: TrainData
    batches: list[list[int]]
    record: dict[str, Any]
    position: int = 0
    times: list[float] = field(default_factory=list)
    examples: list[int] = field(default_factory=list)

    def run(self, steps: int, device: torch.device) -> tuple[float, int]:
        examples = 0
        start = time.perf_counter()
        for _ in range(steps):
            rows = self.batches[self.position % len(self.batches)]
            batch = self.data.collate(self.data.dataset.__getitems__(rows))
            self.step(batch, self.position)
            self.position += 1
            examples += len(rows)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, examples


def _legacy_teacher(teacher, signals):
    """The teacher pass per step of the old loop: every layer's attentions kept, the carried
    states recorded, the last layer's scores computed from the kept attentions."""

    def run(batch, inputs):
        with torch.no_grad():
            out = teacher(**inputs, mode="mask", output_attentions=True)
        scores = attention_token_scores(out.attentions[-1], inputs["attention_mask"].bool()) if "final_token_scores" in signals else None
        return TeacherSignals(logits=out.logits if "logits" in signals else None, final_token_scores=scores)

    return run


def _carrying(model):
    """The old loop's student forward: every position's state carried (``record=True``)."""
    forward = model.forward

    def run(*args, **kwargs):
        kwargs["record"] = True
        return forward(*args, **kwargs)

    return run


def _padding(batches: list[list[int]], lengths: list[int]) -> tuple[int, int]:
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return padded, sum(lengths[i] for b in batches for i in b)


def representative(epoch: list[list[int]], lengths: list[int], count: int) -> list[list[int]]:
    """``count`` batches of the epoch at evenly spaced quantiles of their padded size (rows x
    longest row), in epoch order: a step's cost grows with that size, so their mean cost is
    close to the epoch's whatever the grouping."""
    sizes = np.array([len(b) * max(lengths[i] for i in b) for b in epoch])
    by_size = np.argsort(sizes, kind="stable")
    picks = sorted({int(by_size[min(len(epoch) - 1, int((k + 0.5) * len(epoch) / count))]) for k in range(count)})
    return [epoch[i] for i in picks]


def _max_abs_diff(cached: TeacherSignals, direct: TeacherSignals, mask: torch.Tensor) -> dict[str, float]:
    out = {}
    if cached.logits is not None:
        a, b = cached.logits, direct.logits
        if a.dim() == 3:
            a, b = a[mask], b[mask]
        out["logits"] = float((a - b).abs().max())
    if cached.final_token_scores is not None:
        a, b = cached.final_token_scores, direct.final_token_scores
        if not torch.equal(torch.isneginf(a), torch.isneginf(b)):
            raise AssertionError("cached and per-step token scores disagree on padding")
        out["final_token_scores"] = float((a[mask] - b[mask]).abs().max())
    return out


class Phase:
    """The data, models and settings of one task for one phase."""

    def __init__(self, cfg, task: str, phase: str, base, teacher, tokenizer, spec, train, dev_lengths, device, seed: int):
        self.cfg, self.task, self.phase, self.device, self.seed = cfg, task, phase, device, seed
        self.base, self.teacher, self.spec, self.train = base, teacher, spec, train
        self.collate = spec.collate(tokenizer)
        self.lengths = [len(ids) for ids in train["input_ids"]]
        self.dev_lengths = dev_lengths
        method_name, self.stage_name = PHASES[phase]
        if method_name is None:
            self.train_cfg, self.method_settings, self.setting = teacher_settings(cfg, task), None, "teacher"
        else:
            self.setting = next(iter(cfg["methods"][method_name]["settings"]))
            run = resolve_run(cfg, task, method_name, self.setting, seed)
            self.train_cfg, self.method_settings = run["train"], run["method_settings"]
        self.method_name = method_name

    def method(self, config):
        if self.method_name is None:
            return Finetune(config, self.train_cfg["epochs"])
        method = build_method(self.method_name, config, self.method_settings)
        method.prepare({"train": torch.tensor(self.lengths), "validation": torch.tensor(self.dev_lengths)}, self.spec.head)
        return method

    def case(self, variant: str, n_batches: int, amp: str = "auto") -> Case:
        legacy, group, cache, precision = VARIANTS[variant]
        precision = amp if precision == AMP else precision
        student = copy.deepcopy(self.base)
        method = self.method(student.config)
        stage_index, stage = next((i, s) for i, s in enumerate(method.stages()) if s.name == self.stage_name)
        values = {
            **self.train_cfg,
            "seed": self.seed,
            "device": str(self.device),
            "group_by_length": group,
            "teacher_cache": cache,
            "precision": precision,
        }
        settings = TrainSettings.from_dict(values)
        full = TrainData.of(self.train, self.collate, group)
        epoch = list(full.loader(settings.batch_size, torch.Generator().manual_seed(self.seed + stage_index)).batch_sampler)
        chosen = representative(epoch, self.lengths, n_batches)
        padded, real = _padding(epoch, self.lengths)
        timed_padded, timed_real = _padding(chosen, self.lengths)
        rows = sorted({i for b in chosen for i in b})
        where = {row: k for k, row in enumerate(rows)}
        subset = self.train.select(rows)
        batches = [[where[i] for i in b] for b in chosen]
        data = TrainData.of(subset, self.collate, False)
        total_steps = max(1, math.ceil(stage.epochs * len(epoch)))
        record: dict[str, Any] = {
            "task": self.task,
            "phase": self.phase,
            "method": self.method_name or "teacher",
            "stage": stage.name,
            "setting": self.setting,
            "variant": variant,
            "group_by_length": group,
            "teacher_cache": cache,
            "precision": precision,
            "emulates_previous_loop": legacy,
            "batch_size": settings.batch_size,
            "train_examples": len(self.train),
            "stage_epochs": stage.epochs,
            "epoch_padded_tokens": padded,
            "epoch_real_tokens": real,
            "epoch_padding_fraction": 1.0 - real / padded,
            "timed_batches": len(batches),
            "timed_padded_tokens_per_batch": timed_padded / len(batches),
            "epoch_padded_tokens_per_batch": padded / len(epoch),
        }
        signals = method.teacher_signals(stage.name)
        teacher_fn = None
        if signals:
            record["teacher_signals"] = list(signals)
            if legacy:
                teacher_fn = _legacy_teacher(self.teacher, signals)
            else:
                if cache:  # a warm teacher, so that the cache's build time is not a cold start's
                    warm = data.collate(data.dataset.__getitems__(batches[0]))
                    TeacherRunner(self.teacher, signals)({k: warm[k].to(self.device) for k in MODEL_INPUTS if k in warm})
                source = TeacherSource(self.teacher, method, [stage], subset, settings, self.collate, self.device)
                teacher_fn = source.for_stage(stage.name)
                if cache:
                    build = source.cache.seconds
                    rate = len(subset) / build
                    full_build = len(self.train) / rate
                    record.update(
                        cache_examples=len(subset),
                        cache_build_s=build,
                        cache_build_examples_per_s=rate,
                        cache_build_s_full_estimate=full_build,
                    )
                    record["cache_max_abs_diff"] = self._check_cache(source, data, batches[:3], signals)
        student.set_selectors(method.selectors(stage.name))
        student.selectors.to(self.device)
        if legacy:
            student.forward = _carrying(student)
        with ExitStack() as stack:
            if legacy:
                stack.enter_context(mock.patch("top.train.adamw", lambda groups, **kw: torch.optim.AdamW(groups, **kw)))
            step = StageStep(student, method, stage, settings, total_steps, teacher_fn, self.device)
        if legacy:
            step.close()  # the old loop's dense gradients of frozen embedding tables
        student.train()
        method.module.train()
        return Case(variant, step, data, batches, record)

    def _check_cache(self, source: TeacherSource, data: TrainData, batches, signals) -> dict[str, float]:
        runner = TeacherRunner(self.teacher, signals)
        worst: dict[str, float] = {}
        for rows in batches:
            batch = data.collate(data.dataset.__getitems__(rows))
            inputs = {k: batch[k].to(self.device) for k in MODEL_INPUTS if k in batch}
            diff = _max_abs_diff(source.cache(batch, signals), runner(inputs), inputs["attention_mask"].bool())
            for key, value in diff.items():
                worst[key] = max(worst.get(key, 0.0), value)
        return worst


def variants_of(phase: str, amp: bool, keep: list[str] | None = None) -> list[str]:
    distils = phase == "top"
    names = ["before", "off", "group"] + (["cache", "group+cache"] if distils else [])
    if amp:
        names.append("group+cache+amp" if distils else "group+amp")
    return [name for name in names if keep is None or name in keep]


def measure(phase: Phase, names: list[str], mode: dict[str, int], seed: int, amp: str = "auto") -> list[dict[str, Any]]:
    cases = [phase.case(name, mode["batches"], amp) for name in names]
    for case in cases:
        case.run(mode["warmup"], phase.device)
    rng = random.Random(seed)
    for round_index in range(mode["rounds"]):
        order = list(cases)
        rng.shuffle(order)
        for case in order:
            seconds, examples = case.run(mode["steps"], phase.device)
            case.times.append(seconds)
            case.examples.append(examples)
        log.info("%s %s round %d/%d", phase.task, phase.phase, round_index + 1, mode["rounds"])
    records = []
    for case in cases:
        rates = [e / t for e, t in zip(case.examples, case.times)]
        record = {
            **case.record,
            "timed_steps": mode["rounds"] * mode["steps"],
            "examples_per_s": sum(case.examples) / sum(case.times),
            "examples_per_s_rounds": rates,
            "seconds_per_step": sum(case.times) / (mode["rounds"] * mode["steps"]),
        }
        if "cache_build_s_full_estimate" in record:
            n, epochs = record["train_examples"], record["stage_epochs"]
            record["examples_per_s_amortised"] = epochs * n / (epochs * n / record["examples_per_s"] + record["cache_build_s_full_estimate"])
        records.append(record)
    by_name = {r["variant"]: r for r in records}

    def ratio(record: dict[str, Any], base: str) -> float | None:
        return record["examples_per_s"] / by_name[base]["examples_per_s"] if base in by_name else None

    for record in records:
        record["speedup_vs_before"] = ratio(record, "before")
        record["speedup_vs_off"] = ratio(record, "off")
        if record["variant"].endswith("+amp"):  # against the same variant in fp32
            record["speedup_vs_fp32"] = ratio(record, record["variant"].removesuffix("+amp"))
    return records


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(device: torch.device) -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch_version": torch.__version__,
        "transformers_version": importlib.metadata.version("transformers"),
        "python_version": platform.python_version(),
        "git_commit": commit,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def _times(ratio: float | None) -> str:
    return "–" if ratio is None else f"{ratio:.2f}x"


def markdown(records: list[dict[str, Any]]) -> str:
    lines = [
        "| task | phase | variant | precision | examples/s | vs before | vs off | vs fp32 | epoch padding | teacher | amortised ex/s (cache build) |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in records:
        teacher = "-"
        if r.get("teacher_signals"):
            teacher = "cached" if r["teacher_cache"] else ("per step, all attentions" if r["emulates_previous_loop"] else "per step")
        amortised = ""
        if "examples_per_s_amortised" in r:
            amortised = f"{r['examples_per_s_amortised']:.1f} ({r['cache_build_s_full_estimate']:.0f} s / {r['stage_epochs']:g} ep)"
        lines.append(
            f"| {r['task']} | {r['phase']} ({r['stage']}) | {r['variant']} | {r.get('precision', 'fp32')} | {r['examples_per_s']:.1f} | "
            f"{_times(r['speedup_vs_before'])} | {_times(r['speedup_vs_off'])} | {_times(r.get('speedup_vs_fp32'))} | "
            f"{100 * r['epoch_padding_fraction']:.0f}% | {teacher} | {amortised} |"
        )
    return "\n".join(lines) + "\n"


def load(cfg_path: Path, glue_dir: Path, task: str, device: torch.device, seed: int):
    cfg = read_local_config([cfg_path], glue_dir=glue_dir)
    cfg["tasks"] = sorted(set(cfg["tasks"]) | {task})
    spec = get_task(TaskConfig.from_config(cfg), task)
    base, tokenizer = load_pretrained(cfg["model"], num_labels=spec.num_labels, head=spec.head)
    base.to(device)
    teacher = copy.deepcopy(base).eval()  # the pretrained model as teacher: the same cost as a fine-tuned one
    train = spec.train_features(tokenizer, None, seed)
    dev = spec.dev_features(spec.dev_splits[0], tokenizer, cfg["eval"].get("limit"))
    return cfg, spec, base, teacher, tokenizer, train, [len(ids) for ids in dev["input_ids"]]


def profile_top(args, device: torch.device) -> None:
    """torch.profiler of ToP prune steps on SST-2, in the ``before`` and ``group+cache`` variants."""
    from torch.profiler import ProfilerActivity, profile

    cfg, spec, base, teacher, tokenizer, train, dev_lengths = load(args.config, args.glue_dir, "sst2", device, args.seed)
    phase = Phase(cfg, "sst2", "top", base, teacher, tokenizer, spec, train, dev_lengths, device, args.seed)
    for name in ("before", "group+cache"):
        case = phase.case(name, 12)
        case.run(2, device)
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])) as prof:
            seconds, examples = case.run(args.profile_steps, device)
        print(f"\n## {name}: {args.profile_steps} ToP prune steps, {examples} examples, {seconds:.2f} s ({examples / seconds:.1f} examples/s)\n")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps per variant (a smoke run)")
    parser.add_argument("--tasks", nargs="+", default=["sst2", "mrpc", "rte"])
    parser.add_argument("--phases", nargs="+", default=list(PHASES), choices=list(PHASES))
    parser.add_argument("--config", type=Path, default=ROOT / "config/benchmark.yaml")
    parser.add_argument("--glue-dir", type=Path, default=ROOT.parent / "shared/data/glue")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--amp",
        nargs="?",
        const="auto",
        choices=["auto", "bf16", "fp16"],
        help="add a variant at this precision (default auto: bf16 on CUDA, fp32 on the CPU; always on CUDA)",
    )
    parser.add_argument("--variants", nargs="+", help="measure only these variants (default: every one of each phase)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--profile", action="store_true", help="profile ToP prune steps on SST-2 instead")
    parser.add_argument("--profile-steps", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("top").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.profile:
        profile_top(args, device)
        return
    amp_precision = args.amp or "auto"
    amp = args.amp is not None or device.type == "cuda"
    if amp:
        resolve_precision(amp_precision, device)
    mode = MODES["quick" if args.quick else "full"]
    out = args.out or ROOT / "benchmarks/results" / ("train_throughput_quick.json" if args.quick else "train_throughput.json")
    records: list[dict[str, Any]] = []
    for task in args.tasks:
        cfg, spec, base, teacher, tokenizer, train, dev_lengths = load(args.config, args.glue_dir, task, device, args.seed)
        for name in args.phases:
            phase = Phase(cfg, task, name, base, teacher, tokenizer, spec, train, dev_lengths, device, args.seed)
            records.extend(measure(phase, variants_of(name, amp, args.variants), mode, args.seed, amp_precision))
            print(markdown([r for r in records if r["task"] == task and r["phase"] == name]), flush=True)
    payload = {
        "environment": environment(device),
        "mode": "quick" if args.quick else "full",
        "settings": mode,
        "config": str(args.config),
        "results": records,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(payload, indent=2))
    atomic_write_text(out.with_suffix(".md"), markdown(records))
    print(f"\n# Training throughput ({payload['mode']}; {payload['environment']['cpu_model']}, {payload['environment']['threads']} threads)\n")
    print(markdown(records))
    print(f"written {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
