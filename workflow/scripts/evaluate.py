"""Rule `evaluate`: dev-set metrics in gather mode, and per-example lengths."""

import torch

from top.logs import log_to_file
from top.pipeline import evaluate_run

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
