"""ensemble-kd: ensemble and specialist knowledge distillation (Hinton, Vinyals & Dean, 2015).

The public API; see README.md for a tour.
"""

__version__ = "0.1.0"

from .batching import (  # noqa: E402
    Batch,
    DatasetBatches,
    MixedBatches,
    TensorBatches,
    ViewBatches,
    jitter,
)
from .cache import TeacherCache, ensure_cache, open_cache, write_cache  # noqa: E402
from .checkpoint import load_model, save_model  # noqa: E402
from .data import Splits, TransferSet, load_dataset, make_transfer_set  # noqa: E402
from .distill import DistillConfig, distill, train_baseline  # noqa: E402
from .ensemble import ModelSpec, TeacherSpec, load_teachers, train_ensemble  # noqa: E402
from .losses import (  # noqa: E402
    LossParts,
    distillation_loss,
    distillation_loss_parts,
    logit_matching_loss,
    soft_targets,
)
from .models import build_model  # noqa: E402
from .predict import ensemble_probs, predict_logits, predict_probs  # noqa: E402
from .train import TrainConfig, TrainResult, seed_everything, train  # noqa: E402
from .views import ViewConfig, make_views  # noqa: E402

__all__ = [
    "Batch", "DatasetBatches", "DistillConfig", "LossParts", "MixedBatches", "Splits",
    "TeacherCache", "ModelSpec", "TeacherSpec", "TensorBatches", "TrainConfig", "TrainResult",
    "TransferSet", "ViewBatches", "ViewConfig", "make_views", "train_baseline",
    "build_model", "distill", "distillation_loss", "distillation_loss_parts", "ensemble_probs",
    "ensure_cache", "jitter", "load_dataset", "load_model", "load_teachers", "logit_matching_loss",
    "make_transfer_set", "open_cache", "predict_logits", "predict_probs", "save_model",
    "seed_everything", "soft_targets", "train", "train_ensemble", "write_cache",
]

# Your own models, data and teachers (import paths need consent: ``allow_imports``).
from .factories import ImportNotAllowed, allowing_imports, build_any  # noqa: E402
from .foreign import load_foreign_teacher  # noqa: E402
from .user_data import load_dataset_function  # noqa: E402

__all__ += ["ImportNotAllowed", "allowing_imports", "build_any", "load_dataset_function",
            "load_foreign_teacher"]
