"""Real-data benchmark: every method on all-MiniLM-L6-v2, SST-2 and MRPC.

Runs the workflow on ``config/benchmark.yaml`` (the same rules, teacher, FLOPs formula and
latency protocol as every other run), then prints and saves a summary: per task and method
setting, the dev metric next to the dense teacher's, the FLOPs reduction (for ToP also the
target and how far the achieved reduction is from it), and the batch-1 latency speedups over
the stock dense model (SDPA), measured interleaved, with the ideal speedup (the same SDPA
layers at the pruned lengths).

    python benchmarks/real_data.py --glue-dir ../shared/data/glue [--cores 2]
    python benchmarks/real_data.py --config config/squad_benchmark.yaml --squad-dir ../shared/data/squad

Writes ``summary.json`` and ``summary.md`` in the configuration's ``results_dir``
(``results/benchmark``, ``results/squad_benchmark``), and the committed copy
``benchmarks/results/real_data_<results_dir name>.json``: the rows with the configuration's
SHA-256, the overrides, the machine, the versions and when it was summarised.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from top.files import atomic_write_text
from top.report.reproduction import provenance

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("benchmark")


def run_workflow(config: Path, glue_dir: Path, squad_dir: Path, cores: int, overrides: list[str]) -> None:
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--cores",
        str(cores),
        "--configfile",
        str(config),
        "--config",
        f"glue_dir={glue_dir}",
        f"squad_dir={squad_dir}",
        *overrides,
        "--rerun-incomplete",
    ]
    log.info("running %s", " ".join(command))
    subprocess.run(command, cwd=ROOT, check=True)


def summarise(results_dir: Path) -> pd.DataFrame:
    frame = pd.read_csv(results_dir / "tables/results.csv")
    teacher = frame[frame["method"] == "dense"].set_index("task")["score"]
    frame["dense_score"] = frame["task"].map(teacher)
    frame["score_delta"] = frame["score"] - frame["dense_score"]
    frame["achieved_sparsity"] = 1.0 - 1.0 / frame["flops_reduction"]
    return frame


def markdown(frame: pd.DataFrame) -> str:
    lines = [
        "| task | method | setting | dev metric | dense | Δ | FLOPs reduction | ToP target (error) | latency speedup | ideal speedup |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in frame.itertuples():
        target = "" if pd.isna(r.target_flops_reduction) else f"{r.target_flops_reduction:.2f}x ({r.target_error_pct:+.1f}%)"
        lines.append(
            f"| {r.task} | {r.method} | {r.setting} | {r.metric} {r.score:.2f} | {r.dense_score:.2f} | {r.score_delta:+.2f} | "
            f"{r.flops_reduction:.2f}x | {target} | {r.speedup:.2f}x | {r.speedup_ideal:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--glue-dir", type=Path, default=ROOT.parent / "shared/data/glue")
    parser.add_argument("--squad-dir", type=Path, default=ROOT.parent / "shared/data/squad")
    parser.add_argument(
        "--config",
        type=Path,
        default=ROOT / "config/benchmark.yaml",
        help="config/benchmark.yaml (GLUE) or config/squad_benchmark.yaml (SQuAD)",
    )
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra --config entry for Snakemake, merged into the configuration (e.g. 'latency={cores: \"1\"}' to pin the latency job to core 1)",
    )
    parser.add_argument("--skip-run", action="store_true", help="only summarise existing results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not args.skip_run:
        run_workflow(args.config, args.glue_dir.resolve(), args.squad_dir.resolve(), args.cores, args.overrides)
    results_dir = ROOT / yaml.safe_load(args.config.read_text())["results_dir"]
    frame = summarise(results_dir)
    table = markdown(frame)
    print(table)
    atomic_write_text(results_dir / "summary.md", table)
    atomic_write_text(results_dir / "summary.json", frame.to_json(orient="records", indent=2))
    log.info("wrote %s and %s", results_dir / "summary.json", results_dir / "summary.md")
    committed = ROOT / "benchmarks/results" / f"real_data_{results_dir.name}.json"
    record = {**provenance(args.config, args.overrides, root=ROOT), "rows": json.loads(frame.to_json(orient="records"))}
    atomic_write_text(committed, json.dumps(record, indent=2) + "\n")
    log.info("wrote %s", committed)


if __name__ == "__main__":
    main()
