"""Rule `table`: one of the paper's tables as CSV, Markdown and LaTeX."""

from top.logs import log_to_file
from top.report.tables import write_table

log_to_file(snakemake.log[0])
out = snakemake.output
write_table(snakemake.input.results, snakemake.input.paper, snakemake.wildcards.table, out.csv, out.md, out.tex, model=snakemake.config["model"])
