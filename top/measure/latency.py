"""Latency measurement: pinning checks, environment record and interleaved timing.

Implements docs/design.md, "Latency protocol".

Why ``time.perf_counter_ns`` and interleaving rather than ``torch.utils.benchmark.Timer``:
``Timer`` times one statement in isolation, repeating it back to back. On a shared machine
the background load, CPU frequency and cache state drift over seconds to minutes, so timing
the dense model for a minute and then the pruned model for a minute folds that drift into the
speedup. :func:`measure_interleaved` instead calls every runner (dense, pruned, ...) on the
same input one after another, in an order shuffled per (round, input) so that no runner
always goes first (and so always meets the cold caches or benefits from the warm ones). Each
call is timed with the monotonic, nanosecond-resolution ``time.perf_counter_ns``; garbage
collection is disabled during the timed rounds, as ``timeit`` does. Drift then hits all
runners alike and cancels in the speedup, the ratio of medians. Absolute milliseconds are
still only comparable within one run.

The honest limit: at batch size 1 on a CPU, short sequences are bound by reading the weights
from memory, not by FLOPs, so a FLOPs reduction does not translate one-to-one into a latency
reduction. To make pruning overhead visible, callers should add a runner that feeds a dense
model the already-shortened per-layer lengths; its speedup is the ceiling that the pruned
model's selection and gathering overhead is measured against.

Pinning follows a two-step protocol: :func:`top.measure.pinning.pin_process` (before torch is
imported) sets the affinity and the thread environment, and :func:`check_pinning` (after)
fixes ``torch.set_num_threads`` and refuses to go on if anything differs.
"""

from __future__ import annotations

import gc
import importlib.metadata
import logging
import os
import platform
import random
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

logger = logging.getLogger(__name__)

_NS_PER_MS = 1e6


class PinningError(RuntimeError):
    """The process is not pinned as requested; no latency may be reported."""


def check_pinning(cores: Sequence[int], threads: int) -> None:
    """Fix torch's intra-op threads and verify the whole pinning is as requested.

    Calls ``torch.set_num_threads(threads)``, then checks that ``os.sched_getaffinity(0)``
    equals ``set(cores)``, ``torch.get_num_threads()`` equals ``threads`` and
    ``os.environ["OMP_NUM_THREADS"]`` equals ``str(threads)`` (docs/design.md, "Latency
    protocol": refuse to report if the affinity differs).

    Args:
        cores: the core ids the process should be pinned to.
        threads: the intra-op thread count.

    Raises:
        PinningError: listing every check that failed, with expected and actual values.
    """
    torch.set_num_threads(threads)
    expected_cores = set(cores)
    affinity = os.sched_getaffinity(0)
    problems = []
    if affinity != expected_cores:
        problems.append(f"CPU affinity is {sorted(affinity)}, expected {sorted(expected_cores)}")
    torch_threads = torch.get_num_threads()
    if torch_threads != threads:
        problems.append(f"torch.get_num_threads() is {torch_threads}, expected {threads}")
    omp = os.environ.get("OMP_NUM_THREADS")
    if omp != str(threads):
        problems.append(f"OMP_NUM_THREADS is {omp!r}, expected {str(threads)!r}")
    if problems:
        raise PinningError(
            "process is not pinned as requested, so no latency will be reported: "
            + "; ".join(problems)
            + " (call top.measure.pinning.pin_process before importing torch, or launch under taskset)"
        )
    logger.info("pinning verified: cores %s, %d thread(s)", sorted(expected_cores), threads)


def environment_info(cores: Sequence[int], threads: int) -> dict[str, Any]:
    """What to record with every latency result (docs/design.md, "Latency protocol").

    Args:
        cores: the pinned core ids.
        threads: the intra-op thread count.

    Returns:
        ``{"cpu_model": str, "cores": list[int], "threads": int, "torch_version": str,
        "transformers_version": str, "python_version": str, "platform": str,
        "hostname": str}``; ``cpu_model`` comes from ``/proc/cpuinfo``'s "model name"
        and falls back to ``platform.processor()`` (possibly ``""``) where that is missing.
    """
    return {
        "cpu_model": _cpu_model(),
        "cores": sorted(set(cores)),
        "threads": threads,
        "torch_version": torch.__version__,
        "transformers_version": importlib.metadata.version("transformers"),
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
    }


def _cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The first "model name" in ``cpuinfo``, else ``platform.processor()``."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "model name" and value.strip():
            return value.strip()
    return platform.processor()


def measure_interleaved(
    runners: Mapping[str, Callable[[Any], Any]],
    inputs: Sequence[Any],
    *,
    warmup: int,
    repeats: int,
    reference: str,
    seed: int = 0,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Time several runners interleaved on the same inputs (docs/design.md, "Latency protocol").

    Under ``torch.inference_mode()``:

    1. warm-up (untimed): ``warmup`` passes over ``inputs``, calling every runner on each;
    2. ``repeats`` timed rounds: for every input, every runner is called once, in an order
       shuffled per (round, input) by ``random.Random(seed)``; each call is timed with
       ``time.perf_counter_ns``.

    Per runner and input, the median over rounds is that input's latency; the summary
    statistics are then taken over inputs.

    Args:
        runners: name -> callable taking one element of ``inputs`` (e.g. a batch-1 dict of
            ``[1, L]`` tensors) and running the model; its return value is discarded.
        inputs: the fixed sample of inputs, the same for every runner (non-empty).
        warmup: untimed passes over ``inputs`` (>= 0).
        repeats: timed rounds (>= 1).
        reference: the runner that speedups are relative to (e.g. ``"dense"``).
        seed: seeds the call order.
        progress: show a tqdm bar over rounds on stderr: ``True`` always, ``False`` never,
            ``None`` only when stderr is a terminal.

    Returns:
        ``{"runners": {name: stats}, "reference": str, "warmup": int, "repeats": int,
        "seed": int}`` where ``stats`` holds ``median_ms``, ``q25_ms``, ``q75_ms``,
        ``iqr_ms`` (``q75_ms - q25_ms``), ``p95_ms``, ``mean_ms`` over the per-input
        latencies, ``n_inputs``, ``repeats``, ``speedup`` (``median_ms`` of the reference
        divided by this runner's; exactly 1.0 for the reference, NaN if this runner's
        median is 0 ns) and ``per_input_ms`` (list, one per input, in input order).

    Raises:
        ValueError: ``runners`` or ``inputs`` empty, ``reference`` not among ``runners``,
            ``repeats < 1`` or ``warmup < 0``.
    """
    _validate_measure_args(runners, inputs, warmup=warmup, repeats=repeats, reference=reference)
    names = list(runners)
    rng = random.Random(seed)
    times_ns = {name: np.zeros((repeats, len(inputs)), dtype=np.int64) for name in names}
    logger.info(
        "measuring %d runner(s) on %d input(s): %d warm-up pass(es), %d round(s)",
        len(names),
        len(inputs),
        warmup,
        repeats,
    )

    with torch.inference_mode():
        for _ in range(warmup):
            for example in inputs:
                for name in names:
                    runners[name](example)

        gc.collect()
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            rounds = tqdm(
                range(repeats),
                desc="latency rounds",
                unit="round",
                disable=None if progress is None else not progress,
            )
            for round_index in rounds:
                for input_index, example in enumerate(inputs):
                    order = names.copy()
                    rng.shuffle(order)
                    for name in order:
                        runner = runners[name]
                        start = time.perf_counter_ns()
                        runner(example)
                        times_ns[name][round_index, input_index] = time.perf_counter_ns() - start
        finally:
            if gc_was_enabled:
                gc.enable()

    stats = {name: _summarise(times_ns[name]) for name in names}
    reference_median = stats[reference]["median_ms"]
    for name, runner_stats in stats.items():
        runner_stats["speedup"] = _speedup(reference_median, runner_stats["median_ms"], name, reference)
        logger.info(
            "%s: median %.3f ms (IQR %.3f ms, p95 %.3f ms), speedup %.2fx",
            name,
            runner_stats["median_ms"],
            runner_stats["iqr_ms"],
            runner_stats["p95_ms"],
            runner_stats["speedup"],
        )
    return {
        "runners": stats,
        "reference": reference,
        "warmup": warmup,
        "repeats": repeats,
        "seed": seed,
    }


def _validate_measure_args(
    runners: Mapping[str, Callable[[Any], Any]],
    inputs: Sequence[Any],
    *,
    warmup: int,
    repeats: int,
    reference: str,
) -> None:
    """Raise ``ValueError`` for arguments :func:`measure_interleaved` cannot use."""
    if not runners:
        raise ValueError("runners must not be empty")
    if reference not in runners:
        raise ValueError(f"reference {reference!r} is not among the runners {sorted(runners)}")
    if len(inputs) == 0:
        raise ValueError("inputs must not be empty")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")


def _summarise(times_ns: np.ndarray) -> dict[str, Any]:
    """Statistics for one runner from its ``[repeats, n_inputs]`` int64 nanosecond timings.

    The median over rounds gives one latency per input; the statistics are over inputs.
    """
    per_input_ms = np.median(times_ns, axis=0) / _NS_PER_MS
    q25, median, q75, p95 = np.percentile(per_input_ms, [25, 50, 75, 95])
    return {
        "median_ms": float(median),
        "q25_ms": float(q25),
        "q75_ms": float(q75),
        "iqr_ms": float(q75 - q25),
        "p95_ms": float(p95),
        "mean_ms": float(per_input_ms.mean()),
        "n_inputs": int(times_ns.shape[1]),
        "repeats": int(times_ns.shape[0]),
        "per_input_ms": per_input_ms.tolist(),
    }


def _speedup(reference_median_ms: float, median_ms: float, name: str, reference: str) -> float:
    """``reference_median_ms / median_ms``; exactly 1.0 for the reference, NaN for a 0 median."""
    if name == reference:
        return 1.0
    if median_ms <= 0:
        logger.warning("runner %r has a median of 0 ns (below timer resolution); speedup is NaN", name)
        return float("nan")
    return reference_median_ms / median_ms
