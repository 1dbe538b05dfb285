"""``infer-fast train-teacher``: flags map 1:1 onto :class:`infer_fast.models.teacher.TeacherConfig` (through
infer_fast.config_cli), except ``--data ROOT`` / ``--dataset digits``, which both set ``source``."""

from __future__ import annotations

import argparse
import json

from infer_fast import config_cli
from infer_fast.models.teacher import TeacherConfig, train_teacher


def register(subparsers: argparse._SubParsersAction) -> None:
    p = config_cli.add_command(
        subparsers, "train-teacher", TeacherConfig, run, build=config_from_args,
        help="train a teacher classifier and save it as safetensors with metadata",
        description="Train a teacher (SGD nesterov, one-cycle lr, label smoothing 0.1, weight decay 5e-4) and "
                    "save it atomically as safetensors with its metadata (arch, classes, normalisation, val acc).")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", metavar="ROOT", help="dataset root with train/ and val/ (or test/) class folders")
    src.add_argument("--dataset", choices=["digits"], help="scikit-learn's bundled digits (embedded default)")


def config_from_args(args: argparse.Namespace) -> TeacherConfig:
    values = config_cli.values_from_args(args, TeacherConfig)
    source = args.data or args.dataset
    if source:
        values["source"] = source
    elif "source" not in values:
        raise config_cli.ConfigError("one of --data ROOT or --dataset digits is required (or source: in --config)")
    return config_cli.build_config(TeacherConfig, values)


def run(cfg: TeacherConfig, args: argparse.Namespace) -> int:
    path, meta = train_teacher(cfg)
    print(json.dumps({"out": path, "arch": meta.arch, "val_acc": meta.val_acc, "sha256": meta.fingerprint}))
    return 0
