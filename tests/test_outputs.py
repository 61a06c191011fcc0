"""What a run says at its end about where its outputs are (top/report/outputs.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from top.report.outputs import DEFAULT_RESULTS_DIR, REPORT_NAME, report_command, results_dir, where_outputs_are

ROOT = Path(__file__).resolve().parents[1]


def test_default_results_dir_is_the_schemas():
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    assert schema["properties"]["results_dir"]["default"] == DEFAULT_RESULTS_DIR


def test_results_dir_follows_snakemakes_merge_order(tmp_path):
    first, second, bare = tmp_path / "a.yaml", tmp_path / "b.yaml", tmp_path / "c.yaml"
    first.write_text("results_dir: results/a\n")
    second.write_text("results_dir: results/b\n")
    bare.write_text("tasks: [sst2]\n")
    assert results_dir([bare]) == DEFAULT_RESULTS_DIR
    assert results_dir([first, bare]) == "results/a"
    assert results_dir([first, second]) == "results/b"  # later files win
    assert results_dir([first], {"results_dir": "results/cli"}) == "results/cli"  # --config wins
    assert results_dir([ROOT / "config/demo.yaml"]) == "results/demo"


def test_results_dir_command_line_for_make():
    command = [sys.executable, "-m", "top.report.outputs", "results-dir", "config/demo.yaml", "results_dir=results/demo_seeds", "seeds=[1,2,3]"]
    assert subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout == "results/demo_seeds\n"
    command = command[:5]
    assert subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout == "results/demo\n"


def test_report_command_repeats_the_runs_configuration(tmp_path):
    config = tmp_path / "config" / "demo.yaml"
    assert report_command([config], {}, cwd=tmp_path) == "make report CONFIG=config/demo.yaml"
    overrides = {"glue_dir": "/data/my glue", "preflight": False, "results_dir": "results/x", "seeds": ["1", "2"]}
    assert report_command([config], overrides, cwd=tmp_path) == (
        "make report CONFIG=config/demo.yaml GLUE_DIR='/data/my glue' CONFIG_ARGS=\"results_dir=results/x 'seeds=[1,2]'\""
    )
    # files outside the working folder keep their absolute path; several files are one CONFIG
    outside = Path("/elsewhere/extra.yaml")
    assert report_command([config, outside], {}, cwd=tmp_path) == "make report CONFIG='config/demo.yaml /elsewhere/extra.yaml'"


def test_summary_names_every_output_and_what_is_missing(tmp_path):
    results = tmp_path / "results/demo"
    lines = where_outputs_are(results, ["glue", "latency"], ["accuracy_vs_flops", "retained_tokens"], "make report CONFIG=c.yaml")
    text = "\n".join(lines)
    assert f"(results_dir: {results})" in lines[0]
    assert f"{results}/tables/: none yet" in text and f"{results}/plots/: none yet" in text
    assert f"{results / REPORT_NAME} is made by: make report CONFIG=c.yaml" in text
    assert f"job logs:   {results}/logs/" in text

    for name in ("tables/results.md", "tables/results.csv", "tables/layers.csv", "tables/glue.md", "plots/accuracy_vs_flops.png", REPORT_NAME):
        (results / name).parent.mkdir(parents=True, exist_ok=True)
        (results / name).write_text("x")
    text = "\n".join(where_outputs_are(results, ["glue", "latency"], ["accuracy_vs_flops", "retained_tokens"], "make report CONFIG=c.yaml"))
    assert f"every run:  {results}/tables/: results.md, results.csv, layers.csv\n" in text
    assert f"{results}/tables/: glue.md (each also .csv and .tex); not made by this run: latency.md" in text
    assert f"{results}/plots/: accuracy_vs_flops.png (each also .svg and .pdf); not made by this run: retained_tokens.png" in text
    assert f"report:     {results / REPORT_NAME} (remake it after a new run: make report CONFIG=c.yaml)" in text
