"""CLI: `infer-fast distill` (flags 1:1 onto DistillConfig, plus --config FILE.yaml; `--plan-*` 1:1 onto
PlanSettings)."""

from __future__ import annotations

import argparse

from infer_fast import config_cli
from infer_fast.synth.config import DistillConfig
from infer_fast.synth.plan import PlanSettings


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The DistillConfig flags (without ``--config``)."""
    config_cli.add_arguments(parser, DistillConfig, config_file=False)


def config_from_args(args: argparse.Namespace) -> DistillConfig:
    """Defaults < --config file < flags given on the command line."""
    return config_cli.config_from_args(args, DistillConfig)


def _default_teachers(cfg: DistillConfig):
    """The digits' default ensemble, trained on first use and cached (the teacher-training stage's product). The CLI
    layer composes the two stages; the synthesis stage itself only takes teacher files (no sideways import)."""
    from infer_fast.train.teacher import default_teachers

    return lambda source, image_size: default_teachers(source, cache_dir=cfg.teacher_cache, image_size=image_size)


def _distill(cfg: DistillConfig, args: argparse.Namespace) -> int:
    if args.plan:
        from infer_fast.synth.plan import format_plan, make_plan

        settings = config_cli.build_config(PlanSettings, config_cli.values_from_args(args, PlanSettings,
                                                                                     config_file=False))
        print(format_plan(make_plan(cfg, settings, default_teachers=_default_teachers(cfg))))
        return 0
    from infer_fast.synth.runner import run_distill

    return 0 if run_distill(cfg, default_teachers=_default_teachers(cfg)) is not None else 3


def register(subparsers) -> None:
    d = config_cli.add_command(
        subparsers, "distill", DistillConfig, _distill,
        help="distil a dataset (INFER, or the sre2l/random baselines) into a small synthetic set",
        description="Distil a dataset with INFER (universal feature compensators) or a baseline. Every flag maps "
        "onto a DistillConfig field; --config FILE.yaml sets the same fields (flags override it). Under "
        "`torchrun --nproc_per_node=N -m infer_fast distill ...` the problems are sharded over the ranks.",
    )
    g = d.add_argument_group("--plan (no optimisation: budget, FLOPs, a timed probe, a projection, the command)")
    g.add_argument("--plan", action="store_true", help="print and write the resource plan of this run instead of "
                   "running it")
    config_cli.add_arguments(g, PlanSettings, config_file=False)
