"""The ``ensemble-kd`` argument parser: subcommands, their flags, and options resolved into a config.

Every option of :class:`~ensemble_kd.cli.config.RunConfig` becomes a flag of the subcommands whose
groups use it; a ``--config FILE.toml`` only sets defaults, flags override it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from .. import __version__
from .config import (
    GROUPS,
    SWEEP_FIELDS,
    WORD_LIST_FIELDS,
    RunConfig,
    coerce,
    field_type,
    fields_of,
    is_auto_field,
    read_config_file,
    sweep_value,
)

COMMANDS = {
    "train-ensemble": (
        "train N teachers that differ by seed",
        ("data", "teachers", "arch", "train", "runtime"),
    ),
    "distill": (
        "distil saved teachers into a student (and train a hard-label baseline)",
        ("data", "transfer", "arch", "student", "train", "distill", "views", "runtime"),
    ),
    "evaluate": ("compare the models of a run on the test set", ("data", "specialists", "runtime")),
    "confusion-report": (
        "write a report of where a model is confused",
        ("data", "specialists", "runtime"),
    ),
    "train-specialists": (
        "train dustbin specialists for a generalist's confusable classes",
        ("data", "train", "specialists", "runtime"),
    ),
    "run": (
        "the main job: ensemble -> distil -> evaluate -> confusion report -> specialists",
        GROUPS,
    ),
    "distill-specialists": (
        "distil a run's generalist + specialists back into one model, against a control trained "
        "for the same budget without specialists",
        ("merge", "views", "runtime"),
    ),
    "predict": (
        "write a model's or an ensemble's predictions on a split as an .npz",
        ("data", "runtime"),
    ),
    "export": (
        "write a saved model as a file that runs without ensemble-kd (TorchScript or ONNX)",
        ("runtime",),
    ),
}


OUT_METAVAR = {"predict": "FILE.npz", "export": "FILE"}
OUT_HELP = {
    "evaluate": "folder to write summary.json and summary.md in (default: evaluate.json and "
                "evaluate.md beside the run's own summary in --run, which is left as it is)",
    "distill-specialists": "folder to write the merged model, its control, the q-cache and "
                           "summary.json / summary.md in (default RUN/merged; refused if it "
                           "holds another job, unless --resume or --overwrite)",
    "confusion-report": "folder to write the report in (refused if it holds another run or "
                        "report, unless --overwrite)",
    "predict": "the .npz file to write (probs, labels, class_names: what confusion-report "
               "--predictions reads); an existing file is replaced only with --overwrite",
    "export": "the file to write (an existing file is replaced only with --overwrite)",
}


class UsageError(Exception):
    """A command-line mistake: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose mistakes are one line (a :class:`UsageError`), not a usage dump."""

    def error(self, message: str):  # one line, no usage dump
        raise UsageError(f"{message} (see {self.prog} --help)")


def json_object(text: str) -> dict:
    """One command-line value that is a JSON object (a builder's keyword arguments)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"depth\": 2}}', "
                                         f"got {text!r}")
    return value


def auto_or(scalar: type):
    """A command-line value of an auto field: the word auto, or a value of the field's type."""
    def parse(text: str):
        return text if text == "auto" else scalar(text)
    parse.__name__ = scalar.__name__  # argparse names the type in its error message
    return parse


def _add_config_flags(p: argparse.ArgumentParser, groups) -> None:
    """One flag per config field of ``groups``; None (unset) lets the config file or default win."""
    for f in fields_of(groups):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        flag = "--" + f.name.replace("_", "-")
        scalar, is_list, _ = field_type(f.name)
        help_ = f.metadata["help"]
        if is_auto_field(f.name):  # decided from the data when the run starts, unless given
            p.add_argument(flag, type=auto_or(scalar), default=None,
                           metavar=f"{scalar.__name__.upper()}|auto", help=f"{help_} (default auto)")
        elif f.name in SWEEP_FIELDS:
            shown = default if isinstance(default, str) else " ".join(f"{v:g}" for v in default)
            p.add_argument(flag, type=sweep_value, nargs="+", default=None, metavar="VALUE",
                           help=f"{help_} (default {shown})")
        elif f.name in WORD_LIST_FIELDS:
            p.add_argument(flag, nargs="+", default=None, metavar="NAME",
                           help=f"{help_} (default {default})")
        elif scalar is dict:
            p.add_argument(flag, type=json_object, default=None, metavar="JSON",
                           help=f"{help_} (default {default})")
        elif scalar is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif is_list:
            p.add_argument(flag, type=scalar, nargs="*", default=None, metavar=scalar.__name__.upper(),
                           help=f"{help_} (default {default})")
        else:
            p.add_argument(flag, type=scalar, default=None, metavar=scalar.__name__.upper(),
                           help=f"{help_} (default {default})")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand; its errors raise :class:`UsageError`."""
    parser = _Parser(
        prog="ensemble-kd",
        description="Ensemble and specialist knowledge distillation (Hinton, Vinyals & Dean 2015).",
    )
    parser.add_argument("--version", action="version", version=f"ensemble-kd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (help_, groups) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--config", metavar="FILE.toml", help="TOML file of option defaults")
        p.add_argument("--out", metavar=OUT_METAVAR.get(name, "DIR"),
                       required=name not in ("evaluate", "distill-specialists"),
                       help=OUT_HELP.get(name, "run directory to write"))
        if name in ("run", "train-ensemble", "distill", "train-specialists", "distill-specialists"):
            g = p.add_mutually_exclusive_group()
            g.add_argument("--resume", action="store_true", help="continue the run in --out")
            g.add_argument("--overwrite", action="store_true",
                           help="delete the run in --out and start again")
        elif name != "evaluate":
            p.add_argument("--overwrite", action="store_true",
                           help="replace what --out holds (a report folder or a file)")
        p.add_argument("--allow-import", metavar="MODULE", nargs="+", action="extend", default=[],
                       help="allow importing MODULE (and its submodules) for models and data sets "
                            "named by import path, also those named in saved files (repeatable)")
        if name == "distill":
            src = p.add_mutually_exclusive_group(required=True)
            src.add_argument("--teachers", metavar="DIR",
                             help="a run folder with teachers/ (from train-ensemble) "
                                  "or a folder of teacher_<k>/")
            src.add_argument("--teacher-model", metavar="FILE", nargs="+",
                             help="teachers trained elsewhere: TorchScript files, ensemble-kd model "
                                  "files, or state dicts built by --teacher-arch pkg.module:function")
        if name == "evaluate":
            p.add_argument("--run", metavar="DIR", required=True, help="a run folder to evaluate")
        if name == "distill-specialists":
            p.add_argument("--run", metavar="DIR", required=True,
                           help="a finished run folder with a generalist and its specialists/ "
                                "(from run, or from train-specialists with --generalist); its "
                                "config.json gives the data, transfer set and top-n")
            p.add_argument("--generalist", metavar="FILE",
                           help="the generalist's model.pt (default: the one the run records; "
                                "needed for a train-specialists run)")
        if name == "confusion-report":
            src = p.add_mutually_exclusive_group(required=True)
            src.add_argument("--model", metavar="FILE", help="a saved model (model.pt)")
            src.add_argument("--teachers", metavar="DIR", help="an ensemble: a folder with teacher_<k>/")
            src.add_argument("--predictions", metavar="FILE.npz", help="saved probs + labels")
            p.add_argument("--split", choices=("val", "test"), default="test",
                           help="which split to analyse (default test)")
        if name == "predict":
            src = p.add_mutually_exclusive_group(required=True)
            src.add_argument("--model", metavar="FILE", help="a saved model (model.pt)")
            src.add_argument("--teachers", metavar="DIR",
                             help="an ensemble (the mean of its probabilities): a run folder with "
                                  "teachers/ or a folder of teacher_<k>/")
            p.add_argument("--split", choices=("test", "val", "train"), default="test",
                           help="which split to predict (default test)")
        if name == "export":
            p.add_argument("--model", metavar="FILE", required=True, help="a saved model (model.pt)")
            p.add_argument("--format", choices=("torchscript", "onnx"), default="torchscript",
                           help="torchscript (needs only torch) or onnx (needs the onnx package: "
                                "pip install 'ensemble-kd[onnx]'); default torchscript")
        if name == "train-specialists":
            p.add_argument("--generalist", metavar="FILE", required=True, help="the generalist's model.pt")
            p.add_argument("--subsets", metavar="FILE.json",
                           help="class subsets (a JSON list of lists, or {'subsets': ...}); "
                                "default: clusters of the generalist's validation confusion")
        _add_config_flags(p, groups)
    return parser


def given_fields(args: argparse.Namespace, groups) -> set[str]:
    """The config fields the user set: by a flag on the command line or a key of ``--config``.

    Flags default to None, so a flag typed with its default value still counts as given.
    """
    named = set(read_config_file(args.config, groups)) if getattr(args, "config", None) else set()
    return named | {f.name for f in fields_of(groups) if getattr(args, f.name, None) is not None}


def resolve_config(args: argparse.Namespace, groups) -> RunConfig:
    """Defaults <- config file <- flags."""
    values = read_config_file(args.config, groups) if args.config else {}
    for f in fields_of(groups):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = coerce(f.name, v)
    return RunConfig(**values)
