"""``ensemble-kd``: the command line.

Subcommands (each takes its options as flags and/or from ``--config FILE.toml``):

* ``train-ensemble``: N teachers differing by seed -> ``OUT/teachers/``.
* ``distill``: a student from saved teachers (cached logits by default) -> ``OUT/student/``, with a
  hard-label baseline of the same size and budget -> ``OUT/baseline/``.
* ``evaluate``: the comparison table for the models of a run (and specialists, if any).
* ``confusion-report``: where a model (or ensemble, or saved predictions) is confused.
* ``train-specialists``: dustbin specialists on the generalist's confusable classes.
* ``run``: the main job, all of the above in one run directory.

Bad input ends with one line on stderr naming the problem and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .config import GROUPS, RunConfig, coerce, field_type, fields_of, read_config_file
from .io import FormatError, read_json

COMMANDS = {
    "train-ensemble": (
        "train N teachers that differ by seed",
        ("data", "teachers", "train", "runtime"),
    ),
    "distill": (
        "distil saved teachers into a student (and train a hard-label baseline)",
        ("data", "transfer", "student", "train", "distill", "runtime"),
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
}


class UsageError(Exception):
    """A command-line mistake: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        raise UsageError(f"{message} (see {self.prog} --help)")


def _add_config_flags(p: argparse.ArgumentParser, groups) -> None:
    for f in fields_of(groups):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        flag = "--" + f.name.replace("_", "-")
        scalar, is_list, _ = field_type(f.name)
        help_ = f.metadata["help"]
        if scalar is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif is_list:
            p.add_argument(flag, type=scalar, nargs="*", default=None, metavar=scalar.__name__.upper(),
                           help=f"{help_} (default {default})")
        else:
            p.add_argument(flag, type=scalar, default=None, metavar=scalar.__name__.upper(),
                           help=f"{help_} (default {default})")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ensemble-kd",
        description="Ensemble and specialist knowledge distillation (Hinton, Vinyals & Dean 2015).",
    )
    parser.add_argument("--version", action="version", version=f"ensemble-kd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (help_, groups) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--config", metavar="FILE.toml", help="TOML file of option defaults")
        p.add_argument("--out", metavar="DIR", required=name != "evaluate",
                       help="run directory to write"
                       + (" (default: the --run folder)" if name == "evaluate" else ""))
        if name in ("run", "train-ensemble", "distill", "train-specialists"):
            g = p.add_mutually_exclusive_group()
            g.add_argument("--resume", action="store_true", help="continue the run in --out")
            g.add_argument("--overwrite", action="store_true",
                           help="delete the run in --out and start again")
        if name == "distill":
            p.add_argument("--teachers", metavar="DIR", required=True,
                           help="a run folder with teachers/ (from train-ensemble) "
                                "or a folder of teacher_<k>/")
        if name == "evaluate":
            p.add_argument("--run", metavar="DIR", required=True, help="a run folder to evaluate")
        if name == "confusion-report":
            src = p.add_mutually_exclusive_group(required=True)
            src.add_argument("--model", metavar="FILE", help="a saved model (model.pt)")
            src.add_argument("--teachers", metavar="DIR", help="an ensemble: a folder with teacher_<k>/")
            src.add_argument("--predictions", metavar="FILE.npz", help="saved probs + labels")
            p.add_argument("--split", choices=("val", "test"), default="test",
                           help="which split to analyse (default test)")
        if name == "train-specialists":
            p.add_argument("--generalist", metavar="FILE", required=True, help="the generalist's model.pt")
            p.add_argument("--subsets", metavar="FILE.json",
                           help="class subsets (a JSON list of lists, or {'subsets': ...}); "
                                "default: clusters of the generalist's validation confusion")
        _add_config_flags(p, groups)
    return parser


def resolve_config(args: argparse.Namespace, groups) -> RunConfig:
    """Defaults <- config file <- flags."""
    values = read_config_file(args.config, groups) if args.config else {}
    for f in fields_of(groups):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = coerce(f.name, v)
    return RunConfig(**values)


def prepare_out(out: Path, cfg: RunConfig, command: str, *, resume: bool, overwrite: bool) -> None:
    """Create the run folder, refusing to mix runs; save the resolved config.

    Under torchrun every rank makes the (read-only) checks, rank 0 alone writes, the others wait.
    """
    from . import distributed as dist
    from .io import atomic_write_json

    cfg_path = out / "config.json"
    record = {"command": command, "version": __version__, "config": vars(cfg)}
    action = "new"
    if cfg_path.exists():
        if overwrite:
            action = "overwrite"
        elif resume:
            old = read_json(cfg_path)
            if not isinstance(old, dict):
                raise FormatError(f"{cfg_path}: not an ensemble-kd run record")
            ignore = {"quiet", "device"}
            diff = sorted(
                k for k in set(old.get("config", {})) | set(vars(cfg))
                if k not in ignore and old.get("config", {}).get(k) != vars(cfg).get(k)
            )
            if old.get("command") != command or diff:
                raise UsageError(
                    f"--resume: {out} holds a {old.get('command')!r} run with other settings "
                    f"({', '.join(diff) or 'command'}); use a new --out"
                )
            action = "resume"
        else:
            raise UsageError(
                f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it"
            )
    elif out.exists() and any(out.iterdir()) and not (resume or overwrite):
        raise UsageError(f"{out} exists and is not empty; choose a new --out or pass --overwrite")
    dist.barrier()  # every rank has looked before rank 0 changes anything
    if dist.is_main() and action != "resume":
        if action == "overwrite":
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cfg_path, record)
    dist.barrier()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        groups = COMMANDS[args.command][1]
        cfg = resolve_config(args, groups)
        from . import commands, distributed

        ok = False
        try:
            rc = commands.dispatch(args, cfg) or 0
            ok = True
            return rc
        finally:
            distributed.finish(wait=ok)
    except UsageError as e:
        print(f"ensemble-kd: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, FloatingPointError) as e:  # FormatError is a ValueError
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"ensemble-kd: error: {msg}", file=sys.stderr)
        return 2
    except OSError as e:  # a missing, unreadable or misplaced file or folder named by the user
        msg = " ".join(str(e).split()) or type(e).__name__
        if e.filename is not None and e.strerror:
            msg = f"{e.filename}: {e.strerror}"
        print(f"ensemble-kd: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ensemble-kd: interrupted; rerun the same command with --resume to continue",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
