"""The Snakemake workflow: a tiny end-to-end run, the linter, and a dry run of the paper config."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import tiny_squad_config, write_fake_hub_cache, write_tiny_model, write_tiny_sst2

ROOT = Path(__file__).resolve().parents[1]


def snakemake(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})})


def offline_cache(tmp_path: Path) -> dict[str, str]:
    """An offline machine whose Hugging Face cache holds what the paper configuration reads
    (bert-base-uncased, GLUE and SQuAD from the hub), as the preflight checks it."""
    glue = tuple(f"nyu-mll/glue/{task}" for task in ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte"))
    home = write_fake_hub_cache(tmp_path / "hf", datasets=(*glue, "rajpurkar/squad", "rajpurkar/squad_v2"))
    return {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}


def tiny_config(tmp_path: Path) -> Path:
    config = {
        "model": str(write_tiny_model(tmp_path / "model")),
        "data_source": "local",
        "glue_dir": str(write_tiny_sst2(tmp_path / "glue")),
        "tasks": ["sst2"],
        "seeds": [3],
        "device": "cpu",
        "teacher": {"epochs": 2, "batch_size": 8, "learning_rate": 1e-3},
        "train": {"batch_size": 8, "learning_rate": 1e-3},
        "latency": {"n_examples": 4, "warmup": 1, "repeats": 2},
        "methods": {
            "dense": {"settings": {"default": {}}},
            "topk": {"common": {"finetune_epochs": 1}, "settings": {"half": {"keep_ratios": [0.8, 0.5]}, "quarter": {"keep_ratios": [0.5, 0.25]}}},
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_tiny_end_to_end_run(tmp_path):
    config = tiny_config(tmp_path)
    result = snakemake("--cores", "2", "--configfile", str(config), "--directory", str(tmp_path))
    assert result.returncode == 0, result.stderr[-4000:]
    table = pd.read_csv(tmp_path / "results/tables/results.csv")
    assert sorted(zip(table["method"], table["setting"])) == [("dense", "default"), ("topk", "half"), ("topk", "quarter")]
    dense = table[table["method"] == "dense"].iloc[0]
    assert dense["flops_reduction"] == 1.0
    half = table[table["setting"] == "half"].iloc[0]
    quarter = table[table["setting"] == "quarter"].iloc[0]
    assert 1.0 < half["flops_reduction"] < quarter["flops_reduction"]
    assert table["score"].between(0, 100).all() and table["speedup"].gt(0).all()
    # the kept checkpoint: best on dev; dense is the teacher (2 epochs), top-k fine-tunes 1 epoch
    assert (table["selection"] == "best_dev").all() and not table["selection_fallback"].any()
    assert dense["selection_epochs"] == 2 and dense["selected_epoch"] in (1, 2)
    assert (table.loc[table["method"] == "topk", ["selected_epoch", "selection_epochs"]] == 1).all().all()
    for figure in ("accuracy_vs_flops", "latency_vs_flops", "retained_tokens"):
        for kind in ("png", "svg", "pdf"):
            assert (tmp_path / f"results/plots/{figure}.{kind}").stat().st_size > 1000
    markdown = (tmp_path / "results/tables/results.md").read_text()
    assert "| sst2 | Top-k (static) | quarter |" in markdown
    # the paper's tables: GLUE (no SQuAD task ran, so no SQuAD table) and latency
    assert sorted(p.name for p in (tmp_path / "results/tables").glob("*.tex")) == ["glue.tex", "latency.tex"]
    glue = (tmp_path / "results/tables/glue.md").read_text()
    assert "| SST-2 (acc.)" in glue and "ToP README (dev)" in glue  # the shipped papers' numbers beside ours
    assert len(pd.read_csv(tmp_path / "results/tables/latency.csv")) == 3
    per_layer = pd.read_csv(tmp_path / "results/tables/layers.csv")
    assert len(per_layer) == 3 * 2  # three runs, two layers

    run = tmp_path / "results/models/sst2/topk/half/seed3"
    record = json.loads((run / "pruning.json").read_text())
    assert record["decisions"] == {"keep_ratios": [0.8, 0.5]}
    assert [(r["stage"], r["epoch"], r["n_examples"]) for r in record["selection"]["history"]] == [("finetune", 1, 16)]
    flops = json.loads((tmp_path / "results/flops/sst2/topk/half/seed3/flops.json").read_text())
    assert flops["n_examples"] == 16 and flops["method"] == "topk"
    latency = json.loads((tmp_path / "results/latency/sst2/topk/half/seed3/latency.json").read_text())
    assert latency["environment"]["threads"] == 1 and latency["environment"]["cores"] == [0]
    assert set(latency["timings"]["runners"]) == {"dense", "dense_harness", "pruned", "ideal"}
    assert set(latency["throughput"]) == {"8", "32"}  # the schema's default batch sizes
    assert 0 < latency["pruned_vs_ideal"] and "memory" in latency
    assert {"speedup_ideal", "pruned_vs_ideal", "throughput_speedup_b8", "throughput_speedup_b32"} <= set(table.columns)
    # logs live under the results folder they belong to
    assert (tmp_path / "results/logs/teacher/sst2/seed3.log").read_text().count("stage 'finetune'") == 1
    assert (tmp_path / "results/logs/latency/sst2/topk/half/seed3.log").is_file() and not (tmp_path / "logs").exists()
    for path in (tmp_path / "results").rglob("*.json"):  # strict JSON: no NaN or Infinity tokens
        assert not {"NaN", "Infinity", "-Infinity"} & set(path.read_text().replace(",", " ").split()), path

    again = snakemake("--cores", "2", "--configfile", str(config), "--directory", str(tmp_path), "-n")
    assert "Nothing to be done" in again.stdout + again.stderr

    # the run ends with where its outputs are, and so does a run with nothing to do (for which
    # Snakemake calls no onsuccess handler)
    idle = snakemake("--cores", "2", "--configfile", str(config), "--directory", str(tmp_path))
    for run in (result, idle):
        assert "Outputs of this configuration (results_dir: results):" in run.stderr, run.stderr[-3000:]
        assert "figures:    results/plots/: accuracy_vs_flops.png, latency_vs_flops.png, retained_tokens.png" in run.stderr
        assert "tables:     results/tables/: glue.md, latency.md (each also .csv and .tex)" in run.stderr
        assert "report:     results/report.html is made by: make report CONFIG=config.yaml" in run.stderr
    assert "Nothing to be done" in idle.stderr

    # a deleted intermediate output is not remade while what was made from it is there;
    # --forcerun remakes it and everything downstream
    metrics = "results/eval/sst2/topk/half/seed3/metrics.json"
    (tmp_path / metrics).unlink()
    plain = snakemake("--cores", "2", "--configfile", str(config), "--directory", str(tmp_path), "-n")
    assert "Nothing to be done" in plain.stdout + plain.stderr
    forced = snakemake("--cores", "2", "--configfile", str(config), "--directory", str(tmp_path), "-n", "--forcerun", metrics)
    planned = dict(re.findall(r"^(\w+)\s+(\d+)$", forced.stdout + forced.stderr, flags=re.M))
    assert planned.get("evaluate") == "1" and planned.get("collect") == "1" and planned.get("figure") == "3", planned
    assert "teacher" not in planned and "train" not in planned

    report = snakemake("--configfile", str(config), "--directory", str(tmp_path), "--report", "report.html")
    assert report.returncode == 0, report.stderr[-4000:]
    assert "never awaited" not in report.stderr, report.stderr[-4000:]
    html = (tmp_path / "report.html").read_text()
    for caption in (
        "GLUE comparison",
        "Latency.",
        "Task metric vs FLOPs reduction",
        "Measured speedup vs FLOPs reduction",
        "Tokens kept per layer",
        "Every run (task, method, setting, seed)",
        "Every run and layer",
    ):
        assert caption in html, caption


@pytest.mark.slow
def test_every_method_runs_on_squad_end_to_end(tmp_path):
    methods = {
        "dense": {"settings": {"default": {}}},
        "topk": {"common": {"finetune_epochs": 1}, "settings": {"half": {"keep_ratios": [1.0, 0.6, 0.5, 0.5]}}},
        "top": {"settings": {"t30": {"target_sparsity": 0.3, "epochs": 2, "lagrangian_warmup_epochs": 1, "bin_num": 4}}},
        "ltp": {"settings": {"lam0.1": {"reg_lambda": 0.1, "soft_epochs": 1, "hard_epochs": 1}}},
        "power_bert": {"settings": {"default": {"search_epochs": 1, "retrain_epochs": 1}}},
    }
    teacher = {"epochs": 2, "batch_size": 8, "learning_rate": 1e-3}
    config = tiny_squad_config(tmp_path, methods, teacher=teacher, latency={"n_examples": 3, "warmup": 1, "repeats": 1})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake("--cores", "2", "--configfile", str(path), "--directory", str(tmp_path))
    assert result.returncode == 0, result.stderr[-4000:]
    table = pd.read_csv(tmp_path / "results/tables/results.csv")
    assert sorted(table["method"]) == ["dense", "ltp", "power_bert", "top", "topk"]
    assert table["score"].between(0, 100).all()
    metrics = json.loads((tmp_path / "results/eval/squad/top/t30/seed3/metrics.json").read_text())
    assert metrics["primary_metric"] == "f1" and set(metrics["splits"]["validation"]) >= {"exact_match", "f1"}
    # the dev contexts are longer than 48 tokens: several windows per question
    assert metrics["splits"]["validation"]["n_examples"] > 12
    flops = json.loads((tmp_path / "results/flops/squad/topk/half/seed3/flops.json").read_text())
    assert flops["flops_reduction"] > 1.0 and flops["mean_input_length"] <= 48
    top = json.loads((tmp_path / "results/flops/squad/top/t30/seed3/flops.json").read_text())
    assert "target_error_pct" in top
    assert sorted(p.name for p in (tmp_path / "results/tables").glob("*.md")) == ["latency.md", "results.md", "squad.md"]
    assert "SQuAD v1.1 EM" in (tmp_path / "results/tables/squad.md").read_text()


def test_lint_is_clean():
    result = snakemake("--lint", "--configfile", str(ROOT / "config/config.yaml"))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


def test_paper_config_dry_run_plans_every_task_and_method(tmp_path):
    # offline, with bert-base-uncased and the hub datasets in the cache: the preflight passes
    result = snakemake("-n", "--configfile", str(ROOT / "config/config.yaml"), "--quiet", "rules", env=offline_cache(tmp_path))
    assert result.returncode == 0, result.stderr[-4000:]
    assert "preflight: 0 data files, the model, device, latency.cores, results_dir checked" in result.stderr
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    assert config["tasks"] == ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "squad", "squad_v2"]
    counts = {line.split()[0]: int(line.split()[1]) for line in result.stdout.splitlines() if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts["teacher"] == 10 * len(config["seeds"])
    runs = 10 * len(config["seeds"]) * sum(len(m["settings"]) for m in config["methods"].values())
    assert counts["evaluate"] == runs and counts["latency"] == runs
    assert counts["table"] == 3 and counts["figure"] == 3  # GLUE, SQuAD and latency tables; three figures


def test_bad_paper_results_are_rejected_before_any_job(tmp_path):
    paper = tmp_path / "paper.yaml"
    paper.write_text("sources: {}\nresults:\n  - {source: nope, task: sst2, method: top, metric: accuracy, score: 90}\n")
    result = snakemake("-n", "--configfile", str(tiny_config(tmp_path)), "--config", f"paper_results={paper}", "--directory", str(tmp_path))
    assert result.returncode != 0
    assert f"invalid paper results: {paper}: results[0]: unknown source 'nope'" in result.stdout + result.stderr


def test_bad_config_is_rejected_before_any_job(tmp_path):
    config = yaml.safe_load(tiny_config(tmp_path).read_text())
    config["tasks"] = ["sst2", "imdb"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--configfile", str(bad), "--directory", str(tmp_path))
    assert result.returncode != 0
    assert "tasks[1]: unknown task 'imdb'; allowed: cola, sst2" in result.stdout + result.stderr


def test_configfile_on_the_command_line_replaces_the_paper_config(tmp_path):
    # Run from the project root, where config/config.yaml exists: its 8 tasks and 12-layer
    # schedules must not leak into a run of another configuration.
    result = snakemake("-n", "--configfile", str(tiny_config(tmp_path)), "--quiet", "rules")
    assert result.returncode == 0, result.stderr[-4000:]
    counts = {line.split()[0]: int(line.split()[1]) for line in result.stdout.splitlines() if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts["teacher"] == 1 and counts["train"] == 2


def test_paper_config_is_the_default_and_needs_the_workflow_profile(tmp_path):
    # profiles/default (loaded by itself) names config/config.yaml; without a workflow profile
    # nothing does, and the run stops with a one-line hint.
    default = snakemake("-n", "--quiet", "rules", env=offline_cache(tmp_path))
    assert default.returncode == 0, default.stderr[-4000:]
    assert "config/config.yaml" in default.stdout + default.stderr
    counts = {line.split()[0]: int(line.split()[1]) for line in default.stdout.splitlines() if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts["teacher"] == 10 and counts["table"] == 3

    bare = snakemake("-n", "--workflow-profile", "none")
    assert bare.returncode != 0
    assert "no configuration: pass --configfile config/config.yaml" in bare.stdout + bare.stderr


@pytest.mark.parametrize(
    ("key", "value", "option"),
    [
        ("threads", {"train": 2, "eval": 2}, "set-threads"),
        ("resources", {"mem_mb": 4000, "runtime": 30, "gpu": 0}, "set-resources"),
    ],
)
def test_threads_and_resources_in_a_config_point_at_the_profiles(tmp_path, key, value, option):
    config = yaml.safe_load(tiny_config(tmp_path).read_text())
    config[key] = value
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--configfile", str(old), "--directory", str(tmp_path))
    assert result.returncode != 0
    assert f"configuration key '{key}' is no longer read: remove it and set '{option}' in the profile" in result.stdout + result.stderr


def test_seeds_on_the_command_line_multiply_the_runs(tmp_path):
    result = snakemake("-n", "--configfile", str(tiny_config(tmp_path)), "--config", "seeds=[1,2]", "--quiet", "rules")
    assert result.returncode == 0, result.stderr[-4000:]
    counts = {line.split()[0]: int(line.split()[1]) for line in result.stdout.splitlines() if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts["teacher"] == 2 and counts["train"] == 4 and counts["latency"] == 6 and counts["collect"] == 1


def test_preflight_stops_a_dry_run_before_any_job(tmp_path):
    # a folder that is not in the GLUE layout, a misspelt hub model on an offline machine and
    # latency cores this machine lacks: all three named at once, before any job
    config = yaml.safe_load(tiny_config(tmp_path).read_text())
    empty = tmp_path / "downloads"
    empty.mkdir()
    beyond = max(os.sched_getaffinity(0)) + 1
    config.update(glue_dir=str(empty), model="bert-base-uncasd", latency={"cores": str(beyond)})
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--configfile", str(bad), "--directory", str(tmp_path), env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Building DAG" not in output
    assert "preflight found 3 problems before any job ran:" in output
    assert f"- glue_dir: sst2 split 'train': file {empty}/SST-2/train.tsv not found" in output
    assert "- model: 'bert-base-uncasd' is not in the local Hugging Face cache" in output
    assert f"- latency.cores: '{beyond}' names core(s) {beyond}, but this machine lets the workflow run on cores" in output
    assert "(to plan without these checks: --config preflight=False)" in output


def test_duplicate_key_in_a_configfile_is_refused(tmp_path):
    text = tiny_config(tmp_path).read_text() + "tasks:\n- rte\n"
    bad = tmp_path / "twice.yaml"
    bad.write_text(text)
    first = next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith("tasks:"))
    result = snakemake("-n", "--configfile", str(bad), "--directory", str(tmp_path))
    assert result.returncode != 0
    assert f"{bad}, line {len(text.splitlines()) - 1}: duplicate key 'tasks' (first given at line {first})" in result.stdout + result.stderr


def test_schema_error_is_a_few_lines(tmp_path):
    config = yaml.safe_load(tiny_config(tmp_path).read_text())
    config["glue_dri"] = config.pop("glue_dir")
    bad = tmp_path / "typo.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--configfile", str(bad), "--directory", str(tmp_path))
    output = result.stdout + result.stderr  # (dry runs print errors on stdout)
    assert result.returncode != 0
    assert "invalid configuration: (top level): Additional properties are not allowed ('glue_dri' was unexpected)" in output
    assert "Failed validating" not in output and len(output.splitlines()) < 10, output


@pytest.mark.slow
def test_a_failed_job_shows_its_reason_on_the_console(tmp_path):
    # preflight off, so the data mistake reaches the teacher job: the console names it
    config = tiny_config(tmp_path)
    (tmp_path / "glue/SST-2/dev.tsv").write_text("sentence\tlabel\ngood\tpositive\n")
    result = snakemake("--cores", "1", "--configfile", str(config), "--directory", str(tmp_path), "--config", "preflight=False")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    log = "results/logs/teacher/sst2/seed3.log"
    assert f"rule teacher (task=sst2, seed=3) failed (traceback in {log}):" in output
    assert f"{tmp_path}/glue/SST-2/dev.tsv, line 2: unknown label 'positive'" in output
    assert "Traceback" in (tmp_path / log).read_text()
