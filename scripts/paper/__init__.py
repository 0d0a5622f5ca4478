"""Reproduce the experiments of Hinton, Vinyals & Dean (2015) on Fashion-MNIST (issue 4).

One module per experiment (``e1_temperature`` ... ``e5_specialists``), the budgets of each preset
(``presets``), shared bookkeeping (``common``: resumable units, evaluation, progress lines), the
paper's numbers (``paper_numbers``), figures (``figures``) and the report writer (``report``).
``runner.main`` is what ``scripts/reproduce_paper.py`` calls.
"""
