"""``infer-fast train-teacher``: flags map 1:1 onto :class:`infer_fast.models.teacher.TeacherConfig`."""

from __future__ import annotations

import argparse
import dataclasses
import json

from infer_fast.models.archs import ARCHS
from infer_fast.models.teacher import TeacherConfig, train_teacher


def register(subparsers: argparse._SubParsersAction) -> None:
    defaults = TeacherConfig()
    p = subparsers.add_parser(
        "train-teacher", help="train a teacher classifier and save it as safetensors with metadata",
        description="Train a teacher (SGD nesterov, one-cycle lr, label smoothing 0.1, weight decay 5e-4) and "
                    "save it atomically as safetensors with its metadata (arch, classes, normalisation, val acc).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="ROOT", help="dataset root with train/ and val/ (or test/) class folders")
    src.add_argument("--dataset", choices=["digits"], help="scikit-learn's bundled digits (embedded default)")
    p.add_argument("--arch", required=True, choices=ARCHS)
    p.add_argument("--out", required=True, metavar="FILE", help="output .safetensors file")
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--momentum", type=float, default=defaults.momentum)
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    p.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing)
    p.add_argument("--width", type=float, default=defaults.width, help="channel multiplier (e.g. 0.25 on CPU)")
    p.add_argument("--image-size", type=int, default=defaults.image_size, help="default: the dataset's size")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--device", default=defaults.device, help="default: cuda when available, else cpu")
    p.add_argument("--loader", choices=["auto", "dali", "torch"], default=defaults.loader)
    p.add_argument("--num-workers", type=int, default=defaults.num_workers)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> TeacherConfig:
    fields = {f.name for f in dataclasses.fields(TeacherConfig)} - {"source"}
    return TeacherConfig(source=args.data or args.dataset, **{k: v for k, v in vars(args).items() if k in fields})


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    path, meta = train_teacher(cfg)
    print(json.dumps({"out": path, "arch": meta.arch, "val_acc": meta.val_acc, "sha256": meta.fingerprint}))
    return 0

