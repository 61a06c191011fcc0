"""Rule `train`: train one method setting from the teacher."""

import torch

from top.logs import log_to_file
from top.pipeline import train_method

log_to_file(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
w = snakemake.wildcards
train_method(snakemake.config, w.task, w.method, w.setting, int(w.seed), snakemake.input.teacher, snakemake.output[0])
