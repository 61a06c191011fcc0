"""Rule `evaluate`: dev-set metrics in gather mode, and per-example lengths."""

import torch

from top.files import job_name, log_to_file, reported_errors
from top.pipeline import evaluate_run

with reported_errors(job_name(snakemake), snakemake.log[0]):
    log_to_file(snakemake.log[0])
    torch.set_num_threads(snakemake.threads)
    evaluate_run(
        snakemake.config,
        snakemake.wildcards.task,
        snakemake.input.model,
        snakemake.output.metrics,
        snakemake.output.lengths,
        snakemake.params.info,
    )
