"""SQuAD token diagnostics of a trained run: where its pruning drops the answers.

Which gold-answer and question tokens the run's pruning drops before each layer, and its F1 and exact match on the questions whose answer survives and
on those whose answer does not (top/analysis/squad_tokens.py; docs/design.md, "SQuAD token
diagnostics").

    python benchmarks/squad_diagnostics.py --config config/squad_benchmark.yaml \\
        --squad-dir ../shared/data/squad \\
        --model results/squad_benchmark/models/squad/top/t50/seed42 \\
        --reference results/squad_benchmark/teachers/squad/seed42 \\
        --out results/squad_benchmark/diagnostics/squad_top_t50_seed42.json

``--limit N`` scores a sample of N dev questions, the evaluation's (default: the
configuration's ``eval.limit``, i.e. the whole split in the benchmark). ``--states`` chooses the
span-head inputs at dropped positions (default carry,zero,exclude: one pass over the split;
carry_attention and carry_layer, the reference's, one more pass each). ``--ranking-only`` runs
only the token-score pass (each layer's answer ranking and, with ``--reference``, its agreement
with the reference's last layer). Writes one JSON file.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from top.analysis.squad_tokens import DEFAULT_STATES, DROPPED_STATES, diagnose_run, write_diagnostics
from top.config import ConfigError, read_local_config
from top.report.reproduction import provenance

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("squad_diagnostics")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config",
        type=Path,
        nargs="+",
        default=[ROOT / "config/squad_benchmark.yaml"],
        help="the configuration file(s) the run was made with, merged in order",
    )
    parser.add_argument("--squad-dir", type=Path, default=None, help="folder of the official SQuAD JSON files (data_source: local)")
    parser.add_argument("--model", type=Path, required=True, help="the run's model folder (results/.../models/{task}/{method}/{setting}/seed{seed})")
    parser.add_argument("--reference", type=Path, default=None, help="a run scored on the same question groups (the teacher's folder)")
    parser.add_argument("--task", default=None, help="the SQuAD task (default: the one the run records)")
    parser.add_argument("--limit", type=int, default=None, help="dev questions (default: eval.limit)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: eval.batch_size")
    parser.add_argument("--states", default=",".join(DEFAULT_STATES), help=f"comma-separated, of {', '.join(DROPPED_STATES)}")
    parser.add_argument("--ranking-only", action="store_true", help="only the token scores' ranking and agreement (one pass per model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cfg = read_local_config(args.config, squad_dir=args.squad_dir)  # with the schema's defaults (qa, eval)
    except ConfigError as error:
        parser.error(f"--config: {error}")
    result = diagnose_run(
        cfg,
        args.model,
        reference_dir=args.reference,
        task=args.task,
        limit=args.limit,
        batch_size=args.batch_size,
        device=args.device,
        states=[state.strip() for state in args.states.split(",") if state.strip()],
        ranking_only=args.ranking_only,
    )
    result["provenance"] = provenance(args.config, root=ROOT)
    write_diagnostics(args.out, result)
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
