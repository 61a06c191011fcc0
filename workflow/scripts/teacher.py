"""Rule `teacher`: fine-tune the pretrained model on one task."""

import torch

from top.files import job_name, log_to_file, reported_errors
from top.pipeline import finetune_teacher

with reported_errors(job_name(snakemake), snakemake.log[0]):
    log_to_file(snakemake.log[0])
    torch.set_num_threads(snakemake.threads)
    finetune_teacher(snakemake.config, snakemake.wildcards.task, int(snakemake.wildcards.seed), snakemake.output[0])
