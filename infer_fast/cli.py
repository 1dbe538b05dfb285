"""The one infer_fast command line: ``infer-fast <command> ...`` (also ``python -m infer_fast``).

Each stage module contributes its subcommands through ``register(subparsers)``; every subcommand maps
1:1 onto that stage's config dataclass and sets ``func`` to the function that runs it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from infer_fast.runtime import BusyError, OutputError

# Stage modules that add subcommands (each defines register(subparsers)).
COMMAND_MODULES = [
    "infer_fast.data.commands",
    "infer_fast.synth.commands",
    "infer_fast.train.commands",
    "infer_fast.demo",
]


def build_parser() -> argparse.ArgumentParser:
    from infer_fast import __version__

    parser = argparse.ArgumentParser(
        prog="infer-fast", description="INFER dataset distillation with fused CPU/CUDA kernels."
    )
    parser.add_argument("--version", action="version", version=f"infer_fast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    info = sub.add_parser("info", help="the build (torch, CUDA, architectures, CPU ISA) beside this runtime (GPUs)")
    info.set_defaults(func=_info)
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

    # FileExistsError: an --out that already holds a run (distill, evaluate) without --resume; its message names it
    return DataError, ClassMismatchError, CheckpointError, DistilledFormatError, ConfigError, FileExistsError


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
        print(f"infer-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
