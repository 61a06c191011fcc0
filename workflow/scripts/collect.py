"""Rule `collect`: one CSV row per run."""

from top.logs import log_to_file
from top.report import collect

log_to_file(snakemake.log[0])
collect(snakemake.input.metrics, snakemake.input.flops, snakemake.input.latency, snakemake.output[0])
