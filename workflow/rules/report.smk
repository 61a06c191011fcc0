# Tables and figures from the per-run JSON files: the paper's comparison tables (CSV, Markdown,
# LaTeX) with the papers' numbers beside ours, and its figures (PNG, SVG, PDF). Every table and
# figure is registered for `snakemake --report report.html`.


rule collect:
    """One row per run (metric, FLOPs, latency), and one row per run and layer (tokens kept)."""
    input:
        metrics=run_files("eval", "metrics.json"),
        flops=run_files("flops", "flops.json"),
        latency=run_files("latency", "latency.json"),
    output:
        results=report(f"{RESULTS}/tables/results.csv", caption="../report/results.rst", category="Tables", labels={"table": "every run"}),
        layers=f"{RESULTS}/tables/layers.csv",
    log:
        "logs/collect.log",
    conda:
        "../envs/harness.yaml"
    script:
        "../scripts/collect.py"


rule runs_table:
    """Every run's row in Markdown (mean over seeds)."""
    input:
        f"{RESULTS}/tables/results.csv",
    output:
        f"{RESULTS}/tables/results.md",
    log:
        "logs/runs_table.log",
    conda:
        "../envs/harness.yaml"
    script:
        "../scripts/runs_table.py"


rule table:
    """One of the paper's tables (glue: Table 2's grid; squad; latency), the papers' numbers
    beside ours."""
    input:
        results=f"{RESULTS}/tables/results.csv",
        paper=PAPER_RESULTS,
    output:
        csv=report(f"{RESULTS}/tables/{{table}}.csv", caption="../report/table.rst", category="Tables", labels={"table": "{table}"}),
        md=f"{RESULTS}/tables/{{table}}.md",
        tex=f"{RESULTS}/tables/{{table}}.tex",
    log:
        "logs/table/{table}.log",
    wildcard_constraints:
        table="glue|squad|latency",
    conda:
        "../envs/harness.yaml"
    script:
        "../scripts/table.py"


rule figure:
    """One of the paper's figures, one panel per task."""
    input:
        results=f"{RESULTS}/tables/results.csv",
        layers=f"{RESULTS}/tables/layers.csv",
        paper=PAPER_RESULTS,
    output:
        png=report(f"{RESULTS}/plots/{{figure}}.png", caption="../report/figure.rst", category="Figures", labels={"figure": "{figure}"}),
        svg=f"{RESULTS}/plots/{{figure}}.svg",
        pdf=f"{RESULTS}/plots/{{figure}}.pdf",
    log:
        "logs/figure/{figure}.log",
    wildcard_constraints:
        figure="accuracy_vs_flops|latency_vs_flops|retained_tokens",
    conda:
        "../envs/harness.yaml"
    script:
        "../scripts/figure.py"


rule paper:
    """Every table and figure (a target: `snakemake --cores 8 paper`)."""
    input:
        expand(f"{RESULTS}/tables/{{table}}.{{ext}}", table=TABLES, ext=["csv", "md", "tex"]),
        expand(f"{RESULTS}/plots/{{figure}}.{{ext}}", figure=FIGURES, ext=["png", "svg", "pdf"]),
