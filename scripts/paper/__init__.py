"""Reproduce the experiments of Hinton, Vinyals & Dean (2015) on Fashion-MNIST (issues 4, 10, 11).

One module per experiment (``e1_temperature`` ... ``e6_merged``), the budgets of each preset
(``presets``), shared bookkeeping (``common``: resumable units, evaluation, intervals, progress
lines), the paper's numbers (``paper_numbers``), figures (``figures``) and the report writer
(``report``). ``runner.main`` is what ``scripts/reproduce_paper.py`` calls.

E6 (specialists distilled back into one model, ``e6_merged``) is an optional experiment
(``runner.OPTIONAL``): it runs after E5, whose generalists and specialists it reuses; its result
follows ``report.E6_CONTRACT`` and the report shows it with its key ``e6_specialist_gain_kept``.
"""
