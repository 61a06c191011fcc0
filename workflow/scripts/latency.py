"""Rule `latency`: pin the process BEFORE torch is imported, then time dense vs pruned."""

from top.measure.pinning import parse_cores, pin_process

lat = snakemake.config["latency"]
pin_process(parse_cores(str(lat["cores"])), int(lat["threads"]))

from top.logs import log_to_file  # noqa: E402  (torch must come after pinning)
from top.pipeline import measure_latency  # noqa: E402

log_to_file(snakemake.log[0])
measure_latency(
    snakemake.config,
    snakemake.wildcards.task,
    snakemake.input.dense,
    snakemake.input.model,
    snakemake.output[0],
    snakemake.params.info,
)
