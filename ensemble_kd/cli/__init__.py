"""``ensemble-kd``: the command line, the only part of ensemble_kd that uses :mod:`specialists`.

Subcommands (each takes its options as flags and/or from ``--config FILE.toml``):

* ``train-ensemble``: N teachers differing by seed -> ``OUT/teachers/``.
* ``distill``: a student from saved teachers (cached logits by default) -> ``OUT/student/``, with a
  hard-label baseline of the same size and budget -> ``OUT/baseline/``.
* ``evaluate``: the comparison table for the models of a run (and specialists, if any).
* ``confusion-report``: where a model (or ensemble, or saved predictions) is confused.
* ``train-specialists``: dustbin specialists on the generalist's confusable classes.
* ``distill-specialists``: a run's generalist + specialists distilled back into one model, with a
  control trained for the same budget without specialists (``merge_steps``).
* ``run``: the main job, all of the above in one run directory.

Bad input ends with one line on stderr naming the problem and exit code 2, never a traceback.

Modules: ``parser`` (flags) and ``config`` (the options) -> ``main`` (entry point) ->
``commands`` (the subcommands) built from ``steps``, ``specialist_steps``, ``summary``,
``checks``, ``inputs``, ``context``; ``run_record`` reads and writes a run's ``config.json``.
"""

from .main import main

__all__ = ["main"]
