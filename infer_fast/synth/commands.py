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


def _default_teachers(cfg: DistillConfig):
    """The digits' default ensemble, trained on first use and cached (the teacher-training stage's product). The CLI
    layer composes the two stages; the synthesis stage itself only takes teacher files (no sideways import)."""
    from infer_fast.train.teacher import default_teachers

    return lambda source, image_size: default_teachers(source, cache_dir=cfg.teacher_cache, image_size=image_size)


def _distill(cfg: DistillConfig, args: argparse.Namespace) -> int:
    if args.plan:
        from infer_fast.synth.plan import PlanSettings, format_plan, make_plan

        settings = PlanSettings(gpus=args.plan_gpus, nodes=args.plan_nodes, peak_tflops=args.plan_peak_tflops,
                                utilisation=args.plan_utilisation, probe_iterations=args.plan_probe_iterations,
                                probe_images=args.plan_probe_images, json_path=args.plan_json)
        print(format_plan(make_plan(cfg, settings, default_teachers=_default_teachers(cfg))))
        return 0
    from infer_fast.synth.runner import run_distill

    return 0 if run_distill(cfg, default_teachers=_default_teachers(cfg)) is not None else 3


def _add_plan_arguments(p: argparse.ArgumentParser) -> None:
    from infer_fast.synth.plan import DEFAULT_PEAK_TFLOPS, DEFAULT_UTILISATION, PlanSettings

    d = PlanSettings()
    g = p.add_argument_group("--plan (no optimisation: budget, FLOPs, a timed probe, a projection, the command)")
    g.add_argument("--plan", action="store_true", help="print and write the resource plan of this run instead of "
                   "running it")
    g.add_argument("--plan-json", metavar="FILE", help="where the plan's JSON goes (default: <out>.plan.json)")
    g.add_argument("--plan-gpus", type=int, default=d.gpus, help=f"GPUs of the projected layout (default: {d.gpus})")
    g.add_argument("--plan-nodes", type=int, default=d.nodes, help=f"nodes of that layout (default: {d.nodes})")
    g.add_argument("--plan-peak-tflops", type=float, default=DEFAULT_PEAK_TFLOPS, help="peak TFLOP/s per GPU "
                   f"(default: {DEFAULT_PEAK_TFLOPS:g}, H100 SXM dense TF32)")
    g.add_argument("--plan-utilisation", type=float, default=DEFAULT_UTILISATION, help="assumed fraction of the "
                   f"peak (default: {DEFAULT_UTILISATION:g})")
    g.add_argument("--plan-probe-iterations", type=int, default=d.probe_iterations, help="timed probe iterations "
                   f"per teacher on this device, 0: none (default: {d.probe_iterations})")
    g.add_argument("--plan-probe-images", type=int, default=d.probe_images, help="images per problem in the "
                   f"probe, scaled to the real count (default: {d.probe_images})")


def _export(args: argparse.Namespace) -> int:
    from infer_fast.distilled.export import export_imagefolder

    export_imagefolder(args.dir, args.to, backend=args.backend)
    return 0


def register(subparsers) -> None:
    d = config_cli.add_command(
        subparsers, "distill", DistillConfig, _distill,
        help="distil a dataset (INFER, or the sre2l/random baselines) into a small synthetic set",
        description="Distil a dataset with INFER (universal feature compensators) or a baseline. Every flag maps "
        "onto a DistillConfig field; --config FILE.yaml sets the same fields (flags override it). Under "
        "`torchrun --nproc_per_node=N -m infer_fast distill ...` the problems are sharded over the ranks.",
    )
    _add_plan_arguments(d)

    e = subparsers.add_parser(
        "export", help="write a distilled dataset as PNG files in ImageFolder layout plus its soft labels",
        description="Compose every synthetic image of a distilled dataset and write OUT/<class>/<index>.png, "
        "OUT/labels.pt and OUT/labels.safetensors (soft labels [N, C] in ImageFolder order) and OUT/files.txt.",
    )
    e.add_argument("dir", metavar="DIR", help="distilled dataset folder (written by infer-fast distill)")
    e.add_argument("--to", required=True, metavar="OUT", help="output folder (created; must be empty if it exists)")
    e.add_argument("--backend", choices=BACKENDS, default="fused", help="compose with the fused op or the reference")
    e.set_defaults(func=_export)
