"""Reproduce the experiments of Hinton, Vinyals & Dean (2015) on Fashion-MNIST (issues 4, 10, 11).

One module per experiment (``e1_temperature`` ... ``e5_specialists``), the budgets of each preset
(``presets``), shared bookkeeping (``common``: resumable units, evaluation, intervals, progress
lines), the paper's numbers (``paper_numbers``), figures (``figures``) and the report writer
(``report``). ``runner.main`` is what ``scripts/reproduce_paper.py`` calls.

E6 (specialists distilled back into one model) joins the run when ``e6_merged.py`` exists here:
a module with ``run(ctx) -> dict`` whose result follows ``report.E6_CONTRACT``; the runner runs it
after E5 (``runner.OPTIONAL``) and the report shows it with its key ``e6_specialist_gain_kept``.
"""
