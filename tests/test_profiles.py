"""The Snakemake profiles: profiles/slurm (cluster) and profiles/default (workstation).

No SLURM is needed: the cluster profile is checked by dry runs in which every planned job is
also handed to the SLURM plugin's own sbatch builder (``get_submit_command`` and
``set_gres_string``), so the tests see the sbatch options each job would be submitted with.
The workstation profile is checked on the real workflow's plan and by a real run of a small
workflow of sleeping jobs, whose start and end times show what Snakemake ran side by side.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_workflow import tiny_config

ROOT = Path(__file__).resolve().parents[1]
SLURM = str(ROOT / "profiles/slurm")
DEFAULT = str(ROOT / "profiles/default")

# Runs the snakemake command line with the dry-run executor patched to print, for each job it
# plans, the sbatch command line snakemake-executor-plugin-slurm builds for that job. Only the
# job name, log file, account and working directory are stand-ins (they need a live cluster).
SBATCH_DRIVER = r"""
import logging
import sys
from types import SimpleNamespace

import snakemake.executors.dryrun as dryrun
from snakemake.cli import main
from snakemake_executor_plugin_slurm import Executor as SlurmExecutor
from snakemake_executor_plugin_slurm.submit_string import get_submit_command
from snakemake_executor_plugin_slurm.utils import set_gres_string
from snakemake_executor_plugin_slurm.validation import validate_slurm_extra

plan = dryrun.Executor.run_job


def run_job(self, job):
    validate_slurm_extra(job)  # what the plugin checks before submitting
    plugin = SimpleNamespace(_partitions=None, _fallback_partition=None, logger=logging.getLogger("slurm"))
    params = {
        "run_uuid": "RUN",
        "slurm_logfile": "LOG",
        "comment_str": f"rule_{job.name}",
        "account": "",
        # without slurm_partition the plugin would ask sinfo for the cluster's default one
        "partition": SlurmExecutor.get_partition_arg(plugin, job) if job.resources.get("slurm_partition") else "",
        "workdir": None,
    }
    print(f"SBATCH {job.name} :: {get_submit_command(job, params) + set_gres_string(job)}", flush=True)
    plan(self, job)


dryrun.Executor.run_job = run_job
main(sys.argv[1:])
"""


def snakemake(*args: str, cwd: Path = ROOT, driver: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    entry = ["-c", driver] if driver else ["-m", "snakemake"]
    command = [sys.executable, *entry, "--snakefile", str(ROOT / "Snakefile"), *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cluster_config(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny end-to-end configuration (local model and data); threads and resources come
    from the profile."""
    folder = tmp_path_factory.mktemp("profiles")
    return tiny_config(folder), folder


def slurm_profile() -> dict:
    return yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())


def sbatch_calls(result: subprocess.CompletedProcess) -> dict[str, list[list[str]]]:
    """rule -> the sbatch argument lists of its jobs, from the driver's output."""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    calls: dict[str, list[list[str]]] = {}
    for line in result.stdout.splitlines():
        if line.startswith("SBATCH "):
            rule, _, call = line[len("SBATCH ") :].partition(" :: ")
            calls.setdefault(rule, []).append(shlex.split(call))
    return calls


def option(argv: list[str], flag: str) -> str | None:
    """The value of ``flag`` in an argument list (``-p gpu`` or ``--gpus=1``), None if absent."""
    for i, arg in enumerate(argv):
        if arg == flag:
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg[len(flag) + 1 :]
    return None


def plan_sbatch(config: Path, workdir: Path, *profile_args: str) -> tuple[dict[str, list[list[str]]], str]:
    """The sbatch calls of a dry run with the given profile arguments, and its stderr."""
    # A dry run without --cores caps every job's threads at 1; a real cluster run (no --cores)
    # has no cap, so --cores 64 here shows the threads the jobs are really submitted with.
    result = snakemake("-n", "--cores", "64", *profile_args, "--configfile", str(config), "--directory", str(workdir), driver=SBATCH_DRIVER)
    return sbatch_calls(result), result.stderr


def test_slurm_profile_sends_training_to_gpus_and_latency_to_an_exclusive_cpu_node(cluster_config):
    config, workdir = cluster_config
    calls, log = plan_sbatch(config, workdir, "--workflow-profile", SLURM)
    assert "Using workflow specific profile" in log and "profiles/slurm" in log and "profiles/default" not in log
    assert {rule: len(jobs) for rule, jobs in calls.items() if rule in ("teacher", "train", "evaluate", "latency")} == {
        "teacher": 1,
        "train": 2,
        "evaluate": 3,
        "latency": 3,
    }

    profile = slurm_profile()
    assert profile["set-threads"] == {"teacher": 8, "train": 8, "evaluate": 4}
    for rule in ("teacher", "train"):
        assert profile["set-resources"][rule] == {"slurm_partition": "gpu", "gpu": 1, "mem_mb": 32000, "runtime": 720}
    for argv in calls["teacher"] + calls["train"]:
        assert argv[0] == "sbatch"
        assert option(argv, "-p") == "gpu"
        assert option(argv, "--gpus") == "1"  # set-resources of the profile
        assert option(argv, "--cpus-per-task") == "8"  # set-threads of the profile
        assert option(argv, "--mem") == "32000"
        assert option(argv, "-t") == "720"
        assert "--exclusive" not in argv

    for argv in calls["latency"]:
        assert option(argv, "-p") == "cpu"
        assert "--exclusive" in argv  # the node to itself
        assert option(argv, "--gpus") is None and option(argv, "--gres") is None
        assert option(argv, "--cpus-per-task") == "1"  # latency.threads (it pins itself to them)
        assert option(argv, "-t") == "240"

    for argv in calls["evaluate"]:
        assert option(argv, "-p") == "cpu" and option(argv, "--cpus-per-task") == "4"  # set-threads
        assert option(argv, "--mem") == "8000" and option(argv, "-t") == "120"
        assert option(argv, "--gpus") is None and "--exclusive" not in argv
    rest = [argv for rule, jobs in calls.items() if rule not in ("teacher", "train", "evaluate", "latency") for argv in jobs]
    assert {"flops", "collect"} <= set(calls)
    for argv in rest:
        assert option(argv, "-p") == "cpu" and option(argv, "--gpus") is None and "--exclusive" not in argv


def test_slurm_profile_as_global_profile_needs_the_workstation_profile_turned_off(cluster_config):
    # --profile profiles/slurm alone also loads profiles/default as the workflow profile, whose
    # default-resources and set-resources then replace the cluster ones: no GPU partition, no
    # --exclusive. This is why the README says --workflow-profile profiles/slurm, or
    # --profile profiles/slurm --workflow-profile none, which must plan the same jobs.
    config, workdir = cluster_config
    layered, log = plan_sbatch(config, workdir, "--profile", SLURM)
    assert "profiles/default" in log
    assert all(option(argv, "-p") != "gpu" for argv in layered["train"])
    assert all("--exclusive" not in argv for argv in layered["latency"])

    alone, log = plan_sbatch(config, workdir, "--profile", SLURM, "--workflow-profile", "none")
    assert "profiles/default" not in log
    reference, _ = plan_sbatch(config, workdir, "--workflow-profile", SLURM)
    assert {rule: sorted(map(tuple, jobs)) for rule, jobs in alone.items()} == {rule: sorted(map(tuple, jobs)) for rule, jobs in reference.items()}


def test_cluster_run_parses_without_cores(cluster_config):
    # A real cluster run gives no --cores (and neither do the jobs the plugin submits), so a
    # rule whose threads depend on workflow.cores stops the whole workflow before any job.
    # --summary builds the plan exactly like such a run (a dry run would set cores=1).
    config, workdir = cluster_config
    result = snakemake("--workflow-profile", SLURM, "--summary", "--configfile", str(config), "--directory", str(workdir))
    assert result.returncode == 0, result.stderr[-3000:]
    planned = [line.split("\t") for line in result.stdout.splitlines()[1:]]
    assert sum(row[2] == "latency" and row[0].endswith("latency.json") for row in planned) == 3


def job_resources(result: subprocess.CompletedProcess) -> dict[str, list[dict[str, str]]]:
    """rule -> the resources of each of its jobs, from a dry run's job listing."""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs: dict[str, list[dict[str, str]]] = {}
    rule = None
    for line in result.stdout.splitlines():
        if line.startswith("rule ") and line.endswith(":"):
            rule = line[len("rule ") : -1]
        elif rule and line.strip().startswith("resources: "):
            pairs = (item.split("=", 1) for item in line.strip()[len("resources: ") :].split(", "))
            jobs.setdefault(rule, []).append(dict(pairs))
            rule = None
    return jobs


def test_default_profile_is_loaded_by_itself_and_gives_latency_every_bench_slot(cluster_config):
    config, workdir = cluster_config
    result = snakemake("-n", "--cores", "8", "--configfile", str(config), "--directory", str(workdir))
    assert "Using workflow specific profile" in result.stderr and "profiles/default" in result.stderr
    jobs = job_resources(result)
    assert len(jobs["latency"]) == 3
    assert all(job["bench_slot"] == "100" for job in jobs["latency"])
    others = [job for rule, rule_jobs in jobs.items() if rule != "latency" for job in rule_jobs]
    assert {rule for rule in jobs} >= {"teacher", "train", "evaluate", "flops", "collect"}
    assert others and all(job["bench_slot"] == "1" for job in others)

    # A smaller pool given on the command line still goes to the latency jobs whole.
    smaller = job_resources(snakemake("-n", "--cores", "8", "--resources", "bench_slot=4", "--configfile", str(config), "--directory", str(workdir)))
    assert all(job["bench_slot"] == "4" for job in smaller["latency"])


def job_threads(result: subprocess.CompletedProcess) -> dict[str, set[int]]:
    """rule -> the thread counts of its jobs, from a dry run's job listing (1 is not listed)."""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    threads: dict[str, set[int]] = {}
    rule = None
    for line in result.stdout.splitlines():
        if line.startswith(("rule ", "localrule ")) and line.endswith(":"):
            rule = line.split()[1][:-1]
            threads.setdefault(rule, set())
        elif rule and line.strip().startswith("threads: "):
            threads[rule].add(int(line.split()[1]))
    return {rule: counts or {1} for rule, counts in threads.items()}


def test_default_profile_sets_threads_capped_at_cores(cluster_config):
    config, workdir = cluster_config
    plan = job_threads(snakemake("-n", "--cores", "8", "--configfile", str(config), "--directory", str(workdir)))
    assert {rule: plan[rule] for rule in ("teacher", "train", "evaluate", "latency", "flops")} == {
        "teacher": {8},
        "train": {8},
        "evaluate": {4},
        "latency": {1},
        "flops": {1},
    }
    small = job_threads(snakemake("-n", "--cores", "2", "--configfile", str(config), "--directory", str(workdir)))
    assert small["teacher"] == small["train"] == small["evaluate"] == {2} and small["latency"] == {1}


SLEEPERS = """
rule all:
    input: expand("done/other{i}", i=range(4)), expand("done/latency{i}", i=range(2))

rule other:
    output: "done/other{i}"
    threads: 1
    shell: "date +%s.%N > {output}; sleep 1; date +%s.%N >> {output}"

rule latency:
    output: "done/latency{i}"
    threads: 1
    shell: "date +%s.%N > {output}; sleep 1; date +%s.%N >> {output}"
"""


def run_sleepers(folder: Path, *profile_args: str) -> dict[str, tuple[float, float]]:
    folder.mkdir()
    (folder / "Snakefile").write_text(SLEEPERS)
    # profiles/default names config/config.yaml (relative to the working directory)
    (folder / "config").mkdir()
    (folder / "config/config.yaml").write_text("{}\n")
    command = [sys.executable, "-m", "snakemake", "--cores", "4", *profile_args]
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    times = {}
    for path in (folder / "done").iterdir():
        start, end = map(float, path.read_text().split())
        times[path.name] = (start, end)
    return times


def overlapping(times: dict[str, tuple[float, float]]) -> set[tuple[str, str]]:
    """Pairs of jobs (one of them a latency job) that ran at the same time."""
    return {
        (a, b)
        for a, (start_a, end_a) in times.items()
        if a.startswith("latency")
        for b, (start_b, end_b) in times.items()
        if b != a and start_a < end_b and start_b < end_a
    }


def test_default_profile_runs_nothing_beside_a_latency_job(tmp_path):
    # Four other 1-thread jobs and two 1-thread latency jobs on 4 cores (the other rule is not
    # named train: the profile's set-threads would give it 8 threads, capped at the 4 cores).
    guarded = run_sleepers(tmp_path / "profile", "--workflow-profile", DEFAULT)
    assert len(guarded) == 6
    assert overlapping(guarded) == set()
    # ...while the other jobs still ran side by side,
    assert any(
        start_a < end_b and start_b < end_a
        for a, (start_a, end_a) in guarded.items()
        if a.startswith("other")
        for b, (start_b, end_b) in guarded.items()
        if b.startswith("other") and b != a
    )
    # and without the profile, Snakemake does put jobs beside a latency job.
    unguarded = run_sleepers(tmp_path / "none", "--workflow-profile", "none")
    assert overlapping(unguarded)
