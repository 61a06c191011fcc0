"""Rule `table`: one of the paper's tables as CSV, Markdown and LaTeX."""

from top.files import job_name, log_to_file, reported_errors
from top.report.tables import write_table

with reported_errors(job_name(snakemake), snakemake.log[0]):
    log_to_file(snakemake.log[0])
    out = snakemake.output
    write_table(snakemake.input.results, snakemake.input.paper, snakemake.wildcards.table, out.csv, out.md, out.tex, model=snakemake.config["model"])
