"""The reproduction's persistent summaries and report (top/report/reproduction.py and reproduction_report.py,
benchmarks/reproduction.py --render), on synthetic results.csv files: no training."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from top.report.reproduction import (
    SUMMARY_COLUMNS,
    is_summarised,
    load_summaries,
    progress_frame,
    summary_frame,
    summary_meta,
    write_summary,
)
from top.report.reproduction_report import markdown, render

ROOT = Path(__file__).resolve().parents[1]
SEEDS = (42, 43, 44)
# (method, setting) -> FLOPs reduction; a method's score falls with its reduction
CURVES = {
    ("dense", "default"): 1.0,
    ("topk", "r1.5"): 1.5,
    ("topk", "r5"): 5.2,
    ("ltp", "lam0.01"): 1.6,
    ("ltp", "lam0.8"): 3.1,
    ("top", "s33"): 1.5,
    ("top", "s50"): 2.0,
    ("top", "s75"): 4.0,
}


def results_csv(path: Path, task: str = "mrpc", metric: str = "f1", top_bonus: float = 3.0, drop: tuple = ()) -> Path:
    """A workflow results.csv as top.report.tables.collect writes it (extra columns included)."""
    rows = []
    for (method, setting), reduction in CURVES.items():
        for seed in SEEDS:
            if (method, setting, seed) in drop:
                continue
            score = 90.0 - 4.0 * (reduction - 1.0) + (top_bonus if method == "top" else 0.0) + 0.2 * (seed - 43)
            rows.append(
                {
                    "task": task,
                    "method": method,
                    "setting": setting,
                    "seed": seed,
                    "metric": metric,
                    "score": score,
                    "selection": "best_dev",
                    "selected_epoch": 3,
                    "selection_epochs": 4,
                    "selection_fallback": False,
                    "flops": 1e8 / reduction,
                    "flops_reduction": reduction,
                    "target_flops_reduction": reduction if method == "top" else None,
                    "speedup": 1.0 + 0.1 * (reduction - 1.0),
                    "speedup_ideal": 1.0 + 0.12 * (reduction - 1.0),
                    "latency_ms": 5.0,
                    "cpu": "Test CPU",
                    f"validation/{metric}": score,
                }
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def expected_runs() -> list[tuple[str, str, int]]:
    return [(method, setting, seed) for method, setting in CURVES for seed in SEEDS]


STEPS = {key: (1150 if key[0] != "dense" else 1150) for key in CURVES}
MACHINE = {"cpu_model": "Test CPU", "cores_available": 2, "gpus": [], "torch_version": "2.13.0", "transformers_version": "5.23.0"}
EXPECTED = {"metric": "f1", "score": 88.9, "source": "MiniLM-L6xH384 dev (test)"}


def summarise(tmp_path: Path, task: str = "mrpc", metric: str = "f1", **options) -> tuple[Path, Path]:
    csv = results_csv(tmp_path / "results" / task / "tables/results.csv", task, metric, **options)
    frame = summary_frame(pd.read_csv(csv), task, STEPS, expected_runs())
    config = tmp_path / "reproduction.yaml"
    config.write_text("tasks: [cola, mrpc, rte]\n")
    meta = summary_meta(
        task,
        config,
        [f"tasks=[{task}]"],
        train_rows=3668,
        expected_teacher=EXPECTED,
        machine=MACHINE,
        runs_csv=csv,
        date="2026-12-01T00:00:00+00:00",
    )
    return write_summary(tmp_path / "summaries", task, frame, meta)


def test_summary_has_one_row_per_run_with_the_budget(tmp_path):
    csv_path, json_path = summarise(tmp_path)
    frame = pd.read_csv(csv_path)
    assert list(frame.columns) == list(SUMMARY_COLUMNS)
    assert len(frame) == len(CURVES) * len(SEEDS)
    assert list(dict.fromkeys(frame["method"])) == ["dense", "topk", "ltp", "top"]  # the tables' order
    assert set(frame["train_steps"]) == {1150}
    assert frame.loc[frame["setting"] == "s75", "target_flops_reduction"].tolist() == [4.0] * 3
    meta = json.loads(json_path.read_text())
    assert meta["config_sha256"] == __import__("hashlib").sha256(b"tasks: [cola, mrpc, rte]\n").hexdigest()
    assert meta["machine"]["cpu_model"] == "Test CPU" and meta["expected_teacher"] == EXPECTED
    assert meta["overrides"] == ["tasks=[mrpc]"] and meta["train_rows"] == 3668
    assert is_summarised(tmp_path / "summaries", "mrpc") and not is_summarised(tmp_path / "summaries", "rte")


def test_an_unfinished_task_is_not_summarised(tmp_path):
    csv = results_csv(tmp_path / "results.csv", drop=(("top", "s75", 44), ("ltp", "lam0.8", 42)))
    with pytest.raises(ValueError, match="task mrpc is not finished: no result for ltp/lam0.8/seed42, top/s75/seed44"):
        summary_frame(pd.read_csv(csv), "mrpc", STEPS, expected_runs())


def test_runs_outside_the_configuration_are_left_out(tmp_path):
    csv = results_csv(tmp_path / "results.csv")
    frame = summary_frame(pd.read_csv(csv), "mrpc", STEPS, [run for run in expected_runs() if run[0] != "ltp"])
    assert "ltp" not in set(frame["method"])


def test_bad_summaries_name_the_file_and_line(tmp_path):
    csv_path, json_path = summarise(tmp_path)
    frame = pd.read_csv(csv_path)
    frame.loc[4, "task"] = "rte"
    frame.to_csv(csv_path, index=False)
    with pytest.raises(ValueError, match=r"mrpc.csv, line 6: task 'rte' in the summary of 'mrpc'"):
        load_summaries(csv_path.parent)
    frame.loc[4, "task"] = "mrpc"
    frame.loc[2, "flops_reduction"] = None
    frame.to_csv(csv_path, index=False)
    with pytest.raises(ValueError, match=r"mrpc.csv, line 4: no value for \['flops_reduction'\]"):
        load_summaries(csv_path.parent)
    frame.drop(columns="train_steps").to_csv(csv_path, index=False)
    with pytest.raises(ValueError, match=r"mrpc.csv: missing columns \['train_steps'\]"):
        load_summaries(csv_path.parent)
    json_path.unlink()
    with pytest.raises(ValueError, match="mrpc.csv: no sidecar mrpc.json"):
        load_summaries(csv_path.parent)


def test_report_compares_at_equal_flops_and_shows_the_teachers(tmp_path):
    summarise(tmp_path, "mrpc")
    summarise(tmp_path, "rte", metric="accuracy", top_bonus=-3.0)
    report, figure = tmp_path / "docs/reproduction.md", tmp_path / "docs/figures/reproduction.png"
    summaries = render(tmp_path / "summaries", report, figure, tasks=["cola", "sst2", "mrpc", "stsb", "rte"])
    assert summaries.tasks == ["mrpc", "rte"]
    text = report.read_text()
    assert "Not finished yet: CoLA, SST-2, STS-B." in text
    # ToP three points above every baseline at the same FLOPs on MRPC, three below on RTE;
    # topk at 4x on MRPC: between 1.5x and 5.2x
    rows = {line.split(" | ")[0] + " | " + line.split(" | ")[1]: line for line in text.splitlines() if line.startswith(("| MRPC |", "| RTE |"))}
    assert rows["| MRPC | 2x"].endswith("| **ahead** (best baseline: LTP) |")  # LTP 85.6 at 2x, top-k 84.6
    assert rows["| MRPC | 4x"].endswith("| **ahead** (best baseline: Top-k (static)) |")
    assert rows["| RTE | 2x"].endswith("| **behind** (best baseline: LTP) |")
    assert rows["| RTE | 4x"].endswith("| **behind** (best baseline: Top-k (static)) |")
    # ToP at 2x: its s50 point itself; LTP's curve stops at 3.1x in every seed
    assert "| MRPC | 2x | 89.0 ± 0.2 [88.8–89.2] (3 seeds) |" in rows["| MRPC | 2x"]
    assert "| – (seeds 42, 43, 44: cannot reach 4x: max 3.1x) |" in rows["| MRPC | 4x"]
    assert "| MRPC | F1 90.0 ± 0.2 (3 seeds) | F1 88.9 | MiniLM-L6xH384 dev (test) |" in text
    assert "| MRPC | ToP | s75 | 3 | 81.0 ± 0.2 | 4.00x ± 0.00 | 1150 | 3, 3, 3 | 1.30x ± 0.00 |" in text
    assert "![dev score against FLOPs reduction, one panel per task](figures/reproduction.png)" in text
    assert "| MRPC | 2026-12-01T00:00:00+00:00 |" in text and "Test CPU, 2 cores, no GPU" in text
    assert figure.is_file() and figure.stat().st_size > 10_000


def test_render_writes_the_comparison_and_figure_into_the_readmes_block(tmp_path):
    summarise(tmp_path, "mrpc")
    report, figure = tmp_path / "docs/reproduction.md", tmp_path / "docs/figures/reproduction.png"
    readme = tmp_path / "README.md"
    readme.write_text("## Reproduction\n\n<!-- reproduction:start -->\nstale\n<!-- reproduction:end -->\n\nWhat it means.\n")
    render(tmp_path / "summaries", report, figure, tasks=["mrpc", "rte"], readme=readme)
    text = readme.read_text()
    block = text.split("<!-- reproduction:start -->\n")[1].split("<!-- reproduction:end -->")[0]
    assert text.startswith("## Reproduction\n\n") and text.endswith("<!-- reproduction:end -->\n\nWhat it means.\n")
    assert "stale" not in block and "**Finished: MRPC**" in block
    rows = [line for line in block.splitlines() if line.startswith("| MRPC |")]
    assert len(rows) == 2 and rows[0].endswith("| **ahead** (best baseline: LTP) |")
    assert "![dev score against FLOPs reduction, one panel per task](docs/figures/reproduction.png)" in block
    assert "[docs/reproduction.md](docs/reproduction.md)" in block
    # the same block in the report's own comparison
    assert rows[0] in report.read_text()


def test_the_readmes_block_shows_an_unfinished_task_as_provisional(tmp_path, monkeypatch):
    import top.report.plots
    from top.report.reproduction import Provisional

    def figure(frame, paths, *args, **kwargs):
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        paths[0].write_bytes(b"png")

    monkeypatch.setattr(top.report.plots, "reproduction_figure", figure)
    frame = pd.read_csv(results_csv(tmp_path / "results.csv")).assign(train_steps=1150).reindex(columns=SUMMARY_COLUMNS)
    part = Provisional(frame=frame[frame["seed"] == 42].reset_index(drop=True), expected=len(frame))
    readme = tmp_path / "README.md"
    readme.write_text("<!-- r:start -->\n<!-- r:end -->\n")
    render(tmp_path / "none", tmp_path / "docs/r.md", tmp_path / "docs/r.png", tasks=["mrpc"], provisional={"mrpc": part}, readme=readme)
    block = readme.read_text()
    assert f"**MRPC, {part.note()}**" in block and "Finished" not in block
    assert "| MRPC | 2x |" in block and "**undetermined (one seed)**" in block
    assert "](docs/r.png)" in block and "[docs/r.md](docs/r.md)" in block
    assert "Machines:" not in (tmp_path / "docs/r.md").read_text()
    part = Provisional(frame=frame, expected=len(frame), cpus={42: ["AMD EPYC"], 43: ["Intel Xeon"]})
    render(tmp_path / "none", tmp_path / "docs/r.md", tmp_path / "docs/r.png", tasks=["mrpc"], provisional={"mrpc": part})
    assert "Machines: seed 42 on AMD EPYC; seed 43 on Intel Xeon." in (tmp_path / "docs/r.md").read_text()
    part = Provisional(frame=frame[frame["seed"] != 44].reset_index(drop=True), expected=len(frame), seeds=3)
    render(tmp_path / "none", tmp_path / "docs/r.md", tmp_path / "docs/r.png", tasks=["mrpc"], provisional={"mrpc": part}, readme=readme)
    assert "**undetermined: 2 of 3 seeds (so far " in readme.read_text()
    assert "**undetermined: 2 of 3 seeds (so far " in (tmp_path / "docs/r.md").read_text()


def test_report_without_summaries_says_so_and_draws_no_figure(tmp_path):
    report, figure = tmp_path / "reproduction.md", tmp_path / "figures/reproduction.png"
    figure.parent.mkdir()
    figure.write_bytes(b"stale")
    render(tmp_path / "none", report, figure, tasks=["mrpc"])
    text = report.read_text()
    assert "No task has finished yet: there are no results to show." in text and "Not finished yet: MRPC." in text
    assert not figure.exists()


def test_a_task_not_reproducible_here_is_named_with_its_reason(tmp_path):
    report, figure = tmp_path / "reproduction.md", tmp_path / "figures/reproduction.png"
    render(tmp_path / "none", report, figure, tasks=["mrpc"], not_reproducible={"cola": "the teacher stays at MCC 30.\n"})
    text = report.read_text()
    assert "## Not reproducible here\n\n- **CoLA**: the teacher stays at MCC 30.\n" in text
    assert text.startswith("# Reproduction: MRPC\n")


def test_markdown_of_a_single_seed_has_no_spread(tmp_path):
    csv = results_csv(tmp_path / "results/results.csv")
    frame = pd.read_csv(csv)
    frame = frame[frame["seed"] == 42]
    summary = summary_frame(frame, "mrpc", STEPS, [run for run in expected_runs() if run[2] == 42])
    meta = summary_meta("mrpc", csv, [], train_rows=None, expected_teacher=None, machine=MACHINE, runs_csv=csv)
    write_summary(tmp_path / "summaries", "mrpc", summary, meta)
    text = markdown(load_summaries(tmp_path / "summaries"), figure=None)
    assert "**undetermined (one seed)**" in text and "(1 seed)" in text and "![" not in text


def test_ablations_stand_beside_their_base_setting_and_out_of_the_comparison(tmp_path):
    """An ablation of ToP s50 scoring 2 below it and landing at 4x would lift nothing and put
    a point on ToP's curve; as an ablation it only appears in its own table, paired by seed."""
    csv = results_csv(tmp_path / "results/results.csv")
    frame = pd.read_csv(csv)
    ablated = frame[(frame["method"] == "top") & (frame["setting"] == "s50")].assign(setting="s50_norank", flops_reduction=4.0)
    ablated["score"] -= 2.0 + 0.1 * (ablated["seed"] - 43)  # paired differences -1.9, -2.0, -2.1
    frame = pd.concat([frame, ablated], ignore_index=True)
    runs = expected_runs() + [("top", "s50_norank", seed) for seed in SEEDS]
    summary = summary_frame(frame, "mrpc", STEPS, runs)
    ablations = {"top": {"s50_norank": {"of": "s50", "change": "no ranking distillation"}}}
    meta = summary_meta("mrpc", csv, [], train_rows=None, expected_teacher=None, machine=MACHINE, runs_csv=csv) | {"ablations": ablations}
    write_summary(tmp_path / "summaries", "mrpc", summary, meta)
    text = markdown(load_summaries(tmp_path / "summaries"), figure=None)
    assert "| MRPC | 4x | 81.0 ± 0.2 [80.8–81.2] (3 seeds) |" in text  # s75's own point, not the ablation's 87.0
    assert "| MRPC | ToP | s50_norank |" not in text
    assert "## Ablations" in text
    assert (
        "| MRPC | ToP s50_norank | no ranking distillation | 3 | 87.0 ± 0.1 | 4.00x ± 0.00 | s50 | 89.0 ± 0.2 | 2.00x ± 0.00 | -2.0 ± 0.1 |" in text
    )


def test_a_seed_part_way_through_its_curve_stays_out_of_the_provisional_comparison():
    """Seed 43 with only ToP s50 recorded would read "cannot reach 4x" and leave ToP without a
    value; the comparison reads seed 42's full curve, the runs table lists both seeds."""
    from top.report.reproduction_report import complete_curves

    frame = pd.DataFrame(
        {
            "task": "mrpc",
            "method": ["top"] * 4 + ["topk"] * 2,
            "setting": ["s50", "s75", "s80", "s50", "r2", "r5"],
            "seed": [42, 42, 42, 43, 42, 42],
        }
    )
    kept = complete_curves(frame)
    assert list(zip(kept["method"], kept["setting"], kept["seed"])) == [
        ("top", "s50", 42),
        ("top", "s75", 42),
        ("top", "s80", 42),
        ("topk", "r2", 42),
        ("topk", "r5", 42),
    ]


def test_the_figure_leaves_out_a_seed_part_way_through_its_curve(tmp_path, monkeypatch):
    """The provisional figure draws what the comparison reads: seed 43's lone ToP point would
    otherwise pull ToP's mean at 2x toward one seed."""
    import top.report.plots
    from top.report.reproduction import Provisional

    drawn = {}
    monkeypatch.setattr(top.report.plots, "reproduction_figure", lambda frame, *args, **kwargs: drawn.setdefault("frame", frame))
    frame = pd.read_csv(results_csv(tmp_path / "results.csv")).assign(train_steps=1150).reindex(columns=SUMMARY_COLUMNS)
    keep = [
        (seed == 42) or (method, setting) in {("dense", "default"), ("top", "s50")}
        for method, setting, seed in zip(frame["method"], frame["setting"], frame["seed"])
    ]
    part = Provisional(frame=frame[keep].reset_index(drop=True), expected=len(frame))
    render(tmp_path / "none", tmp_path / "r.md", tmp_path / "r.png", tasks=["mrpc"], provisional={"mrpc": part})
    seeds = drawn["frame"].groupby("method")["seed"].apply(lambda s: sorted(set(s))).to_dict()
    assert seeds == {"dense": [42, 43, 44], "ltp": [42], "top": [42], "topk": [42]}


def test_an_ablations_score_difference_carries_its_sign():
    """A paired difference is written +0.5 or -1.0, never a bare 0.5 beside a -1.0."""
    from top.report.reproduction_report import ablation_table

    frame = pd.DataFrame(
        {
            "task": "mrpc",
            "method": "top",
            "setting": ["s50", "s50_norank", "s75", "s75_norank"],
            "seed": 42,
            "score": [87.0, 86.0, 82.0, 82.54],
            "flops_reduction": [2.0, 2.0, 4.0, 4.0],
        }
    )
    ablations = {"mrpc": {"top": {name: {"of": name[:3], "change": "no ranking distillation"} for name in ("s50_norank", "s75_norank")}}}
    rows = ablation_table(frame, ablations)[2:]
    assert [row.rsplit("|", 2)[1].strip() for row in rows] == ["-1.0", "+0.5"]


def test_an_ablation_and_its_setting_are_read_over_the_seeds_both_ran():
    """The ablated setting's seeds without an ablation run stay out of its columns, so that its
    score, the ablation's and their paired difference agree (86.0 - 87.0 = -1.0, not 85.0's mean)."""
    from top.report.reproduction_report import ablation_table

    frame = pd.DataFrame(
        {
            "task": "mrpc",
            "method": "top",
            "setting": ["s50", "s50", "s50", "s50_norank", "s50_norank", "s50_norank"],
            "seed": [42, 43, 44, 42, 44, 45],
            "score": [87.0, 81.0, 86.0, 86.0, 85.0, 80.0],
            "flops_reduction": [2.0, 2.4, 2.0, 2.0, 2.0, 2.0],
        }
    )
    ablations = {"mrpc": {"top": {"s50_norank": {"of": "s50", "change": "no ranking distillation"}}}}
    (row,) = ablation_table(frame, ablations)[2:]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[3:] == ["2", "85.5 ± 0.7", "2.00x ± 0.00", "s50", "86.5 ± 0.7", "2.00x ± 0.00", "-1.0 ± 0.0"]


def test_render_command_builds_the_report_from_the_summaries_only(tmp_path):
    summarise(tmp_path, "mrpc")
    report, figure = tmp_path / "out.md", tmp_path / "fig.png"
    command = [sys.executable, str(ROOT / "benchmarks/reproduction.py"), "--render", "--out", str(tmp_path / "summaries")]
    command += ["--report", str(report), "--figure", str(figure), "--glue-dir", str(tmp_path / "no-glue-needed")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(command, check=True, cwd=tmp_path, capture_output=True, env=env)
    text = report.read_text()
    assert "| MRPC | 2x |" in text and "Not finished yet: SST-2, STS-B." in text
    assert "\nTraining precision: teachers fp32, students fp32; evaluation, FLOPs and latency in fp32.\n" in text
    # the configuration's reasons for the tasks that do not run
    assert "## Not reproducible here\n\n- **CoLA**: The teacher does not learn the task" in text
    assert "\n- **RTE**: The teacher does not reach the task's level" in text
    assert figure.is_file()
    # the header names the command that builds this report again, with its non-default paths
    header = re.search(r"Generated by `([^`]*)`", text).group(1)
    assert header.startswith("python benchmarks/reproduction.py --render --glue-dir ")
    assert "--config" not in header and header.endswith(
        "summaries --report " + os.path.relpath(report, ROOT) + " --figure " + os.path.relpath(figure, ROOT)
    )


def test_the_render_command_names_only_what_differs_from_the_defaults():
    import argparse

    reproduction = load_script("reproduction")

    def args(*configs: str, **paths) -> argparse.Namespace:
        name = Path(configs[0]).stem
        defaults = {
            "out": ROOT / "benchmarks" / name,
            "report": ROOT / "docs" / f"{name}.md",
            "figure": ROOT / "docs/figures" / f"{name}.png",
            "results_root": f"results/{name}",
        }
        config = [(ROOT / c).resolve() for c in configs]
        glue = {"glue_dir": reproduction.DEFAULT_GLUE_DIR, "squad_dir": reproduction.DEFAULT_SQUAD_DIR}
        return argparse.Namespace(config=config, name=name, **(glue | defaults | paths))

    assert reproduction.render_command(args("config/reproduction.yaml")) == "python benchmarks/reproduction.py --render"
    ablation = args(
        "config/squad_benchmark.yaml",
        "config/squad_ablation.yaml",
        out=ROOT / "benchmarks/squad_ablation",
        report=ROOT / "docs/squad_ablation.md",
        figure=ROOT / "docs/figures/squad_ablation.png",
        results_root="results/squad_ablation",
    )
    assert reproduction.render_command(ablation) == (
        "python benchmarks/reproduction.py --render --config config/squad_benchmark.yaml config/squad_ablation.yaml "
        "--out benchmarks/squad_ablation --report docs/squad_ablation.md --figure docs/figures/squad_ablation.png "
        "--results-root results/squad_ablation"
    )


def touch_outputs(results_dir: Path, run: str, outputs=("eval/{run}/metrics.json", "flops/{run}/flops.json", "latency/{run}/latency.json")):
    for pattern in outputs:
        path = results_dir / pattern.format(run=run)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")


def test_progress_counts_a_run_finished_only_with_all_its_outputs(tmp_path):
    touch_outputs(tmp_path, "mrpc/top/s50/seed42")
    touch_outputs(tmp_path, "mrpc/top/s75/seed42", outputs=("eval/{run}/metrics.json", "flops/{run}/flops.json"))  # no latency yet
    touch_outputs(tmp_path, "rte/top/s33/seed42")  # another task's run
    expected = [("top", setting, seed) for setting in ("s33", "s50", "s75") for seed in (42, 43)] + [("topk", "r5", 42)]
    frame = progress_frame(tmp_path, "mrpc", expected)
    rows = {(row.method, row.seed): (row.finished, row.expected, row.missing) for row in frame.itertuples()}
    assert rows == {
        ("top", 42): (1, 3, "s33, s75"),
        ("top", 43): (0, 3, "s33, s50, s75"),
        ("topk", 42): (0, 1, "r5"),
    }


def test_progress_counts_recorded_runs_apart_and_says_why_a_recorded_run_is_redone(tmp_path):
    touch_outputs(tmp_path, "mrpc/top/s50/seed42")  # finished here, not recorded yet
    expected = [("top", setting, 42) for setting in ("s33", "s50", "s75", "s80")]
    states = {
        ("top", "s33", 42): "recorded",
        ("top", "s50", 42): "missing",
        ("top", "s75", 42): "stale teacher",
        ("top", "s80", 42): "missing",
    }
    row = progress_frame(tmp_path, "mrpc", expected, states).iloc[0]
    assert (row.recorded, row.finished, row.expected, row.missing) == (1, 1, 4, "s75 (stale teacher), s80")


def run_script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, str(ROOT / "benchmarks/reproduction.py"), *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env)


def reproduction_config(tmp_path: Path, **changes) -> Path:
    """config/reproduction.yaml with ``changes`` to its top-level keys, written under tmp_path."""
    import yaml

    cfg = yaml.safe_load((ROOT / "config/reproduction.yaml").read_text())
    cfg.update(changes)
    path = tmp_path / "reproduction.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({}, "--seeds: [45] not among mrpc's seeds [42, 43, 44]"),
        ({"task_settings": {"mrpc": {"seeds": [42]}}}, "--seeds: mrpc has its own seeds (task_settings.mrpc.seeds)"),
    ],
)
def test_seeds_outside_the_tasks_seeds_are_refused_before_the_workflow(tmp_path, changes, message):
    config = reproduction_config(tmp_path, **changes)
    (tmp_path / "glue").mkdir()  # the configuration check wants the folder; the seeds are refused before any file is read
    result = run_script("--dry-run", "mrpc", "--seeds", "45", "--config", str(config), "--glue-dir", str(tmp_path / "glue"), cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr


def test_provenance_names_the_configuration_relative_to_the_root_with_its_hash(tmp_path):
    from top.report.reproduction import file_sha256, provenance

    config = tmp_path / "config" / "run.yaml"
    config.parent.mkdir()
    config.write_text("tasks: [mrpc]\n")
    record = provenance(config, ["seeds=[42]"], machine=MACHINE, date="2026-12-01T00:00:00+00:00", root=tmp_path)
    assert record == {
        "config": "config/run.yaml",
        "config_sha256": file_sha256(config),
        "overrides": ["seeds=[42]"],
        "date": "2026-12-01T00:00:00+00:00",
        "machine": MACHINE,
    }
    outside = provenance(config, machine=MACHINE, root=tmp_path / "elsewhere")
    assert outside["config"] == str(config) and outside["overrides"] == []


def load_script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_estimate_reads_the_throughput_of_the_configured_precision(tmp_path):
    reproduction = load_script("reproduction")
    rows = [
        ("teacher", "group", "fp32", 20.0),
        ("teacher", "group+amp", "bf16", 32.0),
        ("top", "group", "fp32", 17.0),
        ("top", "group+cache", "fp32", 22.0),
        ("top", "group+cache+amp", "bf16", 44.0),
    ]
    results = [
        {"task": "mrpc", "phase": phase, "variant": variant, "precision": precision, "examples_per_s": rate}
        for phase, variant, precision, rate in rows
    ]
    path = tmp_path / "throughput.json"
    path.write_text(json.dumps({"environment": {"threads": 1}, "results": results}))
    fp32 = reproduction.measured_throughput("fp32", [path])["mrpc"]
    bf16 = reproduction.measured_throughput("bf16", [path])["mrpc"]
    assert (fp32.dense, fp32.top_prune) == (20.0, 22.0)
    assert (bf16.dense, bf16.top_prune) == (32.0, 44.0)
    assert reproduction.training_precision({"train": {"precision": "auto"}}) == "fp32"
    assert reproduction.training_precision({"train": {"precision": "bf16"}}) == "bf16"


def test_the_estimate_merges_throughput_files_the_first_file_wins_and_a_missing_one_is_named(tmp_path):
    reproduction = load_script("reproduction")

    def write(name, task, dense, prune):
        results = [
            {"task": task, "phase": "teacher", "variant": "group", "precision": "fp32", "examples_per_s": dense},
            {"task": task, "phase": "top", "variant": "group+cache", "precision": "fp32", "examples_per_s": prune},
        ]
        path = tmp_path / name
        path.write_text(json.dumps({"environment": {"threads": 1}, "results": results}))
        return path

    first = write("first.json", "sst2", 90.0, 95.0)
    second = write("second.json", "stsb", 40.0, 38.0)
    again = write("again.json", "sst2", 1.0, 1.0)
    table = reproduction.measured_throughput("fp32", [first, second, again])
    assert (table["sst2"].dense, table["stsb"].top_prune) == (90.0, 38.0)
    assert "second.json" in table["stsb"].source
    assert table["cola"].dense == 90.0 and "not measured" in table["cola"].source
    assert "mrpc" not in table
    with pytest.raises(FileNotFoundError, match="missing.json"):
        reproduction.measured_throughput("fp32", [first, tmp_path / "missing.json"])


def test_the_bf16_overlay_keeps_the_earlier_pass_apart_from_the_fp32_reproduction():
    from top.config import read_config_files

    reproduction = load_script("reproduction")
    base = read_config_files([ROOT / "config/reproduction.yaml"])
    bf16 = read_config_files([ROOT / "config/reproduction.yaml", ROOT / "config/reproduction_bf16.yaml"])
    assert reproduction.report_precision(base) == {"teachers": "fp32", "students": "fp32"}
    assert reproduction.report_precision(bf16) == {"teachers": "bf16", "students": "bf16"}
    # the overlay changes the precisions only
    assert bf16["teacher"] == base["teacher"] | {"precision": "bf16"}
    assert bf16["train"] == base["train"] | {"precision": "bf16"}
    assert {**bf16, "teacher": base["teacher"], "train": base["train"]} == base
    assert reproduction.report_precision({"train": {}}) == {"teachers": "fp32", "students": "fp32"}


def test_throughput_variants_can_be_narrowed_to_a_precision_pair():
    throughput = load_script("train_throughput")
    assert throughput.variants_of("top", amp=True) == ["before", "off", "group", "cache", "group+cache", "group+cache+amp"]
    assert throughput.variants_of("teacher", amp=True, keep=["group", "group+amp", "group+cache"]) == ["group", "group+amp"]


def tiny_reproduction(tmp_path: Path, finished: tuple[tuple[str, str], ...]) -> list[str]:
    """A reproduction of SST-2 (tiny files) with a dense row and one top-k setting, seed 42: the
    teacher's folder, and the finished runs' metrics, FLOPs and latency files (the example
    runs'); returns the script's arguments that point at them."""
    import shutil

    import yaml

    from tests.conftest import write_tiny_sst2
    from top.report.example import write_example_runs
    from top.report.outputs import RUN_DIR, TEACHER_DIR
    from top.report.reproduction import RUN_OUTPUTS

    cfg = yaml.safe_load((ROOT / "config/reproduction.yaml").read_text())
    cfg.update(tasks=["sst2"], seeds=[42])
    cfg["methods"] = {"dense": cfg["methods"]["dense"], "topk": {"settings": {"keep50": {"keep_ratios": [1.0, 0.8, 0.6, 0.5, 0.4, 0.3]}}}}
    cfg.pop("ablations")  # of ToP settings this reproduction does not have
    cfg["task_settings"] = {"sst2": {**cfg["task_settings"]["sst2"], "methods": {"topk": {"finetune_epochs": 4}}}}
    config = tmp_path / "reproduction.yaml"
    config.write_text(yaml.safe_dump(cfg))
    glue = write_tiny_sst2(tmp_path / "glue")
    examples, results = tmp_path / "examples", tmp_path / "results" / "sst2"
    write_example_runs(examples)
    for method, setting in finished:
        run = RUN_DIR.format(task="sst2", method=method, setting=setting, seed=42)
        for pattern in RUN_OUTPUTS:
            target = results / pattern.format(run=run)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(examples / run / target.name, target)
    teacher = results / TEACHER_DIR.format(task="sst2", seed=42)
    teacher.mkdir(parents=True)
    (teacher / "model.safetensors").write_bytes(b"teacher")
    report = ["--report", str(tmp_path / "reproduction.md"), "--figure", str(tmp_path / "reproduction.png")]
    return ["--config", str(config), "--glue-dir", str(glue), "--results-root", str(tmp_path / "results"), "--out", str(tmp_path / "out"), *report]


def test_a_teacher_on_more_threads_than_cores_is_refused(tmp_path):
    """Snakemake would run the teacher on --cores threads, and its weights depend on the count."""
    refused = run_script("--status", "sst2", "--cores", "1", "--teacher-threads", "2", cwd=tmp_path)
    assert refused.returncode == 2
    assert "--teacher-threads 2 is more than --cores 1" in refused.stderr


def test_trained_only_plans_the_runs_that_have_trained_and_no_training(tmp_path):
    common = tiny_reproduction(tmp_path, finished=())  # the teacher has trained, top-k has not
    planned = run_script("--dry-run", "sst2", "--trained-only", *common, cwd=tmp_path)
    assert planned.returncode == 0, planned.stderr
    command = next(line for line in planned.stderr.splitlines() if "running" in line)
    assert "latency/sst2/dense/default/seed42/latency.json" in command and "topk" not in command
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", planned.stdout.split("Job stats:")[1].split("total")[0], re.M))
    assert jobs == {"evaluate": "1", "flops": "1", "latency": "1"}  # the dense row's; no training


def test_methods_plans_only_those_methods_runs_and_the_dense_row(tmp_path):
    common = tiny_reproduction(tmp_path, finished=())
    planned = run_script("--dry-run", "sst2", "--methods", "dense", *common, cwd=tmp_path)
    assert planned.returncode == 0, planned.stderr
    command = next(line for line in planned.stderr.splitlines() if "running" in line)
    assert "latency/sst2/dense/default/seed42/latency.json" in command and "topk" not in command
    everything = run_script("--dry-run", "sst2", "--methods", "topk", *common, cwd=tmp_path)
    command = next(line for line in everything.stderr.splitlines() if "running" in line)
    assert "dense/default" in command and "topk/keep50" in command
    refused = run_script("--dry-run", "sst2", "--methods", "topk", "ltp", *common, cwd=tmp_path)
    assert refused.returncode == 2 and "--methods: ltp not among the configured methods (dense, topk)" in refused.stderr


def test_methods_can_name_one_setting_of_a_method(tmp_path):
    import yaml

    common = tiny_reproduction(tmp_path, finished=())
    config = tmp_path / "reproduction.yaml"
    cfg = yaml.safe_load(config.read_text())
    cfg["methods"]["topk"]["settings"]["keep30"] = {"keep_ratios": [1.0, 0.6, 0.4, 0.3, 0.2, 0.1]}
    config.write_text(yaml.safe_dump(cfg))
    planned = run_script("--dry-run", "sst2", "--methods", "topk/keep30", *common, cwd=tmp_path)
    assert planned.returncode == 0, planned.stderr
    command = next(line for line in planned.stderr.splitlines() if "running" in line)
    assert "dense/default" in command and "topk/keep30" in command and "topk/keep50" not in command
    refused = run_script("--dry-run", "sst2", "--methods", "topk/keep99", *common, cwd=tmp_path)
    assert refused.returncode == 2 and "--methods: topk/keep99: topk has no setting 'keep99' (keep30, keep50)" in refused.stderr


def test_recorded_runs_are_summarised_without_running_the_workflow(tmp_path):
    """--record takes the finished runs of a results folder into the ledger, --status counts
    them, and --task summarises and renders once every run is recorded, with nothing to train."""
    import shutil

    common = tiny_reproduction(tmp_path, finished=(("dense", "default"), ("topk", "keep50")))
    readme = (ROOT / "README.md").read_text()
    recorded = run_script("--record", "sst2", *common, cwd=tmp_path)
    assert recorded.returncode == 0, recorded.stderr
    assert (tmp_path / "out/runs/sst2.csv").is_file() and not is_summarised(tmp_path / "out", "sst2")
    # every run of the task is recorded but it is not summarised yet: the report shows it apart
    text = (tmp_path / "reproduction.md").read_text()
    assert "### SST-2 (provisional: 2 of 2 runs, seed 42)" in text and "No task has finished yet" in text
    status = run_script("--status", "sst2", *common, cwd=tmp_path)
    assert "sst2: 2 of 2 runs recorded" in status.stdout, status.stdout + status.stderr
    shutil.rmtree(tmp_path / "results")  # the summary comes from the ledger alone
    summarised = run_script("--task", "sst2", *common, cwd=tmp_path)
    assert summarised.returncode == 0, summarised.stderr
    assert "running" not in summarised.stderr  # no workflow started
    summary = load_summaries(tmp_path / "out")
    assert sorted(summary.frame["method"]) == ["dense", "topk"]
    assert summary.meta["sst2"]["runs_csv"].endswith("runs/sst2.csv") and summary.meta["sst2"]["run_machines"]
    text = (tmp_path / "reproduction.md").read_text()
    assert (tmp_path / "reproduction.png").is_file() and "| SST-2 | 2x |" in text and "provisional" not in text
    # a report outside docs/ (named reproduction.md all the same) leaves the repository's README alone
    assert (ROOT / "README.md").read_text() == readme


def test_the_workflow_runs_the_methods_curves_before_the_ablations(monkeypatch, tmp_path):
    import argparse

    from snakemake.cli import get_argument_parser

    reproduction = load_script("reproduction")
    cfg = {"ablations": {"top": {"s50_norank": {"of": "s50", "change": "no ranking distillation"}}}}
    runs = [("dense", "default", 42), ("top", "s50_norank", 42), ("top", "s50", 42)]
    assert reproduction.curve_runs(cfg, runs) == [("dense", "default", 42), ("top", "s50", 42)]
    commands = []
    monkeypatch.setattr(reproduction.subprocess, "run", lambda command, cwd: commands.append(command) or argparse.Namespace(returncode=0))
    args = argparse.Namespace(
        teacher_threads=2, threads=1, cores=2, config=[ROOT / "config/reproduction.yaml"], glue_dir=tmp_path, squad_dir=tmp_path,
        results_root="results/x", seeds=[42],
    )  # fmt: skip
    reproduction.run_workflow("mrpc", args, dry_run=True, runs=runs, first=reproduction.curve_runs(cfg, runs))
    # parsed as Snakemake parses it: every run a target, the curves' outputs prioritised
    parsed = get_argument_parser().parse_args(commands[0][3:])
    outputs = {run: {str(path) for path in reproduction.run_outputs("results/x/mrpc", "mrpc", *run)} for run in runs}
    assert set(parsed.targets) == set().union(*outputs.values()) and parsed.dryrun
    assert parsed.prioritize == outputs[runs[0]] | outputs[runs[2]]
    assert parsed.config == [f"glue_dir={tmp_path}", "tasks=[mrpc]", "results_dir=results/x/mrpc", "seeds=[42]"]
    # nothing to put first when every run is on a curve, or none is
    reproduction.run_workflow("mrpc", args, dry_run=True, runs=runs[:1], first=runs[:1])
    assert "--prioritize" not in commands[1]


def test_a_seed_recorded_on_another_cpu_model_is_refused_unless_asked_for(tmp_path, monkeypatch):
    import argparse

    from top.report.ledger import PROVENANCE_COLUMNS, ledger_path

    reproduction = load_script("reproduction")
    rows = pd.DataFrame([{column: None for column in (*SUMMARY_COLUMNS, *PROVENANCE_COLUMNS)}] * 2)
    rows[["task", "method", "setting", "seed", "teacher_sha256", "cpu_model"]] = [
        ["mrpc", "dense", "default", 43, "t43", "AMD EPYC"],
        ["mrpc", "top", "s50", 43, "t43", "AMD EPYC"],
    ]
    rows["date"] = "2026-12-01T00:00:00+00:00"
    ledger_path(tmp_path, "mrpc").parent.mkdir(parents=True)
    rows.to_csv(ledger_path(tmp_path, "mrpc"), index=False)
    monkeypatch.setattr(reproduction, "machine_info", lambda: {"cpu_model": "Intel Xeon"})
    args = argparse.Namespace(out=tmp_path, other_cpu=False)
    seed44 = [("dense", "default", 44), ("top", "s50", 44)]
    reproduction.check_cpu({"mrpc": seed44}, args)  # a seed with no rows runs anywhere
    with pytest.raises(SystemExit, match=r"Intel Xeon.*\n  mrpc seed 43: 2 recorded run\(s\) made on AMD EPYC"):
        reproduction.check_cpu({"mrpc": [*seed44, ("top", "s75", 43)]}, args)
    reproduction.check_cpu({"mrpc": [("top", "s75", 43)]}, argparse.Namespace(out=tmp_path, other_cpu=True))
