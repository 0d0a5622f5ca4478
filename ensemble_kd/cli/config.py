"""The command line's configuration: one commented dataclass, filled from a TOML file and flags.

Every option of every subcommand is a field of :class:`RunConfig`; its comment is the ``--help``
text. A TOML config file (``--config run.toml``, flat ``key = value`` pairs, dashes or underscores)
only sets defaults; flags on the command line override it. Unknown keys and values of the wrong
type are errors that name the key (and, for unknown keys, list the valid ones).
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ..distill import DistillConfig
from ..ensemble import ModelSpec
from ..sweep import AUTO_ALPHAS, AUTO_TEMPERATURES, candidate_configs, resolve_grid
from ..train import TrainConfig
from ..views import ViewConfig


def _f(default, help: str, group: str, **kw):
    """A config field; ``auto=True``: the default None is "auto", decided from the data by
    :meth:`RunConfig.resolve_auto` (the word auto on the command line or in a config file)."""
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata={"help": help, "group": group, **kw})
    return field(default=default, metadata={"help": help, "group": group, **kw})


@dataclass
class RunConfig:
    """All options of the ``ensemble-kd`` subcommands (each uses the groups it needs)."""

    # ---- data ----
    dataset: str = _f("digits", "data set: digits, fashion-mnist, synthetic, npz, folder (an image "
                      "folder: DIR/train/<class>/*.png|jpg, DIR/test/<class>/..., optional "
                      "DIR/val/...), or pkg.module:function returning a dict of X_train, y_train, "
                      "X_test, y_test (optional class_names)", "data")
    data_dir: str | None = _f(None, "folder of the Fashion-MNIST IDX .gz files "
                              "(default /usr/share/datasets/fashion-mnist)", "data")
    data_path: str | None = _f(None, "the .npz file for --dataset npz (X_train, y_train, X_test, "
                               "y_test, optional class_names), or the folder for --dataset folder",
                               "data")
    image_size: int | None = _f(None, "--dataset folder (and an image-folder --transfer-data): resize "
                                "every image to this many pixels square (default: keep the size, "
                                "which must then be one size; all-gray images give 1 channel, "
                                "any colour image makes every image RGB)", "data")
    val_fraction: float = _f(0.1, "share of the training data held out for validation", "data")
    data_seed: int = _f(0, "seed of the validation split", "data")
    synthetic_classes: int = _f(30, "synthetic data: number of classes", "data")
    synthetic_groups: int = _f(6, "synthetic data: number of planted confusable groups", "data")
    synthetic_train: int = _f(6000, "synthetic data: training examples", "data")
    synthetic_seed: int = _f(0, "synthetic data: seed of the data itself", "data")
    # ---- transfer set (what the student learns on) ----
    transfer_fraction: float = _f(1.0, "share of the training data in the transfer set, in (0, 1]",
                                  "transfer")
    omit_classes: list[int] = _f([], "classes left out of the transfer set", "transfer")
    unlabelled: bool = _f(False, "drop the transfer set's labels (soft targets only)", "transfer")
    transfer_data: str | None = _f(
        None, "distil on this data instead of the training split: an .npz (X, optional y) or an "
        "image folder (PATH/<class>/... labelled, or images directly in PATH, unlabelled); "
        "unlabelled data carries the teachers' knowledge too. The hard-label baseline still "
        "trains on the labelled training split", "transfer")
    # ---- teachers ----
    teachers: int | None = _f(None, "number of teachers in the ensemble (they differ by seed); "
                              "auto: 5, or 2 on large data (more than 10,000 training examples)",
                              "teachers", auto=True)
    teacher_arch: str = _f("auto", "teacher architecture(s), one per teacher, cycled: mlp, convnet, "
                           "cnn, auto (cnn for images of at least 16x16 pixels, convnet for smaller "
                           "images such as the 8x8 digits, mlp otherwise), pkg.module:function "
                           "(function(input_shape, n_classes, **kwargs) -> nn.Module), "
                           "torchvision/NAME or timm/NAME", "arch")
    teacher_kwargs: dict | None = _f(None, "options of the teacher builder(s), a JSON object "
                                     "(TOML: an inline table), passed to every teacher "
                                     "architecture", "arch")
    teacher_widths: list[int] | None = _f(None, "teacher hidden sizes (convnet, cnn: channels); "
                                        "default 32 64 for a convnet or cnn, 256 256 for an mlp",
                                          "teachers")
    # The cnn teachers' own recipe (docs/image-model.md: 92.75% on Fashion-MNIST in 15 epochs)
    # fills the teacher options below that are left at auto; other teachers keep the shared ones.
    teacher_dropout: float | None = _f(None, "teacher dropout; auto: 0.3 for cnn teachers, else 0",
                                       "teachers", auto=True)
    teacher_jitter: int | None = _f(None, "random input shifts (pixels) when training teachers; "
                                    "auto: 2 for cnn teachers, 1 for other images, 0 otherwise",
                                    "teachers", auto=True)
    teacher_mixup: float | None = _f(None, "mixup of the teachers' training batches, weights "
                                     "from Beta(a, a) (labels mixed alike; with "
                                     "--teacher-jitter's shifts); default off. For long teacher "
                                     "schedules: with 12-epoch teachers on Fashion-MNIST it gave "
                                     "the student no gain (docs/reproduction)", "teachers")
    teacher_vectorize: str = _f("auto", "train same-architecture MLP teachers at once as one vectorised "
                                "model: auto (where it measured faster), on or off", "teachers")
    teacher_epochs: int | None = _f(None, "teacher epochs; teachers do not follow --epochs; auto: "
                                    "15 for cnn teachers, else 30", "teachers", auto=True)
    teacher_batch_size: int | None = _f(None, "teacher examples per step; auto: 128 for cnn "
                                        "teachers, else --batch-size", "teachers", auto=True)
    teacher_optimizer: str | None = _f(None, "teacher optimizer, adam or sgd; auto: adam for cnn "
                                       "teachers, else --optimizer", "teachers", auto=True)
    teacher_lr: float | None = _f(None, "teacher peak learning rate; auto: 2e-3 for cnn teachers, "
                                  "else --lr", "teachers", auto=True)
    teacher_weight_decay: float | None = _f(None, "teacher L2 weight decay; auto: 0 for cnn "
                                            "teachers, else --weight-decay", "teachers", auto=True)
    # ---- student ----
    student_arch: str = _f("mlp", "student architecture: mlp, convnet, cnn, pkg.module:function, "
                           "torchvision/NAME or timm/NAME", "student")
    student_kwargs: dict | None = _f(None, "options of the student builder, a JSON object "
                                     "(TOML: an inline table)", "student")
    student_widths: list[int] = _f([64], "student hidden sizes (convnet, cnn: channels)", "student")
    student_dropout: float = _f(0.0, "student dropout", "student")
    # ---- training (students and specialists; teachers too, unless their own option is set) ----
    # On small data "auto" is the budget tuned on digits (README, "Choosing the defaults"); on
    # large data a fixed number of examples seen per training, so a default run fits in about
    # 30 minutes of CPU.
    epochs: int | None = _f(None, "training epochs (students and the baseline get the same "
                            "budget); auto: 120, or on large data (more than 10,000 training "
                            "examples) 1.6 million examples seen: round(1,600,000 / transfer-set "
                            "examples), 5 to 120 (30 for Fashion-MNIST, 120 for 3 percent of it)",
                            "train", auto=True)
    batch_size: int | None = _f(None, "examples per step; auto: 32, or 128 on large data (more "
                                "than 10,000 training examples)", "train", auto=True)
    optimizer: str = _f("adam", "adam or sgd (Nesterov momentum)", "train")
    lr: float = _f(1e-2, "peak learning rate", "train")
    momentum: float = _f(0.9, "SGD momentum", "train")
    weight_decay: float = _f(0.0, "L2 weight decay", "train")
    schedule: str = _f("cosine", "learning-rate schedule: constant, cosine or step", "train")
    early_stopping: int = _f(0, "stop after this many epochs without better validation NLL; 0 = off",
                             "train")
    seed: int = _f(0, "training seed (teacher k uses seed + k)", "train")
    # ---- distillation ----
    # Defaults measured on validation data (README, "Choosing the defaults"): the best T and alpha
    # differ between data sets (digits T 2-8; Fashion-MNIST T 1, alpha 0.5 for a student the
    # teachers barely beat), so both are chosen per run from the auto grids (8 candidates).
    temperature: list[float] | str = _f(
        "auto", "softmax temperature T of the soft targets: one value, several (each trains a "
        "candidate student from the same teacher cache; the best on validation is kept) or auto "
        "(1 2 4 8)", "distill")
    alpha: list[float] | str = _f(
        "auto", "weight of the soft term (1 - alpha weighs the hard labels): one value, several "
        "or auto (0.5 0.9); every (T, alpha) pair is a candidate; a sweep needs alpha > 0",
        "distill")
    combine: str = _f("sum", "several teachers: sum (per-teacher KL), mean_probs or mean_logits",
                      "distill")
    teacher_weights: list[float] | None = _f(None, "one weight per teacher (normalised)", "distill")
    online: bool = _f(False, "run the teachers every step instead of caching their logits", "distill")
    student_jitter: int = _f(0, "random input shifts (pixels) when distilling (needs --online)",
                             "distill")
    cache_dtype: str = _f("float32", "teacher cache storage: float32 or float16", "distill")
    cache_topk: int = _f(0, "keep only each example's k largest teacher logits (0 = dense)", "distill")
    # ---- views: augmented inputs seen alike by teachers, the student and the fair baseline ----
    view_shift: int = _f(0, "views: random shifts up to this many pixels (images)", "views")
    view_crop_padding: int = _f(0, "views: random crops of the image padded by this many pixels",
                                "views")
    view_flip: bool = _f(False, "views: random horizontal flips (opt-in; wrong for digits and text)",
                         "views")
    view_mixup: float = _f(0.0, "views: mixup with weights from Beta(a, a); 0 = off", "views")
    view_cutmix: float = _f(0.0, "views: cutmix with kept areas from Beta(a, a); 0 = off (images)",
                            "views")
    view_noise: float = _f(0.0, "views: Gaussian input noise of this standard deviation; 0 = off",
                           "views")
    views: int = _f(1, "views per example in the teacher cache (each epoch draws one per example); "
                    "0 = a fresh view every epoch (needs --online)", "views")
    # ---- specialists ----
    specialists: bool = _f(True, "train specialists on the generalist's confusable classes (run)",
                           "specialists")
    specialists_from: str = _f("student", "the generalist in run: the distilled student or teacher 0",
                         "specialists")
    n_clusters: int | None = _f(None, "number of clusters among the confusable classes (default: the "
                                "connected groups of strongly confused pairs; rarely confused "
                                "classes get no specialist)", "specialists")
    cluster_method: str = _f("spectral", "spectral, agglomerative or kmeans", "specialists")
    max_specialists: int | None = _f(None, "at most this many specialists", "specialists")
    max_subset_size: int | None = _f(None, "largest subset a specialist covers", "specialists")
    overlap: int = _f(0, "extra most-confused classes added to each subset (overlapping specialists)",
                      "specialists")
    specialist_epochs: int | None = _f(None, "specialist epochs (default: --epochs)", "specialists")
    specialist_share: float = _f(0.5, "share of each specialist batch drawn from its subset",
                                 "specialists")
    specialist_alpha: float = _f(0.0, "weight of the generalist's folded soft targets for specialists "
                                 "(0: hard labels; the generalist's own targets pull a specialist "
                                 "back towards it)", "specialists")
    specialist_temperature: float = _f(2.0, "temperature of the specialists' soft targets",
                                       "specialists")
    specialist_calibration: str | None = _f(
        None, "after training: auto (default; the dustbin's bias alone: the closed-form prior "
        "shift, or fitted on the validation split when --specialist-alpha > 0) or vector (a "
        "temperature and a bias per output fitted on the validation split; helps overlapping "
        "specialists)", "specialists")
    top_n: int = _f(1, "a specialist is active when its subset holds one of the generalist's top n",
                    "specialists")
    # ---- merge: specialists distilled back into one model (distill-specialists) ----
    # Unset (None) options are decided from the run when the command starts, as their help says.
    merge_epochs: int | None = _f(None, "epochs of the merged model and of its control, the same "
                                  "budget for both (default 10)", "merge")
    merge_lr: float | None = _f(None, "peak learning rate of the merged model and of its control "
                                "(default a tenth of the run's --lr: both start trained)", "merge")
    merge_batch_size: int | None = _f(None, "examples per step of the merged model and of its "
                                      "control (default the run's --batch-size)", "merge")
    merge_temperature: float | None = _f(
        None, "T of the soft term on the combined distribution q (default the generalist's own "
        "distillation temperature when it is a distilled student, else 2)", "merge")
    merge_alpha: float | None = _f(
        None, "weight of the soft term on q; 1 - alpha weighs the transfer set's labels (default "
        "the generalist's own alpha when it is a distilled student, else 0.5)", "merge")
    merge_control: str | None = _f(
        None, "what the control trains on without specialists: teachers (the run's teachers at "
        "the student's T and alpha: the generalist continues its own distillation), labels, or "
        "self (the generalist's own frozen outputs at the merge's T and alpha, plus labels); "
        "default: teachers for a distilled student with its teachers in the run, labels for a "
        "teacher, else self", "merge")
    merge_views: int | None = _f(
        None, "V > 1: q is computed on V cached views of every transfer example, drawn with the view "
        "settings (--view-shift, --view-mixup, ...: the run's, or given here), and the merged "
        "model and its control both train on those views; 1 (default): the transfer set as it is",
        "merge")
    # ---- runtime ----
    device: str = _f("auto", "auto, cpu or cuda", "runtime")
    quiet: bool = _f(False, "no progress bars or stage messages", "runtime")

    def __post_init__(self):
        for name in SWEEP_FIELDS:  # a number or a list from Python or an older record: one form
            setattr(self, name, normalise_sweep(name, getattr(self, name)))

    # -- derived configs --
    def resolve_auto(self, input_shape, n_train: int, n_transfer: int | None = None) -> RunConfig:
        """A copy with every "auto" option decided for ``n_train`` training examples of shape
        ``input_shape`` (the rules: README, "Defaults decided from the data"); options already set
        are kept, so resolving a resolved config changes nothing. ``n_transfer``: examples in the
        students' transfer set (default ``n_train``); on large data the students' epochs give
        them a fixed number of examples seen, so a small transfer set gets more epochs."""
        shape = tuple(int(s) for s in input_shape)
        image = len(shape) == 3
        auto_arch = ("cnn" if min(shape[1:]) >= CNN_MIN_SIDE else "convnet") if image else "mlp"
        archs = [auto_arch if a == "auto" else a for a in self.teacher_archs()]
        widths = self.teacher_widths
        if widths is None:
            conv = any(a in CONV_ARCHS for a in archs) and "mlp" not in archs
            widths = [32, 64] if conv else [256, 256]
        large = n_train > LARGE_DATA
        auto = {
            "teachers": LARGE["teachers"] if large else SMALL["teachers"],
            "batch_size": LARGE["batch_size"] if large else SMALL["batch_size"],
            "epochs": (min(SMALL["epochs"], max(5, round(STUDENT_EXAMPLES / max(
                n_train if n_transfer is None else n_transfer, 1)))) if large else SMALL["epochs"]),
            # teacher options left at None without the cnn recipe mean "the shared option"
            **(CNN_RECIPE if set(archs) == {"cnn"} else
               {"teacher_epochs": 30, "teacher_dropout": 0.0, "teacher_jitter": int(image)}),
        }
        chosen = {k: v for k, v in auto.items() if getattr(self, k) is None}
        return dataclasses.replace(self, teacher_arch=" ".join(archs), teacher_widths=list(widths),
                                   **chosen)

    def train_config(self, epochs: int | None = None) -> TrainConfig:
        """Students, the baseline and specialists (``epochs``: instead of ``--epochs``)."""
        return TrainConfig(
            epochs=self.epochs if epochs is None else epochs, batch_size=self.batch_size,
            optimizer=self.optimizer,
            lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
            schedule=self.schedule, early_stopping=self.early_stopping, seed=self.seed,
        ).validate()

    def teacher_views(self) -> ViewConfig | None:
        """The teachers' training views with --teacher-mixup (their shifts included), else None
        (the teachers train on --teacher-jitter's shifts alone)."""
        if not self.teacher_mixup:
            return None
        return ViewConfig(shift=self.teacher_jitter or 0, mixup=self.teacher_mixup, views=None)

    def teacher_train_config(self) -> TrainConfig:
        """The teachers': their own options where set (after resolve_auto), else the shared ones."""
        shared = self.train_config(self.teacher_epochs)
        own = {"batch_size": self.teacher_batch_size, "optimizer": self.teacher_optimizer,
               "lr": self.teacher_lr, "weight_decay": self.teacher_weight_decay}
        try:  # a bad shared option was named by train_config; a bad own option says whose
            return dataclasses.replace(shared, **{k: v for k, v in own.items() if v is not None}
                                       ).validate()
        except ValueError as e:
            raise ValueError(f"teacher_{e}") from None

    def auto_fields(self) -> list[str]:
        """The options still "auto" (None) that resolve_auto decides."""
        return [f.name for f in dataclasses.fields(self) if f.metadata.get("auto")
                and getattr(self, f.name) is None] + (
            ["teacher_arch"] if "auto" in self.teacher_archs() else [])

    def teacher_archs(self) -> list[str]:
        """The teacher architectures (``teacher_arch`` holds them space-separated)."""
        return self.teacher_arch.split() or ["auto"]

    def teacher_specs(self) -> list[ModelSpec]:
        """One spec per teacher architecture (teachers cycle through them); after resolve_auto."""
        return [ModelSpec(a, tuple(self.teacher_widths or ()), self.teacher_dropout,
                          self.teacher_kwargs) for a in self.teacher_archs()]

    def teacher_spec(self) -> ModelSpec:
        """The first teacher architecture."""
        return self.teacher_specs()[0]

    def student_spec(self) -> ModelSpec:
        return ModelSpec(self.student_arch, tuple(self.student_widths), self.student_dropout,
                         self.student_kwargs)

    def temperatures(self) -> list[float]:
        return resolve_grid(self.temperature, AUTO_TEMPERATURES, "temperature")

    def alphas(self) -> list[float]:
        return resolve_grid(self.alpha, AUTO_ALPHAS, "alpha")

    def distill_configs(self) -> list[DistillConfig]:
        """One config per candidate (T, alpha) of the sweep (a single one: no sweep)."""
        return candidate_configs(self.distill_config(), self.temperatures(), self.alphas())

    def distill_config(self) -> DistillConfig:
        """The distillation settings of the first candidate."""
        return DistillConfig(
            temperature=self.temperatures()[0], alpha=self.alphas()[0], combine=self.combine,
            teacher_weights=self.teacher_weights, online=self.online, cache_dtype=self.cache_dtype,
            cache_topk=self.cache_topk, jitter=self.student_jitter, views=self.view_config(),
        ).validate()

    def view_config(self) -> ViewConfig | None:
        """The views of the transfer set (None: the transfer set as it is, one view)."""
        v = ViewConfig(shift=self.view_shift, crop_padding=self.view_crop_padding,
                       flip=self.view_flip, mixup=self.view_mixup, cutmix=self.view_cutmix,
                       noise=self.view_noise, views=self.views if self.views else None,
                       seed=self.seed).validate()  # a negative setting is an error, not "off"
        return None if v.plain else v

    def data_options(self) -> dict:
        return {
            "data_dir": self.data_dir, "path": self.data_path, "val_fraction": self.val_fraction,
            "seed": self.data_seed,
            **(
                {"n_classes": self.synthetic_classes, "n_groups": self.synthetic_groups,
                 "n_train": self.synthetic_train, "synthetic_seed": self.synthetic_seed}
                if self.dataset == "synthetic" else {}
            ),
            **({"image_size": self.image_size} if self.image_size is not None else {}),
        }


# ---- what "auto" resolves to (README, "Defaults") ----
LARGE_DATA = 10_000  # training examples above which a data set is "large" (digits: 1,213; F-MNIST 54,000)
# Small data: ensemble-kd's defaults tuned on digits (the README's figures were made with them).
SMALL = {"teachers": 5, "epochs": 120, "batch_size": 32}
# Large data: two teachers (three cnn teachers alone take about 30 min of CPU on Fashion-MNIST)
# and larger batches (fewer, cheaper steps per example on a CPU).
LARGE = {"teachers": 2, "batch_size": 128}
STUDENT_EXAMPLES = 1_600_000  # examples one student training sees on large data (F-MNIST: 30 epochs)
CNN_MIN_SIDE = 16  # the auto teacher for images of at least this many pixels a side is the cnn
CONV_ARCHS = ("convnet", "cnn")  # built-ins whose widths are channels
# The cnn's training recipe (docs/image-model.md), for cnn teachers' options left at auto.
CNN_RECIPE = {"teacher_epochs": 15, "teacher_batch_size": 128, "teacher_optimizer": "adam",
              "teacher_lr": 2e-3, "teacher_weight_decay": 0.0, "teacher_jitter": 2,
              "teacher_dropout": 0.3}

GROUPS = ("data", "transfer", "teachers", "arch", "student", "train", "distill", "views", "specialists",
          "runtime")
# Fields holding names of architectures or data sets: several words (--teacher-arch a:f b:g) are
# stored joined by spaces, so a record of one name keeps its old form.
WORD_LIST_FIELDS = ("teacher_arch",)


def fields_of(groups) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(RunConfig) if f.metadata["group"] in groups]


SWEEP_FIELDS = ("temperature", "alpha")  # a number, a list of numbers, or "auto"


def sweep_value(text: str) -> float | str:
    """One command-line value of a sweep field: a number or the word auto."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {text!r}") from None


def normalise_sweep(name: str, value) -> list[float] | str:
    """A sweep field as stored: a list of floats, or "auto" (from a number, a list, or "auto").

    Raises:
        ValueError: anything else, or "auto" mixed with numbers, naming the key.
    """
    if isinstance(value, str) and value == "auto":
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)]
    if isinstance(value, list):
        if value == ["auto"]:
            return "auto"
        if value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return [float(v) for v in value]
    raise ValueError(f"config key {name!r} must be a number, a list of numbers or \"auto\", "
                     f"got {value!r}")


def _base_type(tp) -> tuple[type, bool, bool]:
    """(scalar type, is list, allows None) of a field annotation."""
    tp = typing.get_type_hints(RunConfig)[tp] if isinstance(tp, str) else tp
    optional = False
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional, tp = True, args[0]
    if typing.get_origin(tp) is list:
        return typing.get_args(tp)[0], True, optional
    return tp, False, optional


def field_type(name: str) -> tuple[type, bool, bool]:
    return _base_type(typing.get_type_hints(RunConfig)[name])


def is_auto_field(name: str) -> bool:
    """Whether the field takes the word auto (stored as None until resolve_auto decides)."""
    return bool(RunConfig.__dataclass_fields__[name].metadata.get("auto"))


def coerce(name: str, value):
    """Check a config-file value against the field's type; ValueError naming the key if wrong."""
    if value == "auto" and is_auto_field(name):
        return None
    if name in SWEEP_FIELDS:
        return normalise_sweep(name, value)
    if name in WORD_LIST_FIELDS and isinstance(value, list):
        if not value or not all(isinstance(v, str) and v.strip() for v in value):
            raise ValueError(f"config key {name!r} must be a str or a list of strs, got {value!r}")
        value = " ".join(value)
    scalar, is_list, optional = field_type(name)
    if value is None and optional:
        return None

    def one(v):
        if scalar is bool:
            if isinstance(v, bool):
                return v
        elif scalar is int:
            if isinstance(v, int) and not isinstance(v, bool):
                return v
        elif scalar is float:
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return float(v)
        elif scalar is str:
            if isinstance(v, str):
                return v
        elif scalar is dict:
            if isinstance(v, dict):
                return v
        raise ValueError(
            f"config key {name!r} must be {'a list of ' if is_list else ''}{scalar.__name__}"
            f"{'s' if is_list else ''}, got {value!r}"
        )

    if is_list:
        if not isinstance(value, list):
            raise ValueError(f"config key {name!r} must be a list of {scalar.__name__}s, got {value!r}")
        return [one(v) for v in value]
    return one(value)


def read_config_file(path: str | Path, groups) -> dict:
    """Read a flat TOML config; returns {field name: value}, checking keys and types."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"config file {path} is a folder, not a TOML file") from None
    except OSError as e:
        raise ValueError(f"config file {path} cannot be read: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"config file {path} is not valid TOML: {e}") from None
    valid = {f.name for f in fields_of(groups)}
    out = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in valid:
            raise ValueError(
                f"unknown key {key!r} in {path}; valid keys: {', '.join(sorted(valid))}"
            )
        out[name] = coerce(name, value)
    return out
