"""Pin the measuring process to fixed cores and thread counts before torch starts.

docs/design.md, "Latency protocol": threads are fixed and pinned. The CPU affinity and
``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` must be set *before* torch is imported, because
torch sizes its intra-op thread pool from them when it starts. This module therefore never
imports torch (directly or through ``top``'s other modules), so a latency script can call
:func:`pin_process` as its first action::

    from top.measure.pinning import parse_cores, pin_process
    cores = parse_cores("0-3")
    pin_process(cores, threads=4)
    import torch  # now starts with the pinned pool
    from top.measure.latency import check_pinning
    check_pinning(cores, threads=4)  # refuses to go on if anything differs

:func:`top.measure.latency.check_pinning` is the matching check after torch is imported.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

logger = logging.getLogger(__name__)

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
"""Environment variables that size the OpenMP / MKL thread pools torch uses on CPU."""


def parse_cores(spec: str) -> list[int]:
    """Parse a core list in ``taskset -c`` style into sorted, unique core ids.

    Args:
        spec: comma-separated items, each a core id (``"3"``) or an inclusive range
            (``"4-7"``); whitespace around items is ignored. Examples: ``"0"``, ``"0-3"``,
            ``"0,2,4-5"``.

    Returns:
        Sorted list of unique non-negative core ids, e.g. ``"4-5,0,2,2"`` -> ``[0, 2, 4, 5]``.

    Raises:
        ValueError: if the spec is empty, an item is empty or not an integer or range, an id
            is negative, or a range runs backwards (``"5-3"``).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty core spec {spec!r}; expected e.g. '0', '0-3' or '0,2,4-5'")
    cores: set[int] = set()
    for item in spec.split(","):
        item = item.strip()
        if not item:
            raise ValueError(f"empty item in core spec {spec!r}")
        low_text, dash, high_text = item.partition("-")
        try:
            low = _parse_core_id(low_text)
            high = _parse_core_id(high_text) if dash else low
        except ValueError as error:
            raise ValueError(f"bad item {item!r} in core spec {spec!r}: {error}") from None
        if high < low:
            raise ValueError(f"backwards range {item!r} in core spec {spec!r}")
        cores.update(range(low, high + 1))
    return sorted(cores)


def _parse_core_id(text: str) -> int:
    """One non-negative core id from ``text`` (digits only; no sign)."""
    text = text.strip()
    if not text.isdigit():
        raise ValueError(f"{text!r} is not a non-negative integer core id")
    return int(text)


def pin_process(cores: Sequence[int], threads: int) -> None:
    """Pin this process to ``cores`` and fix the torch thread pools to ``threads``.

    Sets ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` to ``threads`` in ``os.environ`` and
    the CPU affinity of this process to ``cores`` (docs/design.md, "Latency protocol"). Must run
    before torch is imported; call :func:`top.measure.latency.check_pinning` after importing it.

    Arguments are validated before anything is changed, so a failed call leaves the process
    as it was.

    Args:
        cores: core ids to run on (non-empty; each must be in this process's current
            affinity, ``os.sched_getaffinity(0)``).
        threads: intra-op threads, ``1 <= threads <= len(set(cores))``.

    Raises:
        ValueError: bad ``cores`` or ``threads``, or cores outside the current affinity
            (the message names them).
        RuntimeError: torch is already imported, so its thread pool may already be sized
            and pinning now would not be reliable.
    """
    core_set = _validate_cores(cores)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
    if threads > len(core_set):
        raise ValueError(f"threads={threads} exceeds the {len(core_set)} pinned core(s) {sorted(core_set)}; threads would compete for cores")
    available = os.sched_getaffinity(0)
    unavailable = sorted(core_set - available)
    if unavailable:
        raise ValueError(f"cores {unavailable} are not available to this process (its affinity is {sorted(available)})")
    if "torch" in sys.modules:
        raise RuntimeError(
            "pin_process must be called before torch is imported: torch is already in "
            "sys.modules, so its thread pool may already be sized from the old environment. "
            "Call pin_process at the very start of the script (or launch it under taskset)."
        )
    for name in THREAD_ENV_VARS:
        os.environ[name] = str(threads)
    os.sched_setaffinity(0, core_set)
    logger.info("pinned to cores %s with %d thread(s)", sorted(core_set), threads)


def _validate_cores(cores: Sequence[int]) -> set[int]:
    """``cores`` as a set after checking it is a non-empty collection of ids >= 0."""
    if isinstance(cores, (str, bytes)):
        raise ValueError(f"cores must be a sequence of ints, got {cores!r}; use parse_cores")
    core_set = set()
    for core in cores:
        if isinstance(core, bool) or not isinstance(core, int) or core < 0:
            raise ValueError(f"core ids must be non-negative integers, got {core!r}")
        core_set.add(core)
    if not core_set:
        raise ValueError("cores must not be empty")
    return core_set
