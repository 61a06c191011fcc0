"""Writing outputs so that no reader ever sees half a file (write to a temporary name beside
the target, then rename it: atomic within one file system), strict JSON, generated blocks of a
hand-written file (:func:`replace_block`), and the log files of workflow jobs
(:func:`log_to_file`, :func:`reported_errors`)."""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` and rename it onto ``path`` when the block ends.

    The temporary name keeps the suffix (``results.tmp.csv``), so writers that choose the format
    from it (matplotlib, ``np.savez``) still work. If the block raises, the temporary file is
    removed and ``path`` is left as it was. Parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp{path.suffix}")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def block_markers(name: str) -> tuple[str, str]:
    """The HTML comments (invisible in rendered Markdown) that open and close block ``name``."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def has_block(path: str | Path, name: str) -> bool:
    """Whether ``path`` exists and holds block ``name``'s opening marker."""
    path = Path(path)
    return path.is_file() and block_markers(name)[0] in path.read_text()


def replace_block(path: str | Path, name: str, body: str) -> None:
    """Replace what stands between block ``name``'s markers (:func:`block_markers`, each on a
    line of its own) in ``path`` with ``body``, leaving the rest of the file as it is; written
    through :func:`atomic_path`. Raises ValueError naming the file when a marker is missing,
    repeated or out of order."""
    path = Path(path)
    text = path.read_text()
    start, end = block_markers(name)
    lines = text.splitlines(keepends=True)
    opens = [i for i, line in enumerate(lines) if line.strip() == start]
    closes = [i for i, line in enumerate(lines) if line.strip() == end]
    if len(opens) != 1 or len(closes) != 1 or opens[0] > closes[0]:
        raise ValueError(
            f"{path}: block {name!r} needs one line {start!r} followed by one line {end!r} "
            f"(found {len(opens)} and {len(closes)}{', in the wrong order' if opens and closes and opens[0] > closes[0] else ''})"
        )
    inner = body if body.endswith("\n") or not body else body + "\n"
    atomic_write_text(path, "".join(lines[: opens[0] + 1]) + inner + "".join(lines[closes[0] :]))


def finite_or_none(payload: Any) -> Any:
    """``payload`` with every NaN or infinite float (Python or NumPy) replaced by ``None``, so
    that it can be written as strict JSON (``null``): dictionaries, lists and tuples are walked,
    everything else is returned as it is."""
    if isinstance(payload, Mapping):
        return {key: finite_or_none(value) for key, value in payload.items()}
    if isinstance(payload, (list, tuple)):
        return [finite_or_none(value) for value in payload]
    if isinstance(payload, numbers.Real) and not isinstance(payload, numbers.Integral):
        value = float(payload)
        return value if math.isfinite(value) else None
    return payload


def json_text(payload: Any, **options: Any) -> str:
    """Strict JSON of ``payload``: non-finite floats become ``null`` (:func:`finite_or_none`),
    and ``allow_nan=False`` makes sure no ``NaN`` or ``Infinity`` token is ever written."""
    return json.dumps(finite_or_none(payload), allow_nan=False, **options)


def log_to_file(path: str | Path, level: int = logging.INFO) -> None:
    """Send logging and stderr (where tqdm and warnings write) to ``path``, line-buffered."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stream = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives as long as the job
    sys.stderr = stream
    logging.basicConfig(
        level=level,
        stream=stream,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )


@contextmanager
def reported_errors(job: str, log_path: str | Path | None = None) -> Iterator[None]:
    """Show why a job failed on the console, not only in its log.

    Snakemake prints a failed script job as ``Error in rule X: message: None`` with the path of
    its log, where :func:`log_to_file` sent the traceback. This block writes the reason, one
    line, to the console's stderr (``sys.__stderr__``): the message alone for the library's
    known errors (``ValueError`` and its subclasses ``DataError``, ``ConfigError``; ``OSError``),
    the exception's type and message for anything else. The exception is then re-raised, so the
    traceback still goes to the log and the job still fails. No torch import: the latency script
    uses it before pinning.
    """
    try:
        yield
    except Exception as error:
        reason = str(error) if isinstance(error, (ValueError, OSError)) else f"{type(error).__name__}: {error}"
        where = f" (traceback in {log_path})" if log_path else ""
        console = sys.__stderr__ or sys.stderr
        print(f"\n{job} failed{where}:\n  {reason}\n", file=console, flush=True)
        raise


def job_name(smk) -> str:
    """``rule NAME (wildcard=value, ...)`` of the ``snakemake`` object a script receives."""
    wildcards = ", ".join(f"{key}={value}" for key, value in smk.wildcards.items())
    return f"rule {smk.rule}" + (f" ({wildcards})" if wildcards else "")
