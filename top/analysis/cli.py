"""The command line the analysis scripts of one reproduction seed share
(``benchmarks/dev_noise.py``, ``benchmarks/token_survival.py``): the configuration, the data, the
task and seed, the results folder and torch's threads, read and checked the same way; a run
named ``method/setting``, its folders and its recorded score."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import torch

from top.config import ConfigError, read_local_config
from top.report.outputs import RUN_DIR


def add_seed_arguments(parser: argparse.ArgumentParser, root: Path) -> None:
    """``--config``, ``--glue-dir``, ``--task``, ``--seed``, ``--results-root`` and ``--threads``
    (``root``: the repository, for the defaults)."""
    parser.add_argument(
        "--config", type=Path, nargs="+", default=[root / "config/reproduction.yaml"], help="the reproduction's configuration file(s)"
    )
    parser.add_argument("--glue-dir", type=Path, default=root.parent / "shared/data/glue")
    parser.add_argument("--task", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--results-root", type=Path, help="the task's results are <this>/<task> (default results/<first config's name>)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")


def read_seed_arguments(parser: argparse.ArgumentParser, root: Path) -> tuple[argparse.Namespace, dict[str, Any], Path]:
    """Parse the command line, set up logging and torch's threads, and read the configuration
    (an error names the file). Returns the arguments, the configuration and the task's results
    folder (``<results-root>/<task>``)."""
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cfg = read_local_config(args.config, glue_dir=args.glue_dir)
    except ConfigError as error:
        parser.error(f"--config: {error}")
    return args, cfg, (args.results_root or root / "results" / args.config[0].stem) / args.task


def parse_run(text: str) -> tuple[str, str]:
    """``method/setting`` -> the pair (an ``argparse`` type)."""
    parts = tuple(text.split("/"))
    if len(parts) != 2 or not all(parts):
        raise argparse.ArgumentTypeError(f"a run is method/setting, got {text!r}")
    return parts  # type: ignore[return-value]


def run_folder(results: Path, part: str, task: str, run: tuple[str, str], seed: int) -> Path:
    """The run's folder under ``part`` (``models``, ``eval``, ...) of the task's results."""
    return results / part / RUN_DIR.format(task=task, method=run[0], setting=run[1], seed=seed)


#: How far (0-1 scale) a pass's score may be from the run's recorded one: float rounding only. The
#: thread count reorders the sums (a run evaluated at two threads and scored again at one agrees
#: to about 1e-8), while a changed evaluation (other tokens kept, other batches) moves it by far more.
SCORE_TOLERANCE = 1e-6


def check_score(results: Path, task: str, run: tuple[str, str], seed: int, score: float) -> None:
    """Refuse a pass over the run that does not score what its evaluation recorded in its
    ``eval`` metrics file (within :data:`SCORE_TOLERANCE`; a run without a record passes)."""
    recorded = recorded_score(results, task, run, seed)
    if recorded is not None and abs(score - recorded) > SCORE_TOLERANCE:
        folder = run_folder(results, "models", task, run, seed)
        raise SystemExit(f"{folder}: this pass scores {score}, the run's recorded score is {recorded}; evaluation has changed")


def metrics_file(results: Path, task: str, run: tuple[str, str], seed: int) -> Path:
    """The run's ``eval`` metrics file (written by its evaluation)."""
    return run_folder(results, "eval", task, run, seed) / "metrics.json"


def recorded_score(results: Path, task: str, run: tuple[str, str], seed: int) -> float | None:
    """The run's score (0-1) in its ``eval`` metrics file, or None when it has none."""
    path = metrics_file(results, task, run, seed)
    return float(json.loads(path.read_text())["score"]) if path.is_file() else None
