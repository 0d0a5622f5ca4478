"""Specialists (Hinton, Vinyals & Dean 2015, section 5): confusion analysis, confusable-class
clustering, dustbin specialists, and their combination with the generalist at inference.

Builds on :mod:`ensemble_kd` (never the other way round).
"""

from .calibration import dustbin_log_correction, fit_dustbin_correction
from .clustering import ClassClusterer, cluster_classes, select_subsets
from .combine import active_specialists, combination_objective, combine_predictions
from .confusion import ConfusionAnalysis, analyse, confusion_matrix, prediction_covariance
from .evaluate import evaluate_specialists, format_coverage_table
from .report import write_confusion_report
from .specialist import (
    Specialist,
    SpecialistConfig,
    build_specialist,
    load_specialist,
    save_specialist,
    specialist_probs,
    train_specialist,
    train_specialists,
)
from .subsets import fold_logits, fold_probs, specialist_targets, validate_subsets

__all__ = [
    "ClassClusterer", "ConfusionAnalysis", "Specialist", "SpecialistConfig", "active_specialists",
    "analyse", "build_specialist", "cluster_classes", "combination_objective", "combine_predictions",
    "confusion_matrix", "dustbin_log_correction", "evaluate_specialists", "fit_dustbin_correction",
    "fold_logits", "fold_probs", "format_coverage_table", "load_specialist", "prediction_covariance",
    "save_specialist",
    "select_subsets", "specialist_probs", "specialist_targets", "train_specialist",
    "train_specialists", "validate_subsets", "write_confusion_report",
]
