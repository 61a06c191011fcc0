"""Rule `latency`: pin the process BEFORE torch is imported, then time dense vs pruned."""

from top.files import job_name, reported_errors  # no torch import (torch must come after pinning)
from top.measure.pinning import parse_cores, pin_process

with reported_errors(job_name(snakemake), snakemake.log[0]):
    lat = snakemake.config["latency"]
    pin_process(parse_cores(str(lat["cores"])), int(lat["threads"]))

    from top.files import log_to_file
    from top.pipeline import measure_latency

    log_to_file(snakemake.log[0])
    measure_latency(
        snakemake.config,
        snakemake.wildcards.task,
        snakemake.input.dense,
        snakemake.input.model,
        snakemake.output[0],
        snakemake.params.info,
    )
