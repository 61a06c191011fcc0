"""Rule `plot`: task metric vs FLOPs reduction."""

from top.logs import log_to_file
from top.report import accuracy_vs_flops

log_to_file(snakemake.log[0])
accuracy_vs_flops(snakemake.input[0], [snakemake.output.png, snakemake.output.svg])
