"""Latency at fixed shapes: the pruned path against the stock model and the ideal.

Random-weight BERT-base (12 layers, 768 hidden, 3072 feed-forward, 12 heads) and MiniLM-L6
(6 layers, 384 hidden, 1536 feed-forward, 12 heads) shapes (``BertConfig``, no download), batch
1, no padding, lengths 64, 128, 256 and 384, top-k schedules of 2x and 4x fewer FLOPs, 1 and 2
pinned threads. Per (model, length, threads) one process times, interleaved
(``top.measure.latency.measure_interleaved``; docs/design.md, "Latency protocol"):

* ``stock``: the plain Hugging Face forward with SDPA, as a user deploys it (the reference);
* ``harness``: the same model through this harness's encoder, all tokens;
* ``pruned_2x``, ``pruned_4x``: the encoder with top-k selectors, gather mode;
* ``ideal_2x``, ``ideal_4x``: the same SDPA layers at the pruned model's per-layer lengths, no
  scoring, no gather (``PrunableModel.forward_at_lengths``).

Each cell reports the milliseconds (median over rounds, and the IQR over rounds), pruned / ideal
(ideal ms / pruned ms: 1 = no pruning overhead), the speedup over the stock model, the analytic
FLOPs reduction (``top.measure.flops``) and each runner's peak resident memory.

Schedules: one parameter ``rho``, keep ratio ``1`` in the first ``start`` layers and
``rho ** (l - start + 1)`` in layer ``l >= start`` (kept tokens ``ceil(ratio * n)``, as top-k
keeps them). ``start`` is a sixth of the depth (BERT-base: layers 0-1 keep every token,
MiniLM: layer 0), less where keeping those layers whole would leave less than 1.5x the target as
the most any tail could reach (so 4x prunes from layer 1 in BERT-base, from layer 0 in MiniLM,
rather than keeping one token from the middle on); ``rho`` is the value on a fine grid whose
exact FLOPs reduction at that length is closest to the target.

Threads are pinned per subprocess (pinning must precede the torch import): the parent starts
``--worker`` children, one per thread count, and each writes every finished cell to the JSON
file at once (atomically), so an interrupted run resumes where it stopped; a cell already in the
file (same model, length, threads) is skipped unless ``--fresh``. The parent prints a Markdown
table and writes it beside the JSON.

    python benchmarks/latency_shapes.py                 # the full grid, about 5-10 minutes
    python benchmarks/latency_shapes.py --quick         # a smoke run (n = 64, 128; 3 rounds)
    python benchmarks/latency_shapes.py --threads 1 --models bert-base --lengths 128

Writes ``benchmarks/results/latency_shapes.json`` and ``.md`` (``--quick``:
``latency_shapes_quick.*``). Nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

# No torch (and nothing importing it) up here: a worker pins itself before torch starts.
from top.measure.pinning import parse_cores, pin_process

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
log = logging.getLogger("latency_shapes")

MODELS: dict[str, dict[str, int]] = {
    "bert-base": {"num_hidden_layers": 12, "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12},
    "minilm-l6": {"num_hidden_layers": 6, "hidden_size": 384, "intermediate_size": 1536, "num_attention_heads": 12},
}
LENGTHS = (64, 128, 256, 384)
QUICK_LENGTHS = (64, 128)
TARGETS = (2.0, 4.0)
THREADS = (1, 2)
GOALS = {"bert-base": 0.95, "minilm-l6": 0.90}  # pruned / ideal the encoder aims for


# ---------------------------------------------------------------------------------------------
# schedules (no torch)


def cascade(ratios: list[float], n: int) -> tuple[list[int], list[int]]:
    """Per-layer tokens entering and kept for top-k keep ratios at input length ``n``
    (``ceil(ratio * n)``, at least 1, never more than entered)."""
    kept, entering = [], n
    lengths_in = []
    for ratio in ratios:
        lengths_in.append(entering)
        entering = min(max(1, math.ceil(ratio * n)), entering)
        kept.append(entering)
    return lengths_in, kept


def schedule_ratios(rho: float, layers: int, start: int) -> list[float]:
    """The one-parameter family: 1 in the first ``start`` layers, then ``rho ** (l - start + 1)``."""
    return [1.0 if layer < start else rho ** (layer - start + 1) for layer in range(layers)]


def flops_reduction(config, ratios: list[float], n: int) -> float:
    """Dense / pruned FLOPs of one example of ``n`` tokens (top.measure.flops)."""
    from top.measure.flops import example_flops

    layers = config.num_hidden_layers
    lengths_in, kept = cascade(ratios, n)
    dense = example_flops(config, "classification", [[n] * layers], [[n] * layers])[0]
    return float(dense / example_flops(config, "classification", [lengths_in], [kept])[0])


def find_schedule(config, n: int, target: float) -> dict[str, Any]:
    """The schedule of the family whose FLOPs reduction at ``n`` is closest to ``target``."""
    layers = config.num_hidden_layers
    start = max(1, layers // 6)
    while start > 0 and flops_reduction(config, schedule_ratios(1e-9, layers, start), n) < 1.5 * target:
        start -= 1  # with this many full layers the target needs an all but empty tail
    grid = [i / 4000 for i in range(1, 4001)]
    rho = min(grid, key=lambda r: (abs(flops_reduction(config, schedule_ratios(r, layers, start), n) - target), -r))
    ratios = schedule_ratios(rho, layers, start)
    lengths_in, kept = cascade(ratios, n)
    return {
        "target": target,
        "start": start,
        "rho": rho,
        "keep_ratios": ratios,
        "lengths_in": lengths_in,
        "lengths_kept": kept,
        "flops_reduction": flops_reduction(config, ratios, n),
    }


# ---------------------------------------------------------------------------------------------
# the worker (pinned, imports torch)


def _iqr(samples: list[float]) -> float:
    import numpy as np

    q25, q75 = np.percentile(samples, [25, 75])
    return float(q75 - q25)


def measure_cell(name: str, n: int, threads: int, warmup: int, repeats: int, seed: int) -> dict[str, Any]:
    """Time every runner of one (model, length) interleaved; the process is already pinned."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from top.encoder import PrunableModel
    from top.measure.latency import measure_interleaved, measure_peak_memory, parameter_bytes
    from top.pruning.topk import TopK

    config = BertConfig(**MODELS[name], max_position_embeddings=512, num_labels=2, attn_implementation="sdpa")
    torch.manual_seed(seed)
    hf = BertForSequenceClassification(config).eval()
    generator = torch.Generator().manual_seed(seed + n)
    ids = torch.randint(1000, config.vocab_size, (1, n), generator=generator)
    ids[0, 0] = 101  # [CLS]
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    harness = PrunableModel(hf).eval()
    runners = {"stock": lambda _: hf(**inputs), "harness": lambda _: harness(**inputs, mode="gather", record=False)}
    schedules = {}
    for target in TARGETS:
        label = f"{target:g}x"
        schedule = find_schedule(config, n, target)
        pruned = PrunableModel(hf, TopK.inference_selectors({"keep_ratios": schedule["keep_ratios"]}, config)).eval()
        with torch.inference_mode():
            out = pruned(**inputs, mode="gather", record=False)
        if out.lengths_kept[0].tolist() != schedule["lengths_kept"]:
            raise RuntimeError(f"{name} n={n} {label}: the model kept {out.lengths_kept[0].tolist()}, the schedule says {schedule['lengths_kept']}")
        lengths = (schedule["lengths_in"], schedule["lengths_kept"])
        runners[f"pruned_{label}"] = lambda _, model=pruned: model(**inputs, mode="gather", record=False)
        runners[f"ideal_{label}"] = lambda _, model=pruned, lengths=lengths: model.forward_at_lengths(ids, inputs["token_type_ids"], *lengths)
        schedules[label] = schedule
    timings = measure_interleaved(runners, [0], warmup=warmup, repeats=repeats, reference="stock", seed=seed, progress=False, keep_samples=True)
    stats = {}
    for runner, values in timings["runners"].items():
        samples = [row[0] for row in values.pop("samples_ms")]
        stats[runner] = {"median_ms": values["median_ms"], "iqr_over_rounds_ms": _iqr(samples), "min_ms": min(samples), "samples_ms": samples}
    memory = measure_peak_memory(runners, [0])
    rows = []
    stock_ms = stats["stock"]["median_ms"]
    for label, schedule in schedules.items():
        pruned_ms, ideal_ms = stats[f"pruned_{label}"]["median_ms"], stats[f"ideal_{label}"]["median_ms"]
        rows.append(
            {
                "model": name,
                "n": n,
                "threads": threads,
                "target": label,
                "flops_reduction": schedule["flops_reduction"],
                "stock_ms": stock_ms,
                "harness_ms": stats["harness"]["median_ms"],
                "pruned_ms": pruned_ms,
                "ideal_ms": ideal_ms,
                "pruned_vs_ideal": ideal_ms / pruned_ms,
                "speedup": stock_ms / pruned_ms,
                "speedup_ideal": stock_ms / ideal_ms,
                "harness_vs_stock": stock_ms / stats["harness"]["median_ms"],
                "goal": GOALS[name],
            }
        )
    return {
        "model": name,
        "n": n,
        "threads": threads,
        "warmup": warmup,
        "repeats": repeats,
        "runners": stats,
        "schedules": schedules,
        "memory": {**memory, "parameter_bytes": parameter_bytes(hf)},
        "rows": rows,
    }


def run_worker(args: argparse.Namespace) -> None:
    """Pin this process (before torch starts), then measure and store each cell of the plan."""
    cores, (threads,) = parse_cores(args.cores), args.threads
    pin_process(cores, threads)
    from top.measure.latency import check_pinning, environment_info

    check_pinning(cores, threads)
    environment = environment_info(cores, threads)
    for cell in json.loads(args.plan):
        log.info("threads=%d %s n=%d", threads, cell["model"], cell["n"])
        result = measure_cell(cell["model"], cell["n"], threads, args.warmup, args.repeats, args.seed)
        result["environment"] = environment
        _store(Path(args.out), result)
        for row in result["rows"]:
            log.info(
                "  %s: pruned/ideal %.3f, speedup %.2fx (FLOPs %.2fx)", row["target"], row["pruned_vs_ideal"], row["speedup"], row["flops_reduction"]
            )


# ---------------------------------------------------------------------------------------------
# the file (shared by parent and workers)


def _load(path: Path) -> dict[str, Any]:
    if path.is_file():
        return json.loads(path.read_text())
    return {"benchmark": "latency_shapes", "cells": []}


def _store(path: Path, cell: dict[str, Any]) -> None:
    """Add (or replace) one cell in the JSON file, atomically."""
    from top.files import atomic_write_text

    data = _load(path)
    key = (cell["model"], cell["n"], cell["threads"])
    data["cells"] = [c for c in data["cells"] if (c["model"], c["n"], c["threads"]) != key] + [cell]
    data["cells"].sort(key=lambda c: (list(MODELS).index(c["model"]) if c["model"] in MODELS else 99, c["threads"], c["n"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=1))


def markdown(data: dict[str, Any]) -> str:
    """One line per (model, threads, length, target)."""
    lines = [
        "| model | threads | n | target | FLOPs red. | stock ms | harness ms | pruned ms | ideal ms | pruned / ideal | goal | speedup vs stock | ideal speedup | RSS rise MiB (stock / pruned / ideal) | process peak MiB |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]

    def mib(memory: dict[str, Any], runner: str) -> str:
        return f"{memory[runner]['rise_bytes'] / 2**20:.1f}" if runner in memory else "–"

    for cell in data["cells"]:
        memory = cell["memory"]["runners"]
        for row in cell["rows"]:
            label = row["target"]
            met = "" if row["pruned_vs_ideal"] >= row["goal"] else " (below)"
            lines.append(
                f"| {row['model']} | {row['threads']} | {row['n']} | {label} | {row['flops_reduction']:.2f}x | {row['stock_ms']:.1f} | "
                f"{row['harness_ms']:.1f} | {row['pruned_ms']:.1f} | {row['ideal_ms']:.1f} | {row['pruned_vs_ideal']:.3f}{met} | {row['goal']:.2f} | "
                f"{row['speedup']:.2f}x | {row['speedup_ideal']:.2f}x | {mib(memory, 'stock')} / {mib(memory, 'pruned_' + label)} / {mib(memory, 'ideal_' + label)} | "
                f"{cell['memory']['process']['peak_rss_bytes'] / 2**20:.0f} |"
            )
    environments = {json.dumps({k: c["environment"][k] for k in ("cpu_model", "threads", "cores")}) for c in data["cells"] if "environment" in c}
    notes = [
        "",
        "Batch 1, random weights, medians over interleaved rounds in one process per thread count; pruned / ideal = ideal ms / "
        "pruned ms (1 = no pruning overhead); speedups over the stock Hugging Face model with SDPA; RSS rise: how far the "
        "process's resident peak rose over its resident size while that runner ran alone once (its transient memory; a lower "
        "bound, since allocators keep memory cached; the JSON has each runner's peak); process peak: the whole process, "
        "every model of the cell loaded.",
    ]
    for text in sorted(environments):
        env = json.loads(text)
        notes.append(f"CPU: {env['cpu_model']}, {env['threads']} thread(s) on cores {env['cores']}.")
    return "\n".join(lines + notes) + "\n"


# ---------------------------------------------------------------------------------------------
# the parent


def _cores_for(threads: int, spec: str | None) -> str:
    available = parse_cores(spec) if spec else sorted(os.sched_getaffinity(0))
    if threads > len(available):
        raise SystemExit(f"{threads} threads need {threads} cores; only {available} are available")
    return ",".join(str(c) for c in available[:threads])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke run: n = 64, 128; 1 warm-up, 3 rounds; a separate output file")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--lengths", nargs="+", type=int, default=None)
    parser.add_argument("--threads", nargs="+", type=int, default=list(THREADS))
    parser.add_argument("--cores", default=None, help="cores to take the pinned ones from (first t for t threads); default: this process's affinity")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds (default 3; --quick 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 30; --quick 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/results/latency_shapes[_quick].json)")
    parser.add_argument("--fresh", action="store_true", help="measure every cell again, even those already in the file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.warmup is None:
        args.warmup = 1 if args.quick else 3
    if args.repeats is None:
        args.repeats = 3 if args.quick else 30
    if args.worker:
        run_worker(args)
        return
    out = args.out or RESULTS / ("latency_shapes_quick.json" if args.quick else "latency_shapes.json")
    lengths = args.lengths or list(QUICK_LENGTHS if args.quick else LENGTHS)
    done = set() if args.fresh else {(c["model"], c["n"], c["threads"]) for c in _load(out)["cells"]}
    for threads in args.threads:
        plan = [{"model": m, "n": n} for m in args.models for n in lengths if (m, n, threads) not in done]
        if not plan:
            log.info("threads=%d: every cell is already in %s", threads, out)
            continue
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            "--threads",
            str(threads),
            "--cores",
            _cores_for(threads, args.cores),
            "--warmup",
            str(args.warmup),
            "--repeats",
            str(args.repeats),
            "--seed",
            str(args.seed),
            "--out",
            str(out),
            "--plan",
            json.dumps(plan),
        ]
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        log.info("threads=%d: %d cell(s) in a pinned subprocess", threads, len(plan))
        subprocess.run(command, check=True, env=env)
    data = _load(out)
    data["settings"] = {"warmup": args.warmup, "repeats": args.repeats, "seed": args.seed, "quick": args.quick}
    from top.files import atomic_write_text

    atomic_write_text(out, json.dumps(data, indent=1))
    table = markdown(data)
    atomic_write_text(out.with_suffix(".md"), table)
    print(table)
    log.info("wrote %s and %s", out, out.with_suffix(".md"))


if __name__ == "__main__":
    main()
