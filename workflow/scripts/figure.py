"""Rule `figure`: one of the paper's figures as PNG, SVG and PDF."""

from top.files import job_name, log_to_file, reported_errors
from top.report.plots import draw_figure

with reported_errors(job_name(snakemake), snakemake.log[0]):
    log_to_file(snakemake.log[0])
    inp, out = snakemake.input, snakemake.output
    draw_figure(snakemake.wildcards.figure, inp.results, inp.layers, inp.paper, snakemake.config["model"], [out.png, out.svg, out.pdf])
