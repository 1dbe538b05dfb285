"""The one infer_fast command line: ``infer-fast <command> ...`` (also ``python -m infer_fast``).

Each stage module contributes its subcommands through ``register(subparsers)``; every subcommand maps
1:1 onto that stage's config dataclass and sets ``func`` to the function that runs it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from infer_fast.config_cli import Parser
from infer_fast.runtime import BusyError, OutputError

# Stage modules that add subcommands (each defines register(subparsers)).
COMMAND_MODULES = [
    "infer_fast.data.commands",
    "infer_fast.synth.commands",
    "infer_fast.distilled.commands",
    "infer_fast.train.commands",
    "infer_fast.demo",
]


def build_parser() -> argparse.ArgumentParser:
    from infer_fast import __version__

    parser = Parser(prog="infer-fast", description="INFER dataset distillation with fused CPU/CUDA kernels.")
    parser.add_argument("--version", action="version", version=f"infer_fast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    info = sub.add_parser("info", help="the build (torch, CUDA, architectures, CPU ISA) beside this runtime (GPUs)")
    info.set_defaults(func=_info, command_prog=info.prog)
    return parser


def _info(args: argparse.Namespace) -> int:
    from infer_fast.buildinfo import format_info

    print(format_info())
    return 0


def _bad_input_errors() -> tuple[type[Exception], ...]:
    from infer_fast.config_cli import ConfigError
    from infer_fast.data import DataError
    from infer_fast.distilled import DistilledFormatError
    from infer_fast.models import CheckpointError, ClassMismatchError

    # FileExistsError: an --out that already holds a run (distill, evaluate) without --resume; FileNotFoundError: a
    # named input file (a teacher) that is not there. Both messages name the file.
    return (DataError, ClassMismatchError, CheckpointError, DistilledFormatError, ConfigError, FileExistsError,
            FileNotFoundError)


def main(argv: list[str] | None = None) -> int:
    """Run one command. The one exit path of user errors: a bad flag, file or input ends here in one line,
    ``infer-fast <command>: error: <message>`` on stderr, with exit status 2 (argparse's own errors take the same
    form, see config_cli.Parser); no space or a second writer exits 1, an interrupt 130."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
    except SystemExit as exc:  # --help, --version (0) or a usage error already printed in one line (2)
        return int(exc.code or 0)
    if extra:  # named by the subcommand that did not know them, in the one style
        print(f"{args.command_prog}: error: unrecognized arguments: {' '.join(extra)}", file=sys.stderr)
        return 2
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("infer-fast: interrupted; finished work is saved (rerun with --resume where the command has it)",
              file=sys.stderr)
        return 130
    except (OutputError, BusyError) as exc:  # no space, no permission, a second writer: one line, no traceback
        print(f"infer-fast: {exc}", file=sys.stderr)
        return 1
    except _bad_input_errors() as exc:  # bad input: one line naming the file and what was expected; nothing lost
        prog = args.command_prog
        own = prog.split()[-1] + ": "  # a message that names its command already (a stage's own check)
        msg = " ".join(str(exc).removeprefix(own).split())  # one line, whatever the message holds
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
