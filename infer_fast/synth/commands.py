"""CLI: `infer-fast distill` (flags 1:1 onto DistillConfig, plus --config FILE.yaml) and `infer-fast export`."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing

from infer_fast.synth.config import BACKENDS, METHODS, PRECISIONS, UFC_BOUNDS, DistillConfig, load_config_file

_HELP = {
    "data": "dataset root folder (ImageFolder split folders train/ and val/ or test/)",
    "dataset": "embedded dataset name instead of --data: digits",
    "teachers": "teacher checkpoint files, one per architecture (digits: default ensemble when omitted)",
    "method": "infer (UFCs), sre2l (class-specific synthesis) or random (random naturals); same budget and format",
    "ipc": "storage budget in images per class",
    "out": "output folder of the distilled dataset",
    "resume": "continue an interrupted run in --out (the result equals an uninterrupted run)",
    "iterations": "optimisation steps T per problem (default: 1000 small images, 2000 ImageNet-style)",
    "r_bn": "weight of the BN-statistic matching loss (default: 1 small images, 0.01 ImageNet-style)",
    "jitter": "random roll of up to this many pixels per iteration (default: 4 small images, 32 ImageNet-style)",
    "ufc_bound": "bound of the stored UFC: loose [lo-hi, hi-lo] (spec 3.5; images are clamped per image) or set "
    "(the withdrawn intersection rule, pins u to ~0 at 100+ classes; ablations only)",
    "problems_per_batch": "(k, m) problems of one teacher per forward pass, each its own BN-statistics group "
    "(0: auto, enough for the pixels of 32 CIFAR images per forward)",
    "class_chunk": "images of a problem per forward (0: all classes); each chunk its own BN group",
    "stop_after": "stop after this many finished batches (resumable with --resume)",
    "backend": "fused: infer_fast kernels; reference: pure-PyTorch references",
    "fold_bn": "fold each BatchNorm into its convolution (BN statistics recovered exactly from the folded output)",
    "channels_last": "run the teacher channels-last (fastest convolution layout of oneDNN and cuDNN)",
    "compile": "torch.compile the prepared teacher",
    "precision": "fp32, or bf16 autocast of the teacher (GPU lever; refused where it would crash)",
}


def _arg_type(tp):
    """(argparse type, is_list, is_bool) for a DistillConfig field type."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in args if a is not type(None))
    if typing.get_origin(tp) is list:
        return typing.get_args(tp)[0], True, False
    return tp, False, tp is bool


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(DistillConfig)
    defaults = DistillConfig()
    for f in dataclasses.fields(DistillConfig):
        flag = "--" + f.name.replace("_", "-")
        tp, is_list, is_bool = _arg_type(hints[f.name])
        help_text = _HELP.get(f.name, "") + f" (default: {getattr(defaults, f.name)!r})"
        kw: dict = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text.strip()}
        if is_bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif is_list:
            parser.add_argument(flag, nargs="+", type=tp, metavar="FILE", **kw)
        else:
            choices = {"method": METHODS, "backend": BACKENDS, "precision": PRECISIONS,
                       "ufc_bound": UFC_BOUNDS}.get(f.name)
            parser.add_argument(flag, type=tp, choices=choices, **kw)


def config_from_args(args: argparse.Namespace) -> DistillConfig:
    """Defaults < --config file < flags given on the command line."""
    fields = {f.name for f in dataclasses.fields(DistillConfig)}
    d: dict = {}
    if getattr(args, "config", None):
        d.update(load_config_file(args.config))
    d.update({k: v for k, v in vars(args).items() if k in fields})
    cfg = DistillConfig.from_dict(d, where=args.config if getattr(args, "config", None) else "distill")
    cfg.validate()
    return cfg


def _distill(args: argparse.Namespace) -> int:
    from infer_fast.synth.runner import run_distill

    out = run_distill(config_from_args(args))
    return 0 if out is not None else 3


def _export(args: argparse.Namespace) -> int:
    from infer_fast.synth.export import export_imagefolder

    export_imagefolder(args.dir, args.to, backend=args.backend)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "distill", help="distil a dataset (INFER, or the sre2l/random baselines) into a small synthetic set",
        description="Distil a dataset with INFER (universal feature compensators) or a baseline. Every flag maps "
        "onto a DistillConfig field; --config FILE.yaml sets the same fields (flags override it). Under "
        "`torchrun --nproc_per_node=N -m infer_fast distill ...` the problems are sharded over the ranks.",
    )
    p.add_argument("--config", metavar="FILE", help="YAML or JSON file with DistillConfig fields")
    add_config_arguments(p)
    p.set_defaults(func=_distill)

    e = subparsers.add_parser(
        "export", help="write a distilled dataset as PNG files in ImageFolder layout plus its soft labels",
        description="Compose every synthetic image of a distilled dataset and write OUT/<class>/<index>.png, "
        "OUT/labels.pt and OUT/labels.safetensors (soft labels [N, C] in ImageFolder order) and OUT/files.txt.",
    )
    e.add_argument("dir", metavar="DIR", help="distilled dataset folder (written by infer-fast distill)")
    e.add_argument("--to", required=True, metavar="OUT", help="output folder (created; must be empty if it exists)")
    e.add_argument("--backend", choices=BACKENDS, default="fused", help="compose with the fused op or the reference")
    e.set_defaults(func=_export)
