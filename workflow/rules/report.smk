rule collect:
    """One row per run: metric, FLOPs and latency side by side."""
    input:
        metrics=run_files("eval", "metrics.json"),
        flops=run_files("flops", "flops.json"),
        latency=run_files("latency", "latency.json"),
    output:
        f"{RESULTS}/tables/results.csv",
    log:
        "logs/collect.log",
    conda:
        "../envs/harness.yaml"
    script:
        "../scripts/collect.py"


rule table:
    """The comparison table (task x method) in Markdown."""
    input:
        f"{RESULTS}/tables/results.csv",
    output:
        report(f"{RESULTS}/tables/results.md", caption="../report/table.rst", category="Tables"),
    log:
        "logs/table.log",
    conda:
        "../envs/harness.yaml"
    script:
        "../scripts/table.py"


rule plot:
    """Task metric against FLOPs reduction, every method's points per task."""
    input:
        f"{RESULTS}/tables/results.csv",
    output:
        png=report(f"{RESULTS}/plots/accuracy_vs_flops.png", caption="../report/accuracy_vs_flops.rst", category="Plots"),
        svg=f"{RESULTS}/plots/accuracy_vs_flops.svg",
    log:
        "logs/plot.log",
    conda:
        "../envs/harness.yaml"
    script:
        "../scripts/plot.py"
