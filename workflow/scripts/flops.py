"""Rule `flops`: analytic FLOPs from the evaluation's per-example lengths."""

from top.files import job_name, log_to_file, reported_errors
from top.pipeline import count_flops

with reported_errors(job_name(snakemake), snakemake.log[0]):
    log_to_file(snakemake.log[0])
    count_flops(snakemake.input.model, snakemake.input.lengths, snakemake.output[0], snakemake.params.info)
