"""CLI: `infer-fast export DIR --out OUT [--format imagefolder|ddranking]` (flags 1:1 onto ExportConfig)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from infer_fast import config_cli
from infer_fast.config_cli import option
from infer_fast.distilled.export import FORMATS, export
from infer_fast.ops.backend import BACKENDS


@dataclass
class ExportConfig:
    distilled: str = option(positional=True, metavar="DIR", help="distilled dataset folder (written by infer-fast "
                            "distill)")
    out: str = option("", metavar="OUT", required=True, aliases=("--to",), help="output folder (created; must be "
                      "empty if it exists)")
    format: str = option("imagefolder", choices=FORMATS, help="imagefolder: PNGs in OUT/<class>/ plus the soft labels "
                         "in ImageFolder order; ddranking: the class-major image tensor and soft labels that "
                         "DD-Ranking's SoftLabelEvaluator.compute_metrics takes, with the ipc to pass in "
                         "OUT/ddranking.json")
    backend: str = option("fused", choices=BACKENDS, help="compose the images with the fused op or the reference")


def _run(cfg: ExportConfig, args: argparse.Namespace) -> int:
    n = export(cfg.distilled, cfg.out, fmt=cfg.format, backend=cfg.backend)
    print(f"export: {n} images ({cfg.format}) -> {cfg.out}")
    return 0


def register(subparsers) -> None:
    config_cli.add_command(
        subparsers, "export", ExportConfig, _run,
        help="write a distilled dataset for other evaluators (ImageFolder PNGs, or DD-Ranking's tensors)",
        description="Compose every synthetic image of a distilled dataset and write it with its static soft labels: "
        "--format imagefolder writes OUT/<class>/<index>.png, OUT/labels.pt, OUT/labels.safetensors (soft labels "
        "[N, C] in ImageFolder order) and OUT/files.txt; --format ddranking writes OUT/ddranking.safetensors "
        "(class-major image_tensor and soft_labels), OUT/ddranking.json (the ipc to pass, the class order) and a "
        "README.md.")
