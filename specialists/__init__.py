"""Specialists (Hinton, Vinyals & Dean 2015, section 5): confusion analysis, confusable-class
clustering, dustbin specialists, and their combination with the generalist at inference.

Builds on :mod:`ensemble_kd` (never the other way round). Modules, one job each:

* ``checks``: input checks shared by the modules below.
* ``counts``: confusion counts, most confused pairs; ``affinity``: the one class affinity.
* ``clustering``: cluster classes, adjust clusters into subsets; ``selection``: choose the subsets.
* ``confusion``: the analysis bundle; ``predictions``: saved predictions;
  ``report`` and ``report_figures``: the confusion report.
* ``sparse``: (C, C) operations on dense and sparse matrices alike; ``spectral``: spectral
  clustering of a sparse affinity; ``planted``: a synthetic sparse confusion with planted groups.
* ``subsets``: validation, dustbin targets, folding; ``calibration``: the dustbin correction.
* ``training``: build and train one specialist; ``specialist``: save, load, folders, predict.
* ``combine``: combine generalist and specialists; ``evaluate``: score the combination.
* ``combined``: the combination as a module (log q), for the q-cache; ``merge``: specialists
  distilled back into one model, with its control; ``merge_report``: how much of the gain it keeps.
"""

from .affinity import class_affinity, confusion_affinity, covariance_affinity, prediction_covariance
from .calibration import dustbin_log_correction, fit_dustbin_correction, fit_vector_scaling
from .clustering import ClassClusterer, cluster_classes, select_subsets
from .combine import active_specialists, combination_objective, combine_predictions
from .combined import CombinedModel, q_fingerprint
from .confusion import ConfusionAnalysis, analyse, analyse_counts
from .counts import confusion_matrix
from .evaluate import evaluate_specialists, format_coverage_table
from .merge import MergeConfig, MergeResult, distill_specialists
from .merge_report import evaluate_merge, format_merge_report
from .planted import PlantedConfusion, planted_confusion
from .report import write_confusion_report
from .selection import (
    SignalCheck,
    check_signal,
    choose_subsets,
    expected_confusion,
    subsets_for_generalist,
)
from .specialist import (
    load_specialist,
    load_specialists,
    save_specialist,
    specialist_probs,
    train_specialists,
)
from .subsets import fold_logits, fold_probs, specialist_targets, validate_subsets
from .training import (
    Specialist,
    SpecialistConfig,
    build_specialist,
    calibrate_specialist,
    train_specialist,
)

__all__ = [
    "ClassClusterer", "CombinedModel", "ConfusionAnalysis", "MergeConfig", "MergeResult",
    "PlantedConfusion", "SignalCheck", "Specialist", "SpecialistConfig", "distill_specialists",
    "evaluate_merge", "format_merge_report", "q_fingerprint",
    "active_specialists", "analyse", "analyse_counts", "build_specialist", "calibrate_specialist",
    "check_signal",
    "choose_subsets",
    "expected_confusion", "subsets_for_generalist",
    "class_affinity", "cluster_classes", "combination_objective",
    "combine_predictions", "confusion_affinity", "confusion_matrix", "covariance_affinity",
    "dustbin_log_correction", "evaluate_specialists", "fit_dustbin_correction", "fit_vector_scaling",
    "fold_logits",
    "fold_probs", "format_coverage_table", "load_specialist", "load_specialists",
    "planted_confusion",
    "prediction_covariance", "save_specialist", "select_subsets", "specialist_probs",
    "specialist_targets", "train_specialist", "train_specialists", "validate_subsets",
    "write_confusion_report",
]
