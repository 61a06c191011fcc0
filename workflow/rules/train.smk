rule teacher:
    """Fine-tune the pretrained model on a task: the shared teacher and the dense row."""
    output:
        directory(f"{RESULTS}/teachers/{{task}}/seed{{seed}}"),
    log:
        "logs/teacher/{task}/seed{seed}.log",
    threads: config["threads"]["train"]
    resources:
        mem_mb=config["resources"]["mem_mb"],
        runtime=config["resources"]["runtime"],
        gpu=config["resources"]["gpu"],
    conda:
        "../envs/harness.yaml"
    script:
        "../scripts/teacher.py"


rule train:
    """Train one method (one setting, one seed) starting from the teacher."""
    input:
        teacher=f"{RESULTS}/teachers/{{task}}/seed{{seed}}",
    output:
        directory(f"{RESULTS}/models/{RUN}"),
    log:
        f"logs/train/{RUN}.log",
    wildcard_constraints:
        method="(?!dense$)[a-z0-9_]+",
    threads: config["threads"]["train"]
    resources:
        mem_mb=config["resources"]["mem_mb"],
        runtime=config["resources"]["runtime"],
        gpu=config["resources"]["gpu"],
    conda:
        "../envs/harness.yaml"
    script:
        "../scripts/train.py"
