"""Rule `flops`: analytic FLOPs from the evaluation's per-example lengths."""

from top.logs import log_to_file
from top.pipeline import count_flops

log_to_file(snakemake.log[0])
count_flops(snakemake.input.model, snakemake.input.lengths, snakemake.output[0], snakemake.params.info)
