"""Rule `collect`: one CSV row per run, and one per run and layer."""

from top.files import job_name, log_to_file, reported_errors
from top.report.tables import collect

with reported_errors(job_name(snakemake), snakemake.log[0]):
    log_to_file(snakemake.log[0])
    inp = snakemake.input
    collect(inp.metrics, inp.flops, inp.latency, snakemake.output.results, snakemake.output.layers)
