# Threads and scheduler resources (mem_mb, runtime, gpu) of these rules are set by the
# profiles (set-threads, set-resources), not here: they depend on the machine, not the experiment.


rule teacher:
    """Fine-tune the pretrained model on a task: the shared teacher and the dense row."""
    output:
        directory(TEACHER),
    log:
        f"{RESULTS}/logs/teacher/{{task}}/seed{{seed}}.log",
    conda:
        "../envs/harness.yaml"
    script:
        "../scripts/teacher.py"


rule train:
    """Train one method (one setting, one seed) starting from the teacher."""
    input:
        teacher=rules.teacher.output[0],
    output:
        directory(MODEL),
    log:
        f"{RESULTS}/logs/train/{RUN}.log",
    wildcard_constraints:
        method="(?!dense$)[a-z0-9_]+",
    conda:
        "../envs/harness.yaml"
    script:
        "../scripts/train.py"
