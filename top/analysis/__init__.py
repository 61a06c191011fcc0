"""Diagnostics of trained runs beyond their metrics: what pruning did to the inputs.

:mod:`top.analysis.squad_tokens`: on SQuAD, which gold-answer and question tokens a span
extraction model drops before each layer, and how its F1 and exact match split between the
questions whose answer survives and those whose answer does not (docs/design.md, "SQuAD
token diagnostics"). ``benchmarks/squad_diagnostics.py`` is its command line.

:mod:`top.analysis.dev_noise`: the dev set's sampling noise of a run's score and of two runs'
difference (``benchmarks/dev_noise.py``). :mod:`top.analysis.token_survival`: which tokens a
GLUE run drops, layer by layer, by role (``benchmarks/token_survival.py``).
:mod:`top.analysis.cli`: the command line those two scripts share.
"""
