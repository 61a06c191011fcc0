"""Rule `collect`: one CSV row per run, and one per run and layer."""

from top.logs import log_to_file
from top.report.tables import collect

log_to_file(snakemake.log[0])
inp = snakemake.input
collect(inp.metrics, inp.flops, inp.latency, snakemake.output.results, snakemake.output.layers)
