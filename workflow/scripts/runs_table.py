"""Rule `runs_table`: every run's row in Markdown."""

from top.files import job_name, log_to_file, reported_errors
from top.report.tables import markdown_table

with reported_errors(job_name(snakemake), snakemake.log[0]):
    log_to_file(snakemake.log[0])
    markdown_table(snakemake.input[0], snakemake.output[0])
