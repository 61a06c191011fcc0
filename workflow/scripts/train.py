"""Rule `train`: train one method setting from the teacher."""

import torch

from top.files import job_name, log_to_file, reported_errors
from top.pipeline import train_method

with reported_errors(job_name(snakemake), snakemake.log[0]):
    log_to_file(snakemake.log[0])
    torch.set_num_threads(snakemake.threads)
    w = snakemake.wildcards
    train_method(snakemake.config, w.task, w.method, w.setting, int(w.seed), snakemake.input.teacher, snakemake.output[0])
