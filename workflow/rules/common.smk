"""Configuration, paths and helpers shared by every rule (included first by the Snakefile)."""

import logging
import sys
from pathlib import Path

from snakemake.common import NOTHING_TO_BE_DONE_MSG
from snakemake.logging import logger
from snakemake.utils import validate

from top.config import ConfigError, runs, schema_error_message, seeds_from_command_line, validate_config
from top.preflight import PreflightError, check_yaml_files, run_preflight
from top.report.outputs import RUN_DIR, TEACHER_DIR, report_command, where_outputs_are
from top.report.paper import PaperResultsError, load_paper_results
from top.tasks import is_qa_task


# ---- Configuration ---------------------------------------------------------------------
# There is no `configfile:` directive: the paper configuration is named by the profiles
# (`configfile: config/config.yaml` in profiles/default/config.yaml, which Snakemake loads by
# itself, and in profiles/slurm/config.yaml). A --configfile on the command line replaces a
# profile's value, so another configuration REPLACES the paper's instead of being merged into
# it (a `configfile:` directive here would merge the two, mixing the paper's tasks and methods
# into every other run). Without a profile (--workflow-profile none) nothing names a
# configuration, and the run stops here.
if not config.keys() & {"model", "tasks", "methods"}:
    raise WorkflowError(
        "no configuration: pass --configfile config/config.yaml (the paper) or another one "
        "(profiles/default names the paper's, but no workflow profile was loaded)"
    )

# Thread counts and scheduler resources are runtime settings, not part of an experiment:
# they live in the profiles (set-threads, set-resources). Older configurations carried them.
for key, option in (("threads", "set-threads"), ("resources", "set-resources")):
    if key in config:
        raise WorkflowError(
            f"configuration key '{key}' is no longer read: remove it and set '{option}' in the "
            "profile instead (profiles/default/config.yaml, profiles/slurm/config.yaml)"
        )

# A key given twice in a --configfile: Snakemake's YAML loader keeps the last value silently.
# (workflow.configfiles: the files named on the command line or by a profile, absolute paths.)
duplicate_keys = check_yaml_files(workflow.configfiles)
if duplicate_keys:
    raise WorkflowError("invalid configuration file:\n" + "\n".join(f"- {problem}" for problem in duplicate_keys))

seeds_from_command_line(config)
try:
    validate(config, "../schemas/config.schema.yaml")
except WorkflowError as error:
    # the failing key, the schema's message and the offending value, not the whole schema
    raise WorkflowError(schema_error_message(error)) from None
try:
    validate_config(config)
except ConfigError as error:
    raise WorkflowError(f"invalid configuration: {error}") from None

# The papers' numbers: the file shipped with the workflow unless the config names another.
PAPER_RESULTS = config["paper_results"] or str(Path(workflow.current_basedir).parents[1] / "config" / "paper_results.yaml")
try:
    load_paper_results(PAPER_RESULTS)
except PaperResultsError as error:
    raise WorkflowError(f"invalid paper results: {error}") from None


# ---- Preflight -------------------------------------------------------------------------
# What the jobs will need beyond the configuration (top/preflight.py): data files (parsed once,
# verdicts cached in .snakemake/), the model, the device and latency cores of this machine, a
# writable results folder. At workflow start, dry runs included; not in a job that Snakemake
# runs on another machine (it re-reads this file there: not the main process), nor under
# --lint (the only mode that parses without check_envvars). A cluster executor needs --jobs
# (resource_settings.nodes): then the jobs run elsewhere and this machine's device and cores
# say nothing about theirs.
if config["preflight"] and workflow.is_main_process and getattr(workflow, "check_envvars", True):
    try:
        preflight = run_preflight(
            config,
            config_files=[*workflow.configfiles, PAPER_RESULTS],
            machine=workflow.resource_settings.nodes is None,
        )
    except PreflightError as error:
        raise WorkflowError(f"{error}\n(to plan without these checks: --config preflight=False)") from None
    print(preflight.summary(), file=sys.stderr)


# ---- What runs -------------------------------------------------------------------------
RUNS = list(runs(config))  # (task, method, setting, seed) of every configured run
# the GLUE table if any GLUE task runs, the SQuAD table if any SQuAD task does; always latency
TABLES = [name for name, wanted in (("glue", False), ("squad", True)) if any(is_qa_task(t) == wanted for t in config["tasks"])]
TABLES.append("latency")
FIGURES = ["accuracy_vs_flops", "latency_vs_flops", "retained_tokens"]


# ---- Paths -----------------------------------------------------------------------------
# Each output pattern is written once: in its rule's output, or here when a helper needs it
# too. Downstream rules take their inputs from the upstream rule (rules.evaluate.output.lengths).
RESULTS = config["results_dir"]
RUN = RUN_DIR
TEACHER = f"{RESULTS}/{TEACHER_DIR}"
MODEL = f"{RESULTS}/models/{RUN}"


def every_run(pattern):
    """``pattern`` (a per-run output, e.g. rules.flops.output[0]) for every configured run."""
    task, method, setting, seed = zip(*RUNS)
    return expand(pattern, zip, task=task, method=method, setting=setting, seed=seed)


def model_dir(wildcards):
    """Where a run's weights live: the dense reference row is the teacher itself."""
    if wildcards.method == "dense":
        return TEACHER.format(**wildcards)
    return MODEL.format(**wildcards)


def run_info(wildcards):
    return {
        "task": wildcards.task,
        "method": wildcards.method,
        "setting": wildcards.setting,
        "seed": int(wildcards.seed),
    }


# ---- Where the outputs are -------------------------------------------------------------
# Said at the end of every run: by the Snakefile's onsuccess handler, and for a run with nothing
# to do, which Snakemake ends without calling any handler, by a filter on its logger.
def outputs_summary():
    """Where this configuration's tables, figures, report and logs are (top/report/outputs.py)."""
    make_report = report_command(workflow.configfiles, workflow.config_settings.config)
    return "\n".join(where_outputs_are(RESULTS, TABLES, FIGURES, make_report))


class OutputsAfterNothingToDo(logging.Filter):
    """A run with nothing to do calls no handler, onsuccess included: Snakemake logs its
    "Nothing to be done" and returns. This filter on Snakemake's logger appends the summary to
    that message (not in a dry run)."""

    def filter(self, record):
        if record.msg == NOTHING_TO_BE_DONE_MSG and not workflow.dryrun:
            record.msg = f"{record.msg}\n{outputs_summary()}"
        return True


if workflow.is_main_process:
    logger.addFilter(OutputsAfterNothingToDo())
