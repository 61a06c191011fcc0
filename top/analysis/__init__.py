"""Diagnostics of trained runs beyond their metrics: what pruning did to the inputs.

:mod:`top.analysis.squad_tokens`: on SQuAD, which gold-answer and question tokens a span
extraction model drops before each layer, and how its F1 and exact match split between the
questions whose answer survives and those whose answer does not (docs/design.md, "SQuAD
token diagnostics"). ``benchmarks/squad_diagnostics.py`` is its command line.
"""
