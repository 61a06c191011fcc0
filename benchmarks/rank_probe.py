"""Ranking-distillation probe: does ToP's ranking loss teach a layer the teacher's final-layer
token order, alone and beside the task loss? (top/analysis/rank_probe.py)

    python benchmarks/rank_probe.py --config config/squad_benchmark.yaml --squad-dir ../shared/data/squad \\
        --teacher results/squad_ablation/squad/teachers/squad/seed42 \\
        --train-limit 600 --dev-limit 200 --out benchmarks/squad_ablation/rank_probe.json

Runs each ``--conditions`` entry from the same teacher on the same samples: ``rank`` (the
ranking loss alone), ``task+rank`` (the task loss plus the ranking loss at ``--rank-weight``),
``task`` (the task loss alone), and ToP's training objective taken apart: ``distill`` (ToP's
logit distillation, which its pruning stage trains on instead of the task loss), then the same
while tokens are pruned on the schedule of the configuration's top-k setting ``--keep-setting``
(2x), keeping each layer's best-scored tokens (``distill+topk``) or as many at random
(``distill+random``: what ToP's rank bins, dropped anywhere in the ranking, amount to). Writes
one JSON file with every condition's agreement curve, the settings and where it ran, rewritten
after each condition; a condition already in the file with the same settings, task, teacher and
samples is not run again (an interrupted probe resumes).
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
RANK_WEIGHT, SCHEDULE = "--rank-weight", "--keep-setting"
CONDITIONS: dict[str, dict] = {
    "rank": {"task_loss": False, "rank_weight": RANK_WEIGHT},
    "task+rank": {"task_loss": True, "rank_weight": RANK_WEIGHT},
    "task": {"task_loss": True, "rank_weight": 0.0},
    "distill": {"distill_weight": 1.0, "rank_weight": 0.0},
    "distill+topk": {"distill_weight": 1.0, "rank_weight": 0.0, "keep_ratios": SCHEDULE, "drop": "scores"},
    "distill+random": {"distill_weight": 1.0, "rank_weight": 0.0, "keep_ratios": SCHEDULE, "drop": "random"},
}
"""condition -> its :class:`ProbeSettings` fields (RANK_WEIGHT, SCHEDULE: those options' values)."""
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
    parser.add_argument("--keep-setting", default="keep2x", help="the configuration's top-k setting whose keep_ratios the pruned conditions train on")
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
    options = {RANK_WEIGHT: args.rank_weight}
    if any(CONDITIONS[condition].get("keep_ratios") == SCHEDULE for condition in args.conditions):
        options[SCHEDULE] = keep_ratios(cfg, args.keep_setting, parser)
    for condition in args.conditions:
        fields = {key: options[value] if value in (RANK_WEIGHT, SCHEDULE) else value for key, value in CONDITIONS[condition].items()}
        settings = ProbeSettings(layer=args.layer, epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate, **fields)
        if same_settings(runs.get(condition, {}).get("settings"), settings):
            log.info("%s: already in %s", condition, args.out)
            continue
        torch.manual_seed(0)  # dropout
        runs[condition] = {"settings": dataclasses.asdict(settings), "curve": probe_ranking_distillation(teacher, train, dev, collate, settings)}
        atomic_write_text(args.out, json_text({**header, "runs": runs, "provenance": provenance(args.config, root=ROOT)}, indent=2))
        log.info("%s: wrote %s", condition, args.out)


def keep_ratios(cfg: dict, setting: str, parser: argparse.ArgumentParser) -> list[float]:
    """The keep ratios of the configuration's top-k ``setting`` (a parser error if it has none)."""
    settings = ((cfg.get("methods") or {}).get("topk") or {}).get("settings") or {}
    if "keep_ratios" not in (settings.get(setting) or {}):
        parser.error(f"--keep-setting {setting}: not a top-k setting of the configuration (top-k settings: {', '.join(settings) or 'none'})")
    return [float(ratio) for ratio in settings[setting]["keep_ratios"]]


def same_settings(recorded: dict | None, settings: ProbeSettings) -> bool:
    """Whether a condition recorded with ``recorded`` ran with ``settings`` (a field the record
    predates counts at its default)."""
    if recorded is None:
        return False
    current = json.loads(json.dumps(dataclasses.asdict(settings)))
    defaults = json.loads(json.dumps(dataclasses.asdict(ProbeSettings())))
    return all(recorded.get(key, defaults[key]) == value for key, value in current.items())


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
