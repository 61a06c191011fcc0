"""The workflow on a real SLURM cluster, through the repository's SLURM profile.

Needs a running cluster: the single-node one of ``scripts/slurm/start.sh`` (as root; ``.ci/run``
starts it, ``make test-slurm`` too). Without one the cluster tests are skipped, with the reason
``start.sh --check`` gives; under CI (``CI=true`` or ``REQUIRE_SLURM=1``, which ``.ci/run`` sets)
they fail instead.

One small real workflow (the tiny configuration of tests/test_workflow.py: random tiny model,
made-up SST-2, dense and one top-k setting; the teacher trains 3 epochs on 960 rows, so that it
can be cancelled between two epochs) is submitted with ``--workflow-profile
profiles/slurm-local`` (profiles/slurm without accounting and without GPUs). The first command
is interrupted: the teacher's SLURM job is cancelled (``scancel``) once it has written its first
per-epoch checkpoint, the plugin resubmits it (``retries: 1``) and it resumes, and it is
cancelled again after its next epoch, so the first command fails. The same command is then run
again and must resume the teacher from its checkpoint and finish everything. Meanwhile the same
configuration runs without SLURM (``--cores``, profiles/default) as the reference.

Without accounting ``sacct`` knows nothing, so what SLURM did is read from ``scontrol show job``
(start.sh keeps finished jobs for an hour, MinJobAge) and from the plugin's logs in
``.snakemake/slurm_logs/``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import write_tiny_sst2
from tests.test_workflow import tiny_config

ROOT = Path(__file__).resolve().parents[1]
START = ROOT / "scripts/slurm/start.sh"
LOCAL_PROFILE = ROOT / "profiles/slurm-local"
RUNS = ["sst2/dense/default/seed3", "sst2/topk/half/seed3"]
TEACHER_JOB = "rule_teacher_wildcards_sst2_3"  # the plugin's --comment for the teacher's job


def cluster_required() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes") or os.environ.get("REQUIRE_SLURM") == "1"


def no_cluster(reason: str):
    if cluster_required():
        pytest.fail(f"SLURM cluster required under CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def cluster() -> dict:
    """The running cluster's node (name, CPUs, memory in MB); skips (fails under CI) without one."""
    if not START.exists() or shutil.which("bash") is None:
        no_cluster(f"{START} or bash missing")
    check = subprocess.run([str(START), "--check"], capture_output=True, text=True, timeout=60)
    if check.returncode != 0:
        no_cluster((check.stdout + check.stderr).strip())
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        no_cluster("snakemake-executor-plugin-slurm is not installed (pip install -e '.[slurm]')")
    name, cpus, memory = subprocess.run(
        ["sinfo", "-h", "-N", "-p", "cpu", "-o", "%N %c %m"], capture_output=True, text=True, check=True
    ).stdout.split()[:3]
    return {"name": name, "cpus": int(cpus), "memory_mb": int(memory), "check": check.stdout.strip()}


# ---- reading SLURM's records ---------------------------------------------------------------------


def job_record(job_id: str) -> dict[str, str]:
    """``scontrol show job -o``'s fields of one job (the values used here contain no spaces)."""
    line = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"(?:^|\s)([\w/:]+)=(\S*)", line))


def rule_of(record: dict[str, str]) -> str:
    """The rule a job ran, from the plugin's --comment (rule_<rule> or rule_<rule>_wildcards_...)."""
    return re.fullmatch(r"rule_(.+?)(?:_wildcards_.*)?", record["Comment"]).group(1)


def submitted(output: str) -> dict[str, str]:
    """SLURM job id -> plugin log file, from Snakemake's output."""
    return dict((job, log) for job, log in re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (.+?)\)\.", output))


def job_stats(output: str) -> dict[str, int]:
    """Snakemake's "Job stats" table (the jobs a run plans): rule -> count."""
    lines = output[output.index("Job stats:") :].splitlines()[3:]
    counts = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


def timestamp(value: str) -> float:
    return time.mktime(time.strptime(value, "%Y-%m-%dT%H:%M:%S"))


def time_limit(minutes: int) -> str:
    """A runtime in minutes as scontrol shows the TimeLimit ([days-]hh:mm:ss)."""
    days, minutes = divmod(minutes, 24 * 60)
    clock = f"{minutes // 60:02d}:{minutes % 60:02d}:00"
    return f"{days}-{clock}" if days else clock


# ---- the runs ----------------------------------------------------------------------------------


def cluster_test_config(folder: Path) -> Path:
    """tests/test_workflow.py's tiny configuration, with dense and one top-k setting, and a teacher
    that trains long enough (3 epochs of 120 steps) to be cancelled between two epochs."""
    path = tiny_config(folder)
    config = yaml.safe_load(path.read_text())
    config["glue_dir"] = str(write_tiny_sst2(folder / "glue", train_rows=960))
    config["teacher"]["epochs"] = 3
    del config["methods"]["topk"]["settings"]["quarter"]
    path.write_text(yaml.safe_dump(config))
    return path


def command(config: Path, workdir: Path, cores: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--cores", str(cores),
            "--configfile", str(config), "--directory", str(workdir), *args]  # fmt: skip


def environment() -> dict[str, str]:
    env = dict(os.environ)
    # `snakemake` and `python` of this environment first on PATH: SLURM jobs inherit this
    # environment (the plugin submits with --export=ALL), PYTHONPATH included if set.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # OpenMP threads that sleep instead of spinning while they wait: on a busy machine spinning
    # threads make every training step many times slower. The results do not change.
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def wait_for(condition, timeout: float, what: str, process: subprocess.Popen | None = None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the first run ended (rc {process.returncode}) while waiting for {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def running_teacher_job(exclude: set[str]) -> str | None:
    lines = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i|%k"], capture_output=True, text=True).stdout.splitlines()
    jobs = [job for job, comment in (line.split("|", 1) for line in lines) if comment.strip() == TEACHER_JOB and job not in exclude]
    return jobs[0] if jobs else None


@dataclass
class ClusterRun:
    cluster: dict
    config: Path
    local: Path  # the workdir of the run without SLURM
    remote: Path  # the workdir of the SLURM runs
    first: str  # output of the interrupted first command
    first_teacher_log: str  # the teacher's log after it (its second attempt's)
    second: str  # output of the same command, run again
    cancelled: list[tuple[str, int]]  # (SLURM job id, epoch of the checkpoint it left), in order
    seconds: dict[str, float]


@pytest.fixture(scope="module")
def cluster_run(cluster, tmp_path_factory) -> ClusterRun:
    started = time.monotonic()
    folder = tmp_path_factory.mktemp("slurm")
    config = cluster_test_config(folder)
    local, remote = folder / "local", folder / "cluster"
    local.mkdir()
    remote.mkdir()
    cores = cluster["cpus"]
    env = environment()
    logs = {name: folder / f"{name}.log" for name in ("reference", "first", "second")}  # the commands' output

    def start(argv: list[str], name: str) -> subprocess.Popen:
        with logs[name].open("w") as out:
            return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

    # The reference: the same configuration without SLURM (the workstation profile), as far as
    # the metrics and FLOPs (no latency: its numbers differ from run to run anyway).
    targets = [f"results/{kind}/{run}/{name}" for run in RUNS for kind, name in (("eval", "metrics.json"), ("flops", "flops.json"))]
    reference = start(command(config, local, cores, *targets), "reference")

    on_cluster = command(config, remote, cores, "--workflow-profile", str(LOCAL_PROFILE))
    checkpoint = remote / "results/teachers/sst2/seed3.ckpt/checkpoint.pt"
    cancelled: list[tuple[str, int]] = []
    first, second = start(on_cluster, "first"), None
    try:
        # Cancel the teacher's job after its first epoch, then its resubmission (retries: 1)
        # after the next one: each time as soon as a new checkpoint is written.
        seen = 0.0
        for _ in range(2):
            stamp = wait_for(
                lambda s=seen: checkpoint.exists() and checkpoint.stat().st_mtime > s and checkpoint.stat().st_mtime,
                300,
                "a new teacher checkpoint",
                first,
            )
            job = wait_for(lambda: running_teacher_job({j for j, _ in cancelled}), 30, "the teacher's running SLURM job", first)
            subprocess.run(["scancel", job], check=True)
            wait_for(lambda j=job: job_record(j)["JobState"] not in ("RUNNING", "COMPLETING"), 60, f"SLURM job {job} to end")
            # the checkpoint the cancelled job left (it may have written one more before it died)
            cancelled.append((job, torch.load(checkpoint, weights_only=False)["epoch"]))
            seen = max(stamp, checkpoint.stat().st_mtime)
        first.wait(300)
        # Snakemake empties a job's log before each attempt: keep the second attempt's
        first_teacher_log = (remote / "results/logs/teacher/sst2/seed3.log").read_text()
        first_done = time.monotonic()

        second = start(on_cluster, "second")
        second.wait(900)
        second_done = time.monotonic()
        reference.wait(600)
    finally:
        for process in (first, second, reference):
            if process is not None and process.poll() is None:
                process.terminate()  # a Snakemake run on SLURM cancels its jobs
                process.wait(60)
    output = {name: path.read_text() for name, path in logs.items()}
    assert reference.returncode == 0, output["reference"][-4000:]
    assert second.returncode == 0, output["second"][-6000:]
    return ClusterRun(
        cluster=cluster,
        config=config,
        local=local,
        remote=remote,
        first=output["first"],
        first_teacher_log=first_teacher_log,
        second=output["second"],
        cancelled=cancelled,
        seconds={"first command": first_done - started, "second command": second_done - first_done, "total": time.monotonic() - started},
    )


# ---- no cluster needed ---------------------------------------------------------------------------


def test_slurm_local_profile_is_the_slurm_profile_without_accounting_and_gpus():
    # profiles/slurm-local must not drift from profiles/slurm: it differs where its header says.
    slurm = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    local = yaml.safe_load((LOCAL_PROFILE / "config.yaml").read_text())
    assert {key: local[key] for key in local.keys() - slurm.keys()} == {
        "slurm-status-command": "squeue",
        "slurm-no-account": True,
        "slurm-init-seconds-before-status-checks": 5,
        "slurm-keep-successful-logs": True,
    }
    assert slurm.keys() <= local.keys()
    assert {key for key in slurm if slurm[key] != local[key]} == {"set-resources"}
    cpu_training = {"slurm_partition": "cpu", "gpu": 0, "mem_mb": 8000, "runtime": 720}
    assert local["set-resources"] == {**slurm["set-resources"], "teacher": cpu_training, "train": cpu_training}


def readme_overrides() -> list[str]:
    """The arguments after ``--workflow-profile profiles/slurm --cores $(nproc)`` in the README's
    command that turns profiles/slurm into profiles/slurm-local on the command line."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(\.venv/bin/snakemake --workflow-profile profiles/slurm --cores \$\(nproc\) \\\n.*?)```", readme, re.S).group(1)
    args = shlex.split(block.replace("\\\n", " "))
    assert args[:5] == [".venv/bin/snakemake", "--workflow-profile", "profiles/slurm", "--cores", "$(nproc)"], args
    return args[5:]


@pytest.mark.slow
def test_readme_command_line_form_plans_the_sbatch_calls_of_slurm_local(tmp_path):
    from tests.test_profiles import SLURM, option, plan_sbatch

    config = tiny_config(tmp_path)
    overrides = readme_overrides()
    assert "--slurm-status-command" in overrides and "--slurm-no-account" in overrides
    profile, _ = plan_sbatch(config, tmp_path, "--workflow-profile", str(LOCAL_PROFILE))
    command_line, _ = plan_sbatch(config, tmp_path, "--workflow-profile", SLURM, *overrides)
    assert {rule: sorted(map(tuple, jobs)) for rule, jobs in command_line.items()} == {
        rule: sorted(map(tuple, jobs)) for rule, jobs in profile.items()
    }
    assert all("--exclusive" in argv for argv in profile["latency"])
    assert all(option(argv, "-p") == "cpu" and option(argv, "--gpus") is None for argv in profile["teacher"] + profile["train"])


# ---- on the cluster ------------------------------------------------------------------------------


@pytest.mark.slurm
def test_cluster_refuses_gpu_requests_on_a_node_without_gpus(cluster):
    # Why profiles/slurm-local sends training to the cpu partition: profiles/slurm's GPU job
    # (sbatch -p gpu --gpus=1) cannot be placed on this cluster.
    result = subprocess.run(["sbatch", "--test-only", "-p", "gpu", "--gpus=1", "--wrap", "true"], capture_output=True, text=True)
    assert result.returncode != 0 and "Invalid generic resource" in result.stderr
    ok = subprocess.run(["sbatch", "--test-only", "-p", "gpu", "--wrap", "true"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


@pytest.mark.slurm
@pytest.mark.slow
def test_every_rule_ran_as_a_slurm_job(cluster_run):
    print(f"cluster: {cluster_run.cluster['check']}; seconds: {cluster_run.seconds}")
    output = cluster_run.second
    planned = job_stats(output)
    assert planned["teacher"] == 1 and planned["train"] == 1 and planned["latency"] == 2 and planned["figure"] == 3
    # Snakemake ran nothing itself but the target rule `all` (no action)
    assert set(re.findall(r"^localrule (\w+):", output, re.M)) == {"all"}
    jobs = submitted(output)
    records = {job: job_record(job) for job in jobs}
    ran: dict[str, int] = {}
    for job, record in records.items():
        assert record["JobState"] == "COMPLETED" and record["ExitCode"] == "0:0", (job, record)
        assert record["NodeList"] == cluster_run.cluster["name"]
        ran[rule_of(record)] = ran.get(rule_of(record), 0) + 1
        # the plugin's log of each job (kept: slurm-keep-successful-logs) shows its rule ran
        log = Path(jobs[job]).read_text()
        assert f"rule {rule_of(record)}:" in log and "1 of 1 steps (100%) done" in log, jobs[job]
    assert ran == {rule: count for rule, count in planned.items() if rule != "all"}


@pytest.mark.slurm
@pytest.mark.slow
def test_outputs_are_complete_and_equal_to_a_run_without_slurm(cluster_run):
    remote, local = cluster_run.remote, cluster_run.local
    for run in RUNS:
        for path in (f"results/eval/{run}/metrics.json", f"results/flops/{run}/flops.json"):
            assert json.loads((remote / path).read_text()) == json.loads((local / path).read_text()), path
        latency = json.loads((remote / f"results/latency/{run}/latency.json").read_text())
        assert set(latency["timings"]["runners"]) == {"dense", "dense_harness", "pruned", "ideal"}  # not compared: timings
    # the same weights and training records (losses, the epoch kept), teacher and student
    for model in ("results/teachers/sst2/seed3", "results/models/sst2/topk/half/seed3"):
        for name in ("model.safetensors", "pruning.json"):
            assert (remote / model / name).read_bytes() == (local / model / name).read_bytes(), f"{model}/{name}"
    tables = remote / "results/tables"
    results = tables / "results.csv"
    assert len(results.read_text().splitlines()) == 1 + len(RUNS)
    for table in ("glue", "latency"):
        for kind in ("csv", "md", "tex"):
            assert (tables / f"{table}.{kind}").stat().st_size > 0
    assert (tables / "results.md").stat().st_size > 0 and (tables / "layers.csv").stat().st_size > 0
    for figure in ("accuracy_vs_flops", "latency_vs_flops", "retained_tokens"):
        for kind in ("png", "svg", "pdf"):
            assert (remote / f"results/plots/{figure}.{kind}").stat().st_size > 1000


@pytest.mark.slurm
@pytest.mark.slow
def test_resources_reached_sbatch_as_the_profile_says(cluster_run):
    profile = yaml.safe_load((LOCAL_PROFILE / "config.yaml").read_text())
    config = yaml.safe_load(cluster_run.config.read_text())
    cores = cluster_run.cluster["cpus"]
    seen = set()
    for job in submitted(cluster_run.second):
        record = job_record(job)
        rule = rule_of(record)
        resources = {**profile["default-resources"], **profile["set-resources"].get(rule, {})}
        # threads: the profile's set-threads (the latency rule: the configuration's), capped at --cores
        threads = profile["set-threads"].get(rule, config.get("latency", {}).get("threads", 1) if rule == "latency" else 1)
        assert record["Partition"] == resources["slurm_partition"], (rule, record)
        assert record["CPUs/Task"] == str(min(threads, cores)), (rule, record)
        assert record["MinMemoryNode"] == f"{resources['mem_mb']}M", (rule, record)
        assert record["TimeLimit"] == time_limit(resources["runtime"]), (rule, record)
        assert "gpu" not in record["TRES"], (rule, record)
        seen.add((rule, record["Partition"], record["CPUs/Task"], record["MinMemoryNode"], record["TimeLimit"]))
    print(sorted(seen))
    assert {rule for rule, *_ in seen} >= {"teacher", "train", "evaluate", "flops", "latency", "collect", "table", "figure"}


@pytest.mark.slurm
@pytest.mark.slow
def test_latency_jobs_had_the_node_to_themselves(cluster_run):
    node = cluster_run.cluster
    ours = {job: job_record(job) for job in submitted(cluster_run.second)}
    latency = {job: record for job, record in ours.items() if rule_of(record) == "latency"}
    assert len(latency) == len(RUNS)
    # every job SLURM still remembers (MinJobAge), of this run or not, that ran on the node
    listed = subprocess.run(["squeue", "-h", "-t", "all", "-w", node["name"], "-o", "%i"], capture_output=True, text=True, check=True).stdout.split()
    everything = {job: job_record(job) for job in listed}
    for job, record in latency.items():
        assert record["OverSubscribe"] == "NO", record  # sbatch --exclusive
        assert record["NumCPUs"] == str(node["cpus"]), record  # the whole node, though it asked for 1 CPU
        start, end = timestamp(record["StartTime"]), timestamp(record["EndTime"])
        beside = [
            other
            for other, rec in everything.items()
            if other != job and rec.get("StartTime", "Unknown") not in ("Unknown", "None")
            and timestamp(rec["StartTime"]) < end and start < (timestamp(rec["EndTime"]) if rec["EndTime"] not in ("Unknown", "None") else float("inf"))
        ]  # fmt: skip
        assert beside == [], f"jobs {beside} ran beside latency job {job}"
    # the others shared the node (OverSubscribe=OK): exclusivity came from the latency rule's profile entry
    assert all(record["OverSubscribe"] == "OK" for job, record in ours.items() if job not in latency)


@pytest.mark.slurm
@pytest.mark.slow
def test_cancelled_training_resumes_from_its_checkpoint(cluster_run):
    # The first command: the teacher's job cancelled after epoch 1, resubmitted by Snakemake
    # (retries: 1) and resumed, cancelled again after epoch 2; so the command failed.
    (first_job, first_epoch), (second_job, second_epoch) = cluster_run.cancelled
    assert (first_epoch, second_epoch) == (0, 1)  # 0-based: after the 1st and the 2nd of 3 epochs
    for job in (first_job, second_job):
        assert job_record(job)["JobState"] == "CANCELLED"
        assert f"SLURM-job '{job}' failed, SLURM status is: 'CANCELLED'" in cluster_run.first
    assert list(submitted(cluster_run.first)) == [first_job, second_job]  # nothing else could run
    assert "Error in rule teacher" in cluster_run.first
    # the resubmitted job (attempt 2) resumed after epoch 1 (0-based 0)
    resumed = re.findall(r"resuming stage 'finetune' after epoch (\d+)", cluster_run.first_teacher_log)
    assert resumed == ["0"], cluster_run.first_teacher_log[-3000:]
    # The same command again: rerun-incomplete; the teacher's third attempt resumed after epoch 2.
    log = (cluster_run.remote / "results/logs/teacher/sst2/seed3.log").read_text()
    resumed = re.findall(r"resuming stage 'finetune' after epoch (\d+)", log)
    assert resumed == ["1"], log[-3000:]
    assert not (cluster_run.remote / "results/teachers/sst2/seed3.ckpt").exists()  # dropped once saved
    # ...and ended as the uninterrupted run: same metrics, same weights, same loss history.
    for path in ("results/eval/sst2/dense/default/seed3/metrics.json", "results/teachers/sst2/seed3/model.safetensors",
                 "results/teachers/sst2/seed3/pruning.json"):  # fmt: skip
        assert (cluster_run.remote / path).read_bytes() == (cluster_run.local / path).read_bytes(), path
