# Tables and figures from the per-run JSON files: the paper's comparison tables (CSV, Markdown,
# LaTeX) with the papers' numbers beside ours, and its figures (PNG, SVG, PDF). Every table and
# figure is registered for `snakemake --report report.html`.


rule collect:
    """One row per run (metric, FLOPs, latency), and one row per run and layer (tokens kept)."""
    input:
        metrics=every_run(rules.evaluate.output.metrics),
        flops=every_run(rules.flops.output[0]),
        latency=every_run(rules.latency.output[0]),
    output:
        results=report(f"{RESULTS}/tables/results.csv", caption="../report/results.rst", category="Tables", labels={"table": "every run"}),
        layers=report(f"{RESULTS}/tables/layers.csv", caption="../report/layers.rst", category="Tables", labels={"table": "every run, per layer"}),
    log:
        f"{RESULTS}/logs/collect.log",
    conda:
        "../envs/harness.yaml"
    script:
        "../scripts/collect.py"


rule runs_table:
    """Every run's row in Markdown (mean over seeds)."""
    input:
        rules.collect.output.results,
    output:
        f"{RESULTS}/tables/results.md",
    log:
        f"{RESULTS}/logs/runs_table.log",
    conda:
        "../envs/harness.yaml"
    script:
        "../scripts/runs_table.py"


rule table:
    """One of the paper's tables (glue: Table 2's grid; squad; latency), the papers' numbers
    beside ours."""
    input:
        results=rules.collect.output.results,
        paper=PAPER_RESULTS,
    output:
        csv=report(f"{RESULTS}/tables/{{table}}.csv", caption="../report/table.rst", category="Tables", labels={"table": "{table}"}),
        md=f"{RESULTS}/tables/{{table}}.md",
        tex=f"{RESULTS}/tables/{{table}}.tex",
    log:
        f"{RESULTS}/logs/table/{{table}}.log",
    wildcard_constraints:
        table="glue|squad|latency",
    conda:
        "../envs/harness.yaml"
    script:
        "../scripts/table.py"


rule figure:
    """One of the paper's figures, one panel per task."""
    input:
        results=rules.collect.output.results,
        layers=rules.collect.output.layers,
        paper=PAPER_RESULTS,
    output:
        png=report(f"{RESULTS}/plots/{{figure}}.png", caption="../report/figure.rst", category="Figures", labels={"figure": "{figure}"}),
        svg=f"{RESULTS}/plots/{{figure}}.svg",
        pdf=f"{RESULTS}/plots/{{figure}}.pdf",
    log:
        f"{RESULTS}/logs/figure/{{figure}}.log",
    wildcard_constraints:
        figure="accuracy_vs_flops|latency_vs_flops|retained_tokens",
    conda:
        "../envs/harness.yaml"
    script:
        "../scripts/figure.py"


rule paper:
    """Every table and figure (a target: `snakemake --cores 8 paper`)."""
    input:
        # table by table, figure by figure, each in all its formats
        [expand(rules.table.output, table=table) for table in TABLES],
        [expand(rules.figure.output, figure=figure) for figure in FIGURES],
