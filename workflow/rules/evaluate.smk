rule evaluate:
    """Task metrics on the dev split(s) in gather mode, and per-example per-layer lengths.
    Threads: set-threads in the profiles."""
    input:
        model=model_dir,
    output:
        metrics=f"{RESULTS}/eval/{RUN}/metrics.json",
        lengths=f"{RESULTS}/eval/{RUN}/lengths.npz",
    log:
        f"{RESULTS}/logs/evaluate/{RUN}.log",
    params:
        info=run_info,
    conda:
        "../envs/harness.yaml"
    script:
        "../scripts/evaluate.py"


rule flops:
    """Analytic FLOPs over the dev set at real lengths, pruned vs dense."""
    input:
        model=model_dir,
        lengths=rules.evaluate.output.lengths,
    output:
        f"{RESULTS}/flops/{RUN}/flops.json",
    log:
        f"{RESULTS}/logs/flops/{RUN}.log",
    params:
        info=run_info,
    conda:
        "../envs/harness.yaml"
    script:
        "../scripts/flops.py"


rule latency:
    """Pinned-thread batch-1 CPU latency, interleaved with the dense teacher.

    It pins itself to `latency.cores` with `latency.threads` threads, and declares those
    threads. Nothing may run beside it: the profiles see to that (profiles/default: it takes
    every `bench_slot`, each other job one; profiles/slurm: a node of its own, --exclusive)."""
    input:
        dense=rules.teacher.output[0],
        model=model_dir,
    output:
        f"{RESULTS}/latency/{RUN}/latency.json",
    log:
        f"{RESULTS}/logs/latency/{RUN}.log",
    # From the configuration, unlike every other rule's threads (set in the profiles): the
    # thread count is part of the measurement protocol, recorded with each result.
    threads: config["latency"]["threads"]
    params:
        info=run_info,
    conda:
        "../envs/harness.yaml"
    script:
        "../scripts/latency.py"
