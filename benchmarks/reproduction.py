"""The five-task reproduction: every method on all-MiniLM-L6-v2 over CoLA, SST-2, MRPC, STS-B
and RTE (``config/reproduction.yaml``), one task at a time, with results that persist.

    python benchmarks/reproduction.py --estimate                 # budgets and estimated hours per task
    python benchmarks/reproduction.py --dry-run all              # what the workflow would run (snakemake -n)
    python benchmarks/reproduction.py --task mrpc [--cores 2]    # run, summarise and render one task
    python benchmarks/reproduction.py --task mrpc --seeds 42     # a first pass: one seed's runs only
    python benchmarks/reproduction.py --status all               # recorded, finished and missing runs per task
    python benchmarks/reproduction.py --record mrpc              # record finished runs (after an interrupted run)
    python benchmarks/reproduction.py --task all                 # every task not summarised yet
    python benchmarks/reproduction.py --summarise mrpc           # summarise the recorded runs again
    python benchmarks/reproduction.py --render                   # docs/reproduction.md, its figure, README's block

Each task runs the workflow with ``tasks=[<task>]`` and ``results_dir=results/reproduction/<task>``,
on the runs that the task's ledger ``benchmarks/reproduction/runs/<task>.csv`` does not hold yet
(:mod:`top.report.ledger`: a row per finished run, with the hash of its settings and of its
teacher's weights; commit it, so that runs accumulate across machines whose ``results/`` is gone).
When the workflow stops, finished or not, its finished runs are recorded. Once every run is
recorded, ``benchmarks/reproduction/<task>.csv`` and ``<task>.json`` are written from the ledger
(:mod:`top.report.reproduction`), and the report ``docs/reproduction.md`` with
``docs/figures/reproduction.png`` is rebuilt from those files alone
(:mod:`top.report.reproduction_report`), with the comparison and the figure in the README's
``<!-- reproduction:start -->`` block. With ``--seeds`` only those seeds run. A seed whose
recorded runs were made on another CPU model is refused before anything trains (its teacher
would come out different here), unless ``--other-cpu``. A task that already has its summary is
skipped unless ``--force`` (which summarises it again; the workflow itself reruns only what is
missing or out of date, and resumes interrupted training from its last epoch).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from top.budget import Throughput, budget_table, estimate_task, task_budgets, teacher_budget
from top.config import expected_teacher, is_ablation, offline_model_config, read_config_files, read_local_config, runs, task_seeds, validate_config
from top.files import has_block
from top.report.ledger import ledger_path, ledger_summary_rows, read_ledger, record_runs, run_sha256, run_states, seed_cpus, seeds_from_other_cpus
from top.report.outputs import RUN_DIR, TEACHER_DIR
from top.report.reproduction import (
    Provisional,
    is_summarised,
    machine_info,
    progress_frame,
    run_outputs,
    summary_frame,
    summary_meta,
    write_summary,
)
from top.report.reproduction_report import render
from top.tasks import glue, is_qa_task, squad

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "config/reproduction.yaml"
DEFAULT_GLUE_DIR = ROOT.parent / "shared/data/glue"
DEFAULT_SQUAD_DIR = ROOT.parent / "shared/data/squad"
log = logging.getLogger("reproduction")

THROUGHPUT_FILES = {
    "fp32": (
        ROOT / "benchmarks/results/train_throughput.json",
        ROOT / "benchmarks/results/train_throughput_stsb.json",
    ),
    "bf16": (ROOT / "benchmarks/results/train_throughput_bf16.json",),
}
"""The committed training-throughput runs, by the training precision they measured; a task
measured in more than one file takes the first file's rates."""
# CoLA was not measured: single short sentences, so it takes SST-2's rates.
STAND_INS = {"cola": "sst2"}
#: The benchmark's (phase, variant) whose rate each Throughput field takes (a ``+amp`` suffix dropped).
RATE_FIELDS = {("teacher", "group"): "dense", ("top", "group+cache"): "top_prune"}


def measured_throughput(precision: str = "fp32", paths: Sequence[Path] | None = None) -> dict[str, Throughput]:
    """Training examples/s per task from the committed training-throughput benchmarks
    (``benchmarks/train_throughput.py``) at ``precision``: the teacher's length-grouped fine-tune
    step, and ToP's pruning step with grouping and the cached teacher. Each run records its
    threads; the committed runs used one per job. A listed file that is missing is an error
    (the estimate would otherwise fall back to another task's rates without a word)."""
    table: dict[str, Throughput] = {}
    for path in paths if paths is not None else THROUGHPUT_FILES[precision]:
        if not path.exists():
            raise FileNotFoundError(f"training-throughput benchmark {path} is missing: run benchmarks/train_throughput.py")
        data = json.loads(path.read_text())
        threads = data["environment"].get("threads")
        rates: dict[str, dict[str, float]] = {}
        for row in data["results"]:
            field = RATE_FIELDS.get((row["phase"], row["variant"].removesuffix("+amp")))
            if field and row.get("precision", "fp32") == precision:
                rates.setdefault(row["task"], {})[field] = row["examples_per_s"]
        source = f"measured, {path.name} ({threads} thread(s))"
        for task, rate in rates.items():
            if len(rate) == 2 and task not in table:
                table[task] = Throughput(source=source, **rate)
    for task, stand_in in STAND_INS.items():
        if task not in table and stand_in in table:
            table[task] = dataclasses.replace(table[stand_in], source=f"{stand_in}'s (not measured)")
    return table


OVERHEAD_S_PER_RUN = 120.0
"""A guess at each run's evaluation (every epoch of its last stage and once more), FLOPs count
and latency measurement (100 dev examples, 5 repeats, four runners)."""


def load_config(paths: list[Path], glue_dir: Path, squad_dir: Path | None = None) -> dict:
    """The configuration as the workflow sees it: the files merged, the data folders set, the
    schema's defaults filled in, validated."""
    cfg = read_local_config(paths, glue_dir=glue_dir, squad_dir=squad_dir)
    validate_config(cfg)
    return cfg


def train_rows(task: str, args: argparse.Namespace) -> int:
    """Rows of ``task``'s training split (SQuAD: questions), read and checked as the loader reads it."""
    if is_qa_task(task):
        return squad.check_local_file(task, "train", squad.local_path(task, "train", args.squad_dir))
    return glue.check_local_file(task, "train", glue.local_path(task, "train", args.glue_dir))


def data_dir_override(task: str, args: argparse.Namespace, relative: bool = False) -> str:
    """``squad_dir=...`` for a QA task, else ``glue_dir=...`` (relative to the repository for the
    record, absolute for the workflow)."""
    key, folder = ("squad_dir", args.squad_dir) if is_qa_task(task) else ("glue_dir", args.glue_dir)
    return f"{key}={os.path.relpath(folder, ROOT) if relative else folder}"


def overrides(task: str, args: argparse.Namespace) -> list[str]:
    return [data_dir_override(task, args, relative=True), f"tasks=[{task}]", f"results_dir={results_dir(task, args)}"]


def results_dir(task: str, args: argparse.Namespace) -> str:
    return str(Path(args.results_root) / task)


def run_workflow(
    task: str, args: argparse.Namespace, dry_run: bool, runs: list[tuple[str, str, int]], first: list[tuple[str, str, int]] = ()
) -> None:
    """Snakemake on ``runs`` of ``task`` (their metrics, FLOPs and latency files) with
    ``--cores``, every job at ``--threads`` threads (the profile's set-threads give each job every
    core, so that jobs would run one at a time) except the teacher's fine-tune, which nothing runs
    beside, at ``--teacher-threads``; only ``--seeds`` if given. The runs in ``first`` (the
    methods' curves, :func:`curve_runs`) are scheduled before the others (``--prioritize``), so
    that a day's work ends with whole curves rather than half of them and the ablations."""
    threads = [f"teacher={args.teacher_threads}"] + [f"{rule}={args.threads}" for rule in ("train", "evaluate")]
    command = [sys.executable, "-m", "snakemake", "--cores", str(args.cores), "--set-threads", *threads]
    command += ["--configfile", *map(str, args.config), "--config"]
    command += [data_dir_override(task, args), f"tasks=[{task}]", f"results_dir={results_dir(task, args)}"]
    if args.seeds:
        command.append(f"seeds=[{','.join(str(seed) for seed in args.seeds)}]")
    command.append("--rerun-incomplete")
    command += [str(path) for run in runs for path in run_outputs(results_dir(task, args), task, *run)]
    if first and len(first) < len(runs):  # after the targets: the option takes every name up to the next option
        command += ["--prioritize", *(str(path) for run in first for path in run_outputs(results_dir(task, args), task, *run))]
    if dry_run:
        command.append("-n")
    log.info("running %s", " ".join(command))
    code = subprocess.run(command, cwd=ROOT).returncode
    if code:
        raise SystemExit(f"the workflow for {task} failed (exit status {code}); job logs: {results_dir(task, args)}/logs/")


def chosen_runs(parser: argparse.ArgumentParser, cfg: dict, names: list[str] | None):
    """``--methods``: a test of a run ``(method, setting, seed)``: every run without names, else the
    dense row and the runs of each named method (``topk``) or method setting (``top/s75``).
    Exits with a usage error naming what is not configured."""
    if not names:
        return lambda run: True
    methods, settings = set(), set()
    for name in names:
        method, _, setting = name.partition("/")
        if method not in cfg["methods"]:
            parser.error(f"--methods: {method} not among the configured methods ({', '.join(cfg['methods'])})")
        if setting and setting not in cfg["methods"][method]["settings"]:
            parser.error(f"--methods: {name}: {method} has no setting {setting!r} ({', '.join(cfg['methods'][method]['settings'])})")
        if setting:
            settings.add((method, setting))
        else:
            methods.add(method)
    return lambda run: run[0] == "dense" or run[0] in methods or (run[0], run[1]) in settings


def curve_runs(cfg: dict, runs: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """The runs of ``runs`` on the methods' curves: every one but the ablations (``ablations``)."""
    return [run for run in runs if not is_ablation(cfg.get("ablations"), run[0], run[1])]


def trained(task: str, args: argparse.Namespace, method: str, setting: str, seed: int) -> bool:
    """Whether the run's model folder (the dense row: its teacher) is in the task's results."""
    folder = f"models/{RUN_DIR}" if method != "dense" else TEACHER_DIR
    return (ROOT / results_dir(task, args) / folder.format(task=task, method=method, setting=setting, seed=seed)).is_dir()


def expected_runs(cfg: dict, task: str) -> list[tuple[str, str, int]]:
    return [(m, s, seed) for t, m, s, seed in runs(cfg) if t == task]


def check_seeds(cfg: dict, tasks: list[str], seeds: list[int]) -> None:
    """``--seeds`` must be seeds of every chosen task, which must take the top-level ``seeds``
    (the only ones a command-line override can narrow)."""
    for task in tasks:
        if (cfg.get("task_settings") or {}).get(task, {}).get("seeds"):
            raise SystemExit(f"--seeds: {task} has its own seeds (task_settings.{task}.seeds); run it without --seeds")
        unknown = sorted(set(seeds) - set(task_seeds(cfg, task)))
        if unknown:
            raise SystemExit(f"--seeds: {unknown} not among {task}'s seeds {task_seeds(cfg, task)}")


def check_cpu(tasks: dict[str, list[tuple[str, str, int]]], args: argparse.Namespace) -> None:
    """Refuse, before anything trains, to run a seed whose recorded runs were made on another CPU
    model (``tasks``: task -> the runs to do), unless ``--other-cpu``: the seed's teacher,
    fine-tuned again here, would not be bit-identical, and every recorded run of the seed would
    be redone."""
    if args.other_cpu:
        return
    cpu = machine_info()["cpu_model"]
    clashes = []
    for task, todo in tasks.items():
        ledger = read_ledger(args.out, task)
        for seed, models in seeds_from_other_cpus(ledger, sorted({run[2] for run in todo}), cpu).items():
            clashes.append(f"  {task} seed {seed}: {int((ledger['seed'].astype(int) == seed).sum())} recorded run(s) made on {', '.join(models)}")
    if clashes:
        raise SystemExit(
            f"this machine's CPU is {cpu}; these seeds were recorded on another:\n" + "\n".join(clashes) + "\n"
            "A teacher fine-tuned again on another CPU model is not bit-identical, so running such a seed here redoes its "
            "recorded runs. Leave it out (--seeds), or pass --other-cpu to redo them on this machine."
        )


@dataclasses.dataclass
class TaskRuns:
    """A task's runs under the current configuration, and their state in the run ledger."""

    train_rows: int
    steps: dict[tuple[str, str], int]
    """(method, setting) -> optimiser steps over all stages (dense: the teacher's fine-tune)"""
    hashes: dict[tuple[str, str, int], str]
    """run -> :func:`top.report.ledger.run_sha256`"""
    states: dict[tuple[str, str, int], str]
    """run -> recorded / stale settings / stale teacher / missing"""

    @property
    def pending(self) -> list[tuple[str, str, int]]:
        return [run for run, state in self.states.items() if state != "recorded"]


def task_runs(task: str, cfg: dict, args: argparse.Namespace) -> TaskRuns:
    """The task's runs, their steps and hashes, and their state in the ledger. A QA task trains
    on context windows, which only tokenising counts, so its steps are left unknown."""
    rows = train_rows(task, args)
    model_config = offline_model_config(cfg["model"])
    steps = {}
    if not is_qa_task(task):
        steps = {(b.method, b.setting): b.total_steps for b in task_budgets(cfg, task, rows, model_config)}
        for setting in cfg["methods"]["dense"]["settings"]:
            steps[("dense", setting)] = teacher_budget(cfg, task, rows).total_steps
    expected = expected_runs(cfg, task)
    hashes = {run: run_sha256(cfg, task, *run, train_rows=rows) for run in expected}
    return TaskRuns(rows, steps, hashes, run_states(read_ledger(args.out, task), expected, hashes))


def status(task: str, cfg: dict, args: argparse.Namespace) -> str:
    runs = task_runs(task, cfg, args)
    frame = progress_frame(ROOT / results_dir(task, args), task, list(runs.states), runs.states)
    recorded, finished, total = int(frame["recorded"].sum()), int(frame["finished"].sum()), int(frame["expected"].sum())
    summary = "summarised" if is_summarised(args.out, task) else "not summarised"
    lines = [
        f"{task}: {recorded} of {total} runs recorded in {os.path.relpath(ledger_path(args.out, task), ROOT)}, "
        f"{finished} more finished in {results_dir(task, args)} (--record {task} records them), {summary}"
    ]
    lines += [frame.to_string(index=False)]
    return "\n".join(lines)


def record(task: str, cfg: dict, args: argparse.Namespace) -> TaskRuns:
    """Record the task's finished runs in its ledger; the task's runs as they are then."""
    runs = task_runs(task, cfg, args)
    record_runs(ROOT / results_dir(task, args), task, args.out, list(runs.states), runs.hashes, runs.steps, machine_info())
    return task_runs(task, cfg, args)


def summarise(task: str, cfg: dict, args: argparse.Namespace, runs: TaskRuns) -> None:
    """Write the task's summary from its ledger, every run recorded."""
    try:
        rows = ledger_summary_rows(read_ledger(args.out, task), runs.states)
    except ValueError as error:
        raise SystemExit(f"{task}: {error} (run: python benchmarks/reproduction.py --task {task})") from None
    frame = summary_frame(rows, task, runs.steps, list(runs.states))
    machines = sorted({f"{cpu}, torch {torch}" for cpu, torch in zip(rows["cpu_model"], rows["torch_version"])})
    meta = summary_meta(
        task,
        args.config,
        overrides(task, args),
        train_rows=runs.train_rows,
        expected_teacher=expected_teacher(cfg, task),
        machine=machine_info(),
        runs_csv=os.path.relpath(ledger_path(args.out, task), ROOT),
        root=ROOT,
    )
    meta |= {"run_dates": [str(rows["date"].min()), str(rows["date"].max())], "run_machines": machines, "ablations": cfg.get("ablations") or {}}
    write_summary(args.out, task, frame, meta)


def provisional(cfg: dict, args: argparse.Namespace) -> dict[str, Provisional]:
    """The recorded runs of every task with a ledger but no summary, for the report."""
    parts = {}
    for task in cfg["tasks"]:
        if is_summarised(args.out, task) or not ledger_path(args.out, task).is_file():
            continue
        runs = task_runs(task, cfg, args)
        recorded = {run: state for run, state in runs.states.items() if state == "recorded"}
        if recorded:
            ledger = read_ledger(args.out, task)
            frame = summary_frame(ledger_summary_rows(ledger, recorded), task, runs.steps, list(recorded))
            cpus = seed_cpus(ledger, recorded)
            parts[task] = Provisional(
                frame, len(runs.states), expected_teacher(cfg, task), cfg.get("ablations") or {}, cpus, len(task_seeds(cfg, task))
            )
    return parts


def render_report(cfg: dict, args: argparse.Namespace) -> None:
    render(
        args.out,
        args.report,
        args.figure,
        tasks=cfg["tasks"],
        provisional=provisional(cfg, args),
        not_reproducible=cfg.get("not_reproducible"),
        command=render_command(args),
        precision=report_precision(cfg),
        readme=args.readme,
    )


def render_command(args: argparse.Namespace) -> str:
    """The ``--render`` command that builds this report again: the configuration files, data
    folders and output paths where they are not the defaults (paths relative to the repository)."""

    def shown(path: Path) -> str:
        path = Path(path).resolve()
        return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else os.path.relpath(path, ROOT)

    parts = ["python benchmarks/reproduction.py --render"]
    if args.config != [DEFAULT_CONFIG.resolve()]:
        parts.append("--config " + " ".join(shown(path) for path in args.config))
    for option, value, default in (
        ("--glue-dir", args.glue_dir, DEFAULT_GLUE_DIR),
        ("--squad-dir", args.squad_dir, DEFAULT_SQUAD_DIR),
        ("--out", args.out, ROOT / "benchmarks" / args.name),
        ("--report", args.report, ROOT / "docs" / f"{args.name}.md"),
        ("--figure", args.figure, ROOT / "docs/figures" / f"{args.name}.png"),
    ):
        if Path(value).resolve() != Path(default).resolve():
            parts.append(f"{option} {shown(value)}")
    if args.results_root != f"results/{args.name}":
        parts.append(f"--results-root {args.results_root}")
    return " ".join(parts)


def estimate(cfg: dict, args: argparse.Namespace) -> str:
    model_config = offline_model_config(cfg["model"])
    budgets, lines = [], []
    precision = training_precision(cfg)
    throughput = measured_throughput(precision)
    lines.append(
        "| task | train rows | seeds | runs per seed | steps per method run | throughput (ex/s: fine-tune, ToP prune) | hours per seed | hours |"
    )
    lines.append("|---|---:|---:|---:|---:|---|---:|---:|")
    total = 0.0
    for task in cfg["tasks"]:
        if task not in throughput:
            lines.append(f"| {task} | | | | | no training throughput measured | | |")
            continue
        rows = train_rows(task, args)
        task_budget = task_budgets(cfg, task, rows, model_config)
        budgets += [teacher_budget(cfg, task, rows), *task_budget]
        rate = throughput[task]
        est = estimate_task(cfg, task, rows, model_config, rate, OVERHEAD_S_PER_RUN)
        total += est.total_h
        steps = sorted({b.total_steps for b in task_budget})
        lines.append(
            f"| {task} | {rows} | {est.seeds} | {est.runs_per_seed} | {'/'.join(map(str, steps))} | "
            f"{rate.dense:.1f}, {rate.top_prune:.1f} ({rate.source}) | {est.per_seed_h:.1f} | {est.total_h:.1f} |"
        )
    lines.append(f"| all | | | | | | | {total:.1f} |")
    lines.append(
        f"\nTraining precision {precision}. Hours of one job after another on one thread; with --cores {args.cores} and "
        f"--threads 1, {args.cores} jobs train side by side (latency jobs run alone): about {total / args.cores:.0f} h."
    )
    return budget_table(budgets) + "\n" + "\n".join(lines) + "\n"


def cpu_precision(block: dict | None) -> str:
    """The precision a ``teacher`` or ``train`` block trains at on the CPU (``auto`` is fp32 there)."""
    precision = (block or {}).get("precision", "auto")
    return "fp32" if precision == "auto" else precision


def report_precision(cfg: dict) -> dict[str, str]:
    """What trains at which precision on the CPU, for the report's header."""
    return {"teachers": cpu_precision(cfg.get("teacher")), "students": cpu_precision(cfg.get("train"))}


def training_precision(cfg: dict) -> str:
    """The precision the configuration trains the methods at on the CPU."""
    return cpu_precision(cfg["train"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--task", nargs="+", metavar="TASK", help="run, summarise and render these tasks ('all': every task)")
    action.add_argument("--dry-run", nargs="+", metavar="TASK", help="plan these tasks' workflow (snakemake -n)")
    action.add_argument("--summarise", nargs="+", metavar="TASK", help="summarise these tasks' recorded runs")
    action.add_argument("--record", nargs="+", metavar="TASK", help="record these tasks' finished runs in their ledgers")
    action.add_argument("--render", action="store_true", help="build docs/reproduction.md, its figure and README's block from the summaries")
    action.add_argument("--estimate", action="store_true", help="print every run's optimiser steps and the estimated hours per task")
    action.add_argument("--status", nargs="+", metavar="TASK", help="recorded, finished and missing runs of these tasks")
    parser.add_argument(
        "--config",
        type=Path,
        nargs="+",
        default=[DEFAULT_CONFIG],
        help="configuration file(s), merged in order (e.g. config/reproduction_squad.yaml config/reproduction_squad_protect.yaml)",
    )
    parser.add_argument("--glue-dir", type=Path, default=DEFAULT_GLUE_DIR)
    parser.add_argument("--squad-dir", type=Path, default=DEFAULT_SQUAD_DIR, help="the SQuAD files (a configuration with squad)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="threads per job (default 1: --cores jobs run side by side, each on one thread)")
    parser.add_argument(
        "--teacher-threads",
        type=int,
        default=2,
        help="threads of the teacher's fine-tune (default 2). Its weights depend on the thread count and are bit-identical "
        "for the same count on the same CPU model, so keep it the same on every machine: the ledger's rows of a seed stay "
        "valid only while its teacher comes out identical",
    )
    parser.add_argument(
        "--trained-only",
        action="store_true",
        help="only runs whose training has finished: evaluate, count and time them, and start no new training "
        "(before stopping for the day, so that what trained gets recorded)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", help="run only these seeds (a first pass); the task is summarised once all have run")
    parser.add_argument(
        "--methods",
        nargs="+",
        help="run only these methods' runs (a method, or method/setting for one setting's), and the dense row (a first pass, or a "
        "side experiment); the task is summarised once all have run",
    )
    # Defaults named after the first configuration file (<name>: reproduction, reproduction_squad), so that
    # each family of runs keeps its own ledgers, summaries and report, and an overlay shares its base's.
    parser.add_argument("--results-root", help="each task's results_dir is <this>/<task> (default results/<name>)")
    parser.add_argument("--out", type=Path, help="where the task summaries and run ledgers (runs/<task>.csv) go (default benchmarks/<name>)")
    parser.add_argument("--report", type=Path, help="the report (default docs/<name>.md)")
    parser.add_argument("--figure", type=Path, help="the report's figure (default docs/figures/<name>.png)")
    parser.add_argument(
        "--readme",
        type=Path,
        help="the file whose block named after the report (<!-- <report name>:start/end -->) gets the comparison and the "
        "figure (default README.md, for a report in docs/ whose block it holds)",
    )
    parser.add_argument("--force", action="store_true", help="summarise tasks again that already have a summary")
    parser.add_argument(
        "--other-cpu",
        action="store_true",
        help="run seeds whose recorded runs were made on another CPU model (their teacher will differ here, so those runs are redone)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.teacher_threads > args.cores:
        # Snakemake would cap the teacher at --cores threads, and its weights would differ
        parser.error(f"--teacher-threads {args.teacher_threads} is more than --cores {args.cores}: the teacher would run on {args.cores}")
    args.glue_dir, args.squad_dir = args.glue_dir.resolve(), args.squad_dir.resolve()
    args.config = [path.resolve() for path in args.config]
    args.name = name = args.config[0].stem
    args.results_root = args.results_root or f"results/{name}"
    args.out = args.out or ROOT / "benchmarks" / name
    args.report = args.report or ROOT / "docs" / f"{name}.md"
    args.figure = args.figure or ROOT / "docs/figures" / f"{name}.png"
    report_in_docs = Path(args.report).resolve().parent == (ROOT / "docs").resolve()
    if args.readme is None and report_in_docs and has_block(ROOT / "README.md", Path(args.report).stem):
        args.readme = ROOT / "README.md"  # the repository's own report: its README shows the comparison
    raw = read_config_files(args.config)
    tasks = raw["tasks"]
    if args.render and not any(ledger_path(args.out, task).is_file() for task in tasks):
        # from the summaries alone: neither data nor model needed
        render(
            args.out,
            args.report,
            args.figure,
            tasks=tasks,
            not_reproducible=raw.get("not_reproducible"),
            command=render_command(args),
            precision=report_precision(raw),
            readme=args.readme,
        )
        return
    cfg = load_config(args.config, args.glue_dir, args.squad_dir)
    if args.render:  # the ledgers' runs are checked against the configuration, which reads the data
        render_report(cfg, args)
        return

    def chosen(names: list[str]) -> list[str]:
        tasks = list(cfg["tasks"]) if names == ["all"] else names
        unknown = [t for t in tasks if t not in cfg["tasks"]]
        if unknown:
            parser.error(f"{', '.join(unknown)}: not a task of {' + '.join(p.name for p in args.config)} ({', '.join(cfg['tasks'])})")
        return tasks

    if args.estimate:
        print(estimate(cfg, args))
        return
    if args.status:
        for task in chosen(args.status):
            print(status(task, cfg, args))
        return
    if args.record:
        for task in chosen(args.record):
            record(task, cfg, args)
        render_report(cfg, args)
        return
    if args.seeds:
        check_seeds(cfg, chosen(args.task or args.dry_run or []), args.seeds)

    wanted = chosen_runs(parser, cfg, args.methods)

    def to_run(task: str, runs: TaskRuns) -> list[tuple[str, str, int]]:
        todo = [run for run in runs.pending if (not args.seeds or run[2] in args.seeds) and wanted(run)]
        return [run for run in todo if trained(task, args, *run)] if args.trained_only else todo

    if args.dry_run:
        for task in chosen(args.dry_run):
            todo = to_run(task, task_runs(task, cfg, args))
            if todo:
                run_workflow(task, args, dry_run=True, runs=todo, first=curve_runs(cfg, todo))
            else:
                log.info("%s: nothing to run (every run is recorded%s)", task, ", or none has trained" if args.trained_only else "")
        return
    tasks = chosen(args.summarise or args.task)
    # each task's runs, read once: a task's workflow changes only its own ledger
    runs_of = {task: task_runs(task, cfg, args) for task in tasks if args.force or not is_summarised(args.out, task)}
    if args.task and not args.trained_only:
        check_cpu({task: to_run(task, runs) for task, runs in runs_of.items()}, args)
    for task in tasks:
        if task not in runs_of:
            log.info("%s: already summarised in %s (--force to summarise again)", task, args.out)
            continue
        runs = runs_of[task]
        if args.task and to_run(task, runs):
            try:
                todo = to_run(task, runs)
                run_workflow(task, args, dry_run=False, runs=todo, first=curve_runs(cfg, todo))
            finally:  # what finished is kept, whether the workflow did or not
                runs = record(task, cfg, args)
        if args.task and runs.pending:
            log.info("%s: %d run(s) not recorded yet; summarised once every run is\n%s", task, len(runs.pending), status(task, cfg, args))
            render_report(cfg, args)
            continue
        summarise(task, cfg, args, runs)
        render_report(cfg, args)


if __name__ == "__main__":
    main()
