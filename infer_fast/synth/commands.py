"""CLI: `infer-fast distill` (flags 1:1 onto DistillConfig, plus --config FILE.yaml; `--plan-*` 1:1 onto
PlanSettings) and `infer-fast evidence` (1:1 onto EvidenceConfig)."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass

from infer_fast import config_cli
from infer_fast.config_cli import option, require
from infer_fast.ops.backend import BACKENDS
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
    config_cli.add_command(
        subparsers, "evidence", EvidenceConfig, _evidence,
        help="class evidence of a distilled set under judge networks (e.g. ones it was not distilled with)",
        description="Measure how much of its class each image of a distilled set carries (top-1 and mean true-class "
        "probability, naturals against composed images, un-augmented), under --judges: networks other than the "
        "teachers its compensators were optimised against ask whether the evidence that distill records is a "
        "property of the images or of those teachers. Prints one line per judge; --json FILE keeps the figures.")


@dataclass
class EvidenceConfig:
    distilled: str = option(positional=True, metavar="DIR", help="distilled dataset folder (written by infer-fast "
                            "distill)")
    judges: list[str] = option(default_factory=list, metavar="FILE", required=True, help="classifier files to judge "
                               "the images with (teachers the set was not distilled with, a student's "
                               "student.safetensors, torchvision:NAME); each is marked held out unless it is one of "
                               "the set's teachers")
    teacher_classes: str | None = option(None, metavar="imagenet1k|FILE", help="declare the output classes of judge "
                                         "files that do not state them (as distill --teacher-classes)")
    data: str | None = option(None, metavar="ROOT|digits", help="where a set without stored naturals (sre2l) takes "
                              "its reference naturals from (default: the source it was distilled from)")
    batch_size: int = option(256, help="images per judge forward")
    json: str | None = option(None, metavar="FILE", help="also write the figures to FILE (atomically)")
    device: str = option("auto", help="auto, cpu, cuda or cuda:N")
    backend: str = option("fused", choices=BACKENDS, help="compose the images with the fused op or the reference")

    def validate(self) -> None:
        require(os.path.isfile(os.path.join(self.distilled, "manifest.json")), "DIR",
                "a distilled dataset folder (with manifest.json)", self.distilled)
        require(self.batch_size >= 1, "--batch-size", ">= 1", self.batch_size)


def _evidence(cfg: EvidenceConfig, args: argparse.Namespace) -> int:
    from infer_fast.runtime import atomic_write_text
    from infer_fast.synth.evidence import describe, judge

    out = judge(cfg.distilled, cfg.judges, device=cfg.device, batch_size=cfg.batch_size,
                declared=cfg.teacher_classes, data=cfg.data, backend=cfg.backend)
    line, warning = describe(out, hint=None, judged_by="judge ensemble" if len(cfg.judges) > 1 else "judge")
    print(f"evidence: {line}")
    n = len(out["judges"])
    nat = (out.get("natural") or {}).get("teachers") or [None] * n
    comp = (out.get("composed") or {}).get("teachers") or [None] * n
    for j, fn, fc in zip(out["judges"], nat, comp, strict=True):
        role = "held out" if j["held_out"] else "one of the set's teachers"
        parts = [f"{g} true-class p {f['true_prob']:.3f} (top-1 {f['top1']:.1%})"
                 for g, f in (("natural", fn), ("composed", fc)) if f is not None]
        print(f"evidence: judge {j['path']} ({j['arch']}, {role}): " + "; ".join(parts))
    teach = out["teachers_evidence"]
    if teach:
        print("evidence: the set's own teachers (manifest): " + "; ".join(
            f"{g} true-class p {f['true_prob']:.3f}" for g, f in teach.items()))
    if warning:
        print(f"evidence: {warning}")
    if cfg.json:
        atomic_write_text(cfg.json, json.dumps(out, indent=1) + "\n")
    return 0
