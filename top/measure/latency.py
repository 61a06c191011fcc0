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
reduction. To make pruning overhead visible, callers add the ideal runner
(:meth:`top.encoder.PrunableModel.forward_at_lengths`: the stock SDPA layers at the pruned
per-layer lengths, no scoring, no gather); the pruned model's scoring, selection and gathering
overhead is measured against it.

Beside time, :func:`measure_peak_memory` records each runner's peak resident memory and
:func:`environment_info` the CPU, its frequency governor and clock where readable.

Pinning follows a two-step protocol: :func:`top.measure.pinning.pin_process` (before torch is
imported) sets the affinity and the thread environment, and :func:`check_pinning` (after)
fixes ``torch.set_num_threads`` and refuses to go on if anything differs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime
import gc
import importlib.metadata
import logging
import os
import platform
import random
import resource
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil
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
        ``{"cpu_model": str, "cores": list[int], "threads": int, "logical_cpus": int | None,
        "physical_cores": int | None, "cpu_frequency": dict, "torch_version": str,
        "transformers_version": str, "python_version": str, "platform": str, "hostname": str,
        "date": str}``; ``cpu_model`` comes from ``/proc/cpuinfo``'s "model name" and falls
        back to ``platform.processor()`` (possibly ``""``) where that is missing; core counts
        from psutil; ``cpu_frequency`` from :func:`cpu_frequency` for the pinned cores; ``date``
        in UTC, ISO 8601.
    """
    return {
        "cpu_model": _cpu_model(),
        "cores": sorted(set(cores)),
        "threads": threads,
        "logical_cpus": psutil.cpu_count(logical=True),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpu_frequency": cpu_frequency(cores),
        "torch_version": torch.__version__,
        "transformers_version": importlib.metadata.version("transformers"),
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def cpu_frequency(cores: Sequence[int], sysfs: Path = Path("/sys/devices/system/cpu")) -> dict[str, Any]:
    """The frequency governor and clock of each pinned core, where the system shows them.

    Reads ``cpu<i>/cpufreq/scaling_governor``, ``scaling_cur_freq`` and ``scaling_max_freq``
    (kHz) under ``sysfs``; virtual machines often have no ``cpufreq`` at all, and then the
    per-core entries are None. psutil's view (``psutil.cpu_freq()``, MHz, often from
    ``/proc/cpuinfo``) is recorded beside it.

    Returns:
        ``{"governor": {core: str | None}, "cur_mhz": {core: float | None}, "max_mhz":
        {core: float | None}, "psutil_mhz": {"current", "min", "max"} | None}`` with the core
        ids as strings (JSON keys).
    """

    def read(core: int, name: str) -> str | None:
        try:
            return (sysfs / f"cpu{core}" / "cpufreq" / name).read_text().strip() or None
        except OSError:
            return None

    def mhz(text: str | None) -> float | None:
        try:
            return None if text is None else int(text) / 1000.0
        except ValueError:
            return None

    ids = sorted(set(cores))
    try:
        freq = psutil.cpu_freq()
    except (OSError, NotImplementedError, RuntimeError):
        freq = None
    return {
        "governor": {str(core): read(core, "scaling_governor") for core in ids},
        "cur_mhz": {str(core): mhz(read(core, "scaling_cur_freq")) for core in ids},
        "max_mhz": {str(core): mhz(read(core, "scaling_max_freq")) for core in ids},
        "psutil_mhz": None if freq is None else {"current": freq.current, "min": freq.min, "max": freq.max},
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
    keep_samples: bool = False,
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
        keep_samples: also return every timing, ``samples_ms`` (``[repeats][inputs]``), per
            runner (e.g. for the spread over rounds of a single input).

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
    if keep_samples:
        for name in names:
            stats[name]["samples_ms"] = (times_ns[name] / _NS_PER_MS).tolist()
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


# ---------------------------------------------------------------------------------------------
# memory


def process_memory() -> dict[str, int]:
    """This process's resident memory now and its peak so far, in bytes: ``rss_bytes``
    (psutil) and ``peak_rss_bytes`` (``getrusage``'s ``ru_maxrss``, kB on Linux)."""
    return {
        "rss_bytes": int(psutil.Process().memory_info().rss),
        "peak_rss_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
    }


def _status_kib(field: str, status: Path = Path("/proc/self/status")) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), or None."""
    try:
        for line in status.read_text().splitlines():
            key, _, value = line.partition(":")
            if key == field:
                return int(value.split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_peak_rss(clear_refs: Path = Path("/proc/self/clear_refs")) -> bool:
    """Reset the kernel's resident high-water mark (``VmHWM``) of this process; False where
    that is impossible (not Linux >= 4.0, or no permission)."""
    try:
        clear_refs.write_text("5")
    except OSError:
        return False
    return True


def _trim_heap() -> None:
    """Hand freed heap memory back to the system (glibc ``malloc_trim``), so that a runner's
    allocations show up as new resident pages; nothing where glibc is missing."""
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass


def measure_peak_memory(runners: Mapping[str, Callable[[Any], Any]], inputs: Sequence[Any]) -> dict[str, Any]:
    """Peak resident memory of each runner, one runner at a time, in this process.

    Per runner: collect garbage, return the freed heap to the system (glibc ``malloc_trim``),
    reset the kernel's resident high-water mark (``/proc/self/clear_refs``), call the runner
    once on every input under ``torch.inference_mode()``, read the high-water mark
    (``VmHWM``). ``peak_rss_bytes`` is then the whole process's peak while that runner ran
    (every loaded model included); ``rise_bytes``, its rise over the resident size just before,
    is the runner's transient working memory (activations, attention tiles). Memory an
    allocator keeps cached between calls does not show in the rise, so it is a lower bound.

    Where the high-water mark cannot be reset, per-runner peaks cannot be separated in one
    process: ``method`` is ``"process_peak_only"`` and only the process peak is given.

    Returns:
        ``{"method": "clear_refs" | "process_peak_only", "runners": {name: {"peak_rss_bytes",
        "rss_before_bytes", "rise_bytes"}} | {}, "process": process_memory()}``.
    """
    per_runner: dict[str, dict[str, int]] = {}
    method = "clear_refs"
    with torch.inference_mode():
        for name, runner in runners.items():
            gc.collect()
            _trim_heap()
            before = _status_kib("VmRSS")
            if before is None or not _reset_peak_rss():
                method, per_runner = "process_peak_only", {}
                break
            for example in inputs:
                runner(example)
            peak = _status_kib("VmHWM")
            if peak is None:
                method, per_runner = "process_peak_only", {}
                break
            per_runner[name] = {"peak_rss_bytes": peak * 1024, "rss_before_bytes": before * 1024, "rise_bytes": max(0, peak - before) * 1024}
    return {"method": method, "runners": per_runner, "process": process_memory()}


def parameter_bytes(model: torch.nn.Module) -> int:
    """Bytes of a model's parameters and buffers (each tensor counted once)."""
    seen, total = set(), 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()
    return total
