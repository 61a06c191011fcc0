"""Rule `runs_table`: every run's row in Markdown."""

from top.logs import log_to_file
from top.report.tables import markdown_table

log_to_file(snakemake.log[0])
markdown_table(snakemake.input[0], snakemake.output[0])
