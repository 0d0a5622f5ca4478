"""The ``ensemble-kd`` entry point: parse, run the subcommand, turn mistakes into one-line errors."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .. import distributed
from ..train import flush_denormals
from .commands import dispatch
from .parser import COMMANDS, UsageError, build_parser, resolve_config


def _error(msg: str) -> int:
    print(f"ensemble-kd: error: {msg}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ensemble-kd`` with ``argv`` (default: the process's arguments); returns the exit code.

    Bad input ends with one line on stderr naming the problem and exit code 2, never a traceback;
    an interrupt (Ctrl-C) says how to resume and returns 130. Subnormal floats are flushed
    throughout, in torch's worker threads too (they start inside and inherit the mode); the
    caller's mode is restored on return.
    """
    with flush_denormals():
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        cfg = resolve_config(args, COMMANDS[args.command][1])
        ok = False
        try:
            rc = dispatch(args, cfg) or 0
            ok = True
            return rc
        finally:
            distributed.finish(wait=ok)
    except UsageError as e:
        return _error(str(e))
    except (ValueError, FloatingPointError) as e:  # FormatError is a ValueError
        return _error(" ".join(str(e).split()) or type(e).__name__)
    except OSError as e:  # a missing, unreadable or misplaced file or folder named by the user
        msg = " ".join(str(e).split()) or type(e).__name__
        if e.filename is not None and e.strerror:
            msg = f"{e.filename}: {e.strerror}"
        return _error(msg)
    except KeyboardInterrupt:
        print("ensemble-kd: interrupted; rerun the same command with --resume to continue",
              file=sys.stderr)
        return 130
