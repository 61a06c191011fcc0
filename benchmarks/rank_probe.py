"""Ranking-distillation probe: does ToP's ranking loss teach a layer the teacher's final-layer
token order, alone and beside the task loss? (top/analysis/rank_probe.py)

    python benchmarks/rank_probe.py --config config/squad_benchmark.yaml --squad-dir ../shared/data/squad \\
        --teacher results/squad_ablation/squad/teachers/squad/seed42 \\
        --train-limit 600 --dev-limit 200 --out benchmarks/squad_ablation/rank_probe.json

Runs each ``--conditions`` entry from the same teacher on the same samples: ``rank`` (the
ranking loss alone), ``task+rank`` (the task loss plus the ranking loss at ``--rank-weight``)
and ``task`` (the task loss alone). Writes one JSON file with every condition's agreement
curve, the settings and where it ran, rewritten after each condition; a condition already in
the file with the same settings, task, teacher and samples is not run again (an interrupted
probe resumes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

import torch

from top.analysis.rank_probe import ProbeSettings, probe_ranking_distillation
from top.config import ConfigError, read_local_config
from top.files import atomic_write_text, json_text
from top.models import load_run
from top.report.reproduction import provenance
from top.tasks.base import get_task
from top.tasks.settings import TaskConfig

ROOT = Path(__file__).resolve().parents[1]
CONDITIONS = {"rank": (False, None), "task+rank": (True, None), "task": (True, 0.0)}
"""condition -> (train the task loss, ranking weight; None: --rank-weight)."""
log = logging.getLogger("rank_probe")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, nargs="+", default=[ROOT / "config/squad_benchmark.yaml"], help="the teacher's configuration file(s)")
    parser.add_argument("--squad-dir", type=Path, default=None, help="folder of the official SQuAD JSON files (data_source: local)")
    parser.add_argument("--glue-dir", type=Path, default=None, help="folder of the GLUE files (data_source: local)")
    parser.add_argument("--teacher", type=Path, required=True, help="the fine-tuned teacher's folder (results/.../teachers/{task}/seed{seed})")
    parser.add_argument("--task", default=None, help="the task (default: the configuration's first)")
    parser.add_argument("--train-limit", type=int, default=600, help="training features sampled (the task's training sample, seed 42)")
    parser.add_argument("--dev-limit", type=int, default=200, help="dev examples measured")
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    parser.add_argument("--rank-weight", type=float, default=1.0, help="the ranking loss's weight beside the task loss")
    defaults = ProbeSettings()
    parser.add_argument("--layer", type=int, default=defaults.layer)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cfg = read_local_config(args.config, glue_dir=args.glue_dir, squad_dir=args.squad_dir)
    except ConfigError as error:
        parser.error(f"--config: {error}")
    teacher, tokenizer, _ = load_run(args.teacher)
    task = get_task(TaskConfig.from_config(cfg), args.task or cfg["tasks"][0])
    train = task.train_features(tokenizer, args.train_limit, 42)
    dev = task.dev_features(task.dev_splits[0], tokenizer, args.dev_limit)
    collate = task.collate(tokenizer)
    header = {"task": task.name, "teacher": str(args.teacher), "train_features": len(train), "dev_features": len(dev)}
    runs = earlier_runs(args.out, header)
    for condition in args.conditions:
        with_task, weight = CONDITIONS[condition]
        settings = ProbeSettings(
            layer=args.layer,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            rank_weight=args.rank_weight if weight is None else weight,
            task_loss=with_task,
        )
        if runs.get(condition, {}).get("settings") == dataclasses.asdict(settings):
            log.info("%s: already in %s", condition, args.out)
            continue
        torch.manual_seed(0)  # dropout
        runs[condition] = {"settings": dataclasses.asdict(settings), "curve": probe_ranking_distillation(teacher, train, dev, collate, settings)}
        atomic_write_text(args.out, json_text({**header, "runs": runs, "provenance": provenance(args.config, root=ROOT)}, indent=2))
        log.info("%s: wrote %s", condition, args.out)


def earlier_runs(path: Path, header: dict) -> dict:
    """The conditions an earlier probe wrote to ``path`` with the same task, teacher and samples."""
    if not path.is_file():
        return {}
    earlier = json.loads(path.read_text())
    if any(earlier.get(key) != value for key, value in header.items()):
        log.info("%s: from another teacher or samples; its conditions are run again", path)
        return {}
    return dict(earlier.get("runs", {}))


if __name__ == "__main__":
    main()
