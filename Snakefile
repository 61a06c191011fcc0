"""Token-pruning benchmark: teacher fine-tune -> method training -> evaluation (gather mode)
-> FLOPs -> pinned CPU latency -> the paper's tables (with the papers' numbers beside ours)
and figures, registered for `snakemake --report report.html`.

Entry point: `snakemake --cores 8` runs the paper configuration (see README.md). This is the
main Snakefile because Snakemake takes the default target (`rule all`) only from the main
file, not from an included one. Configuration, paths and helpers: workflow/rules/common.smk;
the rules: workflow/rules/*.smk; thread counts and scheduler resources: profiles/."""

from snakemake.logging import logger
from snakemake.utils import min_version

min_version("9.0")


report: "workflow/report/workflow.rst"


wildcard_constraints:
    task="[a-z0-9_]+",
    method="[a-z0-9_]+",
    setting="[A-Za-z0-9_.-]+",
    seed="[0-9]+",


include: "workflow/rules/common.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        rules.collect.output.results,
        rules.runs_table.output,
        rules.paper.input,
    default_target: True


# Every run ends with where its outputs are (a run with nothing to do too: common.smk).
onsuccess:
    logger.info(outputs_summary())
