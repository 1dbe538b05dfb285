"""``infer-fast evaluate`` and ``infer-fast train-teacher``: map 1:1 onto EvalConfig and TeacherConfig
(infer_fast.config_cli); ``--config FILE`` (YAML or JSON) sets the same fields, explicit flags override it."""

from __future__ import annotations

import argparse
import json
import os

from infer_fast import config_cli
from infer_fast.distilled import DistilledFormatError, Manifest
from infer_fast.train.config import EvalConfig, with_preset
from infer_fast.train.teacher import TeacherConfig, train_teacher


def _manifest_source(directory: str) -> str:
    """The data source the distilled set was made from (its validation split is the default --val)."""
    try:
        src = Manifest.read(directory).data_source
    except DistilledFormatError:
        src = None
    if not src:
        raise SystemExit(f"infer-fast evaluate: {directory}/manifest.json names no data source; pass --val ROOT or "
                         "--dataset digits")
    return src


def _config(args: argparse.Namespace) -> EvalConfig:
    """EvalConfig from --config and the flags; --dataset sets val, and without either the manifest's source does."""
    if "val" in vars(args) and args.dataset is not None:
        raise SystemExit("infer-fast evaluate: give either --val ROOT or --dataset digits, not both")
    values = with_preset(config_cli.values_from_args(args, EvalConfig))
    if not os.path.isdir(values["distilled"]):
        raise SystemExit(f"infer-fast evaluate: DIR {values['distilled']}: not a folder (expected a distilled dataset "
                         "written by `infer-fast distill`)")
    if args.dataset is not None:
        values["val"] = args.dataset
    elif "val" not in values:  # neither --val nor the config file: the data the set was distilled from
        values["val"] = _manifest_source(values["distilled"])
    if values["val"] != "digits" and not os.path.isdir(values["val"]):
        raise SystemExit(f"infer-fast evaluate: --val {values['val']}: not a folder (expected a dataset root with val/ "
                         "or test/ class folders, or --dataset digits)")
    return config_cli.build_config(EvalConfig, values)


def _run_evaluate(cfg: EvalConfig, args: argparse.Namespace) -> int:
    from infer_fast.train.loop import train_students

    train_students(cfg)
    return 0


def register(subparsers) -> None:
    register_train_teacher(subparsers)
    p = config_cli.add_command(
        subparsers, "evaluate", EvalConfig, _run_evaluate, build=_config,
        help="train a student on a distilled dataset and report real validation accuracy",
        description="Train a student on DIR (synthetic images composed on the fly, augmentation, mixup, fused "
                    "mixed-label KL) and validate it on real data. Defaults follow the paper (INFER §5).")
    p.add_argument("--dataset", choices=["digits"], help="validate on the embedded digits test split (sets --val)")


def teacher_config_from_args(args: argparse.Namespace) -> TeacherConfig:
    """TeacherConfig from --config and the flags; ``--data ROOT`` and ``--dataset digits`` both set ``source``."""
    values = config_cli.values_from_args(args, TeacherConfig)
    source = args.data or args.dataset
    if source:
        values["source"] = source
    elif "source" not in values:
        raise config_cli.ConfigError("one of --data ROOT or --dataset digits is required (or source: in --config)")
    return config_cli.build_config(TeacherConfig, values)


def _run_train_teacher(cfg: TeacherConfig, args: argparse.Namespace) -> int:
    path, meta = train_teacher(cfg)
    if meta is None:  # --stop-after ended the sitting; the state folder holds the run
        print(json.dumps({"out": path, "finished": False}))
    else:
        print(json.dumps({"out": path, "finished": True, "arch": meta.arch, "val_acc": meta.val_acc,
                          "sha256": meta.fingerprint}))
    return 0


def register_train_teacher(subparsers) -> None:
    p = config_cli.add_command(
        subparsers, "train-teacher", TeacherConfig, _run_train_teacher, build=teacher_config_from_args,
        help="train a teacher classifier and save it as safetensors with metadata",
        description="Train a teacher (SGD nesterov 0.9, cosine lr, weight decay 5e-4, no label smoothing) and save "
                    "it atomically as safetensors with its metadata (arch, classes, normalisation, val acc, history). "
                    "Resumable: --stop-after N ends a sitting, --resume continues it.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", metavar="ROOT", help="dataset root with train/ and val/ (or test/) class folders")
    src.add_argument("--dataset", choices=["digits"], help="scikit-learn's bundled digits (embedded default)")
