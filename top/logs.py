"""Logging set-up for workflow jobs: everything (log records, progress bars, warnings) goes to
the rule's log file."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
