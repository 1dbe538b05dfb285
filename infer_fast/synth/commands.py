"""CLI: `infer-fast distill` (flags 1:1 onto DistillConfig, plus --config FILE.yaml) and `infer-fast export`."""

from __future__ import annotations

import argparse

from infer_fast import config_cli
from infer_fast.synth.config import BACKENDS, DistillConfig


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The DistillConfig flags (without ``--config``)."""
    config_cli.add_arguments(parser, DistillConfig, config_file=False)


def config_from_args(args: argparse.Namespace) -> DistillConfig:
    """Defaults < --config file < flags given on the command line."""
    return config_cli.config_from_args(args, DistillConfig)


def _distill(cfg: DistillConfig, args: argparse.Namespace) -> int:
    from infer_fast.synth.runner import run_distill

    return 0 if run_distill(cfg) is not None else 3


def _export(args: argparse.Namespace) -> int:
    from infer_fast.synth.export import export_imagefolder

    export_imagefolder(args.dir, args.to, backend=args.backend)
    return 0


def register(subparsers) -> None:
    config_cli.add_command(
        subparsers, "distill", DistillConfig, _distill,
        help="distil a dataset (INFER, or the sre2l/random baselines) into a small synthetic set",
        description="Distil a dataset with INFER (universal feature compensators) or a baseline. Every flag maps "
        "onto a DistillConfig field; --config FILE.yaml sets the same fields (flags override it). Under "
        "`torchrun --nproc_per_node=N -m infer_fast distill ...` the problems are sharded over the ranks.",
    )

    e = subparsers.add_parser(
        "export", help="write a distilled dataset as PNG files in ImageFolder layout plus its soft labels",
        description="Compose every synthetic image of a distilled dataset and write OUT/<class>/<index>.png, "
        "OUT/labels.pt and OUT/labels.safetensors (soft labels [N, C] in ImageFolder order) and OUT/files.txt.",
    )
    e.add_argument("dir", metavar="DIR", help="distilled dataset folder (written by infer-fast distill)")
    e.add_argument("--to", required=True, metavar="OUT", help="output folder (created; must be empty if it exists)")
    e.add_argument("--backend", choices=BACKENDS, default="fused", help="compose with the fused op or the reference")
    e.set_defaults(func=_export)
