"""Rule `teacher`: fine-tune the pretrained model on one task."""

import torch

from top.logs import log_to_file
from top.pipeline import finetune_teacher

log_to_file(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
finetune_teacher(snakemake.config, snakemake.wildcards.task, int(snakemake.wildcards.seed), snakemake.output[0])
