"""From per-run JSON to the paper's tables (:mod:`top.report.tables`) and figures
(:mod:`top.report.plots`), with the papers' own numbers (:mod:`top.report.paper`, read from
``config/paper_results.yaml``) beside ours."""
