# Entry point: `snakemake --cores 8 --configfile config/config.yaml` (see README.md).
# The workflow lives in workflow/Snakefile; a default target must be declared in this file.
include: "workflow/Snakefile"


rule default:
    input:
        rules.all.input,
    default_target: True
