"""Teacher probe: fine-tune one task's teacher at several learning rates (and epoch counts)
through the workflow's own ``teacher`` rule, and compare the dev scores with the configuration's
expected teacher level (:mod:`top.report.teacher_probe`).

    python benchmarks/teacher_probe.py --task cola --learning-rates 2e-5 5e-5 1e-4
    python benchmarks/teacher_probe.py --task rte --learning-rates 2e-5 5e-5 --epochs 15 30 --jobs 2
    python benchmarks/teacher_probe.py --task cola --table-only     # the table again, from the probe file

Each probe is the reproduction's teacher (``config/reproduction.yaml``, the task's seed) with
``task_settings.<task>.teacher.learning_rate`` and ``epochs`` replaced (a task of ``tasks`` or of
``not_reproducible``, which a probe may re-check); it trains under
``results/teacher_probe/<task>/lr<rate>_ep<epochs>/`` and is skipped when it has finished there,
so an interrupted probe resumes. ``--jobs`` probes train side by side, each on ``--threads``
threads. The dev score of every epoch goes to ``benchmarks/results/teacher_probe_<task>.json``
(each probe with its seed, the configuration's hash, the machine and the versions; probes
recorded there before are kept unless the same seed, rate and epochs ran again) and a Markdown
table beside it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import logging
import os
import subprocess
import sys
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from top.config import expected_teacher, read_config_files, teacher_settings
from top.files import atomic_write_text, json_text
from top.report.reproduction import file_sha256, machine_info
from top.report.teacher_probe import TOLERANCE, merge_probes, probe_config, probe_frame, probe_markdown, probe_name, probe_record, teacher_folder
from top.tasks import glue

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("teacher_probe")
LOG_TAIL = 30  # lines of a failed probe's Snakemake log repeated in the error


def run_probe(args: argparse.Namespace, cfg: dict, learning_rate: float, epochs: int) -> Path:
    """Train one probe's teacher (unless it has finished) and return its folder."""
    results = Path(args.results_root) / args.task / probe_name(learning_rate, epochs)
    folder = teacher_folder(results, args.task, args.seed)
    if (folder / "pruning.json").is_file():
        log.info("%s: finished before, kept", folder)
        return folder
    probe_file = ROOT / results / "probe.yaml"
    atomic_write_text(probe_file, yaml.safe_dump(probe_config(cfg, args.task, learning_rate, epochs), sort_keys=False))
    command = [sys.executable, "-m", "snakemake", str(folder), "--cores", str(args.threads), "--set-threads", f"teacher={args.threads}"]
    # --nolock: the probes run side by side in one working directory, and Snakemake releases its
    # lock by removing the whole .snakemake/locks folder, so two probes that end together race
    # (one fails with FileNotFoundError) and one probe's end unlocks the other. Each probe writes
    # only its own folder, named above, so Snakemake's lock guards nothing between them.
    command += ["--nolock", "--rerun-incomplete", "--configfile", str(probe_file)]
    command += ["--config", f"glue_dir={args.glue_dir}", f"tasks=[{args.task}]", f"results_dir={results}", f"seeds=[{args.seed}]"]
    log.info("running %s", " ".join(command))
    with (ROOT / results / "snakemake.log").open("w") as out:
        code = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT).returncode
    if code:
        tail = "".join((ROOT / results / "snakemake.log").read_text().splitlines(keepends=True)[-LOG_TAIL:])
        raise SystemExit(
            f"probe {probe_name(learning_rate, epochs)} of {args.task} failed (exit status {code}); see {results}/snakemake.log:\n{tail}"
        )
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, help="a GLUE task of the configuration")
    parser.add_argument("--learning-rates", type=float, nargs="+", help="required unless --table-only")
    parser.add_argument("--epochs", type=int, nargs="+", help="epoch counts to probe (default: the task's configured teacher epochs)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--config", type=Path, nargs="+", default=[ROOT / "config/reproduction.yaml"])
    parser.add_argument("--glue-dir", type=Path, default=ROOT.parent / "shared/data/glue")
    parser.add_argument("--jobs", type=int, default=2, help="probes that train side by side")
    parser.add_argument("--threads", type=int, default=1, help="threads per probe")
    parser.add_argument(
        "--tolerance", type=float, default=TOLERANCE, help=f"points below the expected level that still count as reached (default {TOLERANCE:g})"
    )
    parser.add_argument("--results-root", default="results/teacher_probe")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    parser.add_argument("--table-only", action="store_true", help="train nothing: rebuild the table from the probe file in --out")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.config = [path.resolve() for path in args.config]
    args.glue_dir = args.glue_dir.resolve()
    cfg = read_config_files(args.config)
    known = [*cfg.get("tasks", []), *(cfg.get("not_reproducible") or {})]
    if args.task not in known:
        parser.error(f"{args.task}: not a task of {' + '.join(p.name for p in args.config)} ({', '.join(known)})")
    expected = expected_teacher(cfg, args.task)
    stem = args.out / f"teacher_probe_{args.task}"
    earlier = json.loads(stem.with_suffix(".json").read_text())["probes"] if stem.with_suffix(".json").is_file() else []
    if args.table_only:
        if not earlier:
            parser.error(f"--table-only: no probe file {stem.with_suffix('.json')}")
        write_probes(stem, args.task, expected, earlier, args.tolerance)
        return
    if not args.learning_rates:
        parser.error("--learning-rates is required (unless --table-only)")
    glue.check_local_file(args.task, "train", glue.local_path(args.task, "train", args.glue_dir))  # before any training
    epochs = args.epochs or [int(teacher_settings(cfg, args.task)["epochs"])]
    probes = list(itertools.product(args.learning_rates, epochs))
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        folders = list(pool.map(lambda probe: run_probe(args, cfg, *probe), probes))
    provenance = {
        "seed": args.seed,
        "config": [os.path.relpath(path, ROOT) for path in args.config],
        "config_sha256": [file_sha256(path) for path in args.config],
        "threads": args.threads,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
    }
    records = merge_probes(earlier, [{**probe_record(folder), **provenance} for folder in folders])
    write_probes(stem, args.task, expected, records, args.tolerance)


def write_probes(stem: Path, task: str, expected: Mapping[str, Any] | None, records: list[dict], tolerance: float) -> None:
    """``<stem>.json`` (the records, the expected level) and ``<stem>.md`` (the table)."""
    table = probe_markdown(probe_frame(records, expected, scale=100.0, tolerance=tolerance), tolerance)
    payload = {"task": task, "expected_teacher": expected, "probes": records}
    atomic_write_text(stem.with_suffix(".json"), json_text(payload, indent=2) + "\n")
    atomic_write_text(stem.with_suffix(".md"), f"Teacher probes of {task} (benchmarks/teacher_probe.py)\n\n{table}")
    log.info("wrote %s.{json,md}\n%s", stem, table)


if __name__ == "__main__":
    main()
