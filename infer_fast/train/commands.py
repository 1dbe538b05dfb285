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
        raise config_cli.ConfigError(f"--val: expected ROOT or digits ({directory}/manifest.json names no data source "
                                     "to default to), got none")
    return src


def _config(args: argparse.Namespace) -> EvalConfig:
    """EvalConfig from --config and the flags; without --val (or val: in the file) the manifest's data source."""
    values = with_preset(config_cli.values_from_args(args, EvalConfig))
    config_cli.require(os.path.isdir(values["distilled"]), "DIR", "a distilled dataset folder (written by `infer-fast "
                       "distill`)", values["distilled"])
    if "val" not in values:  # neither --val nor the config file: the data the set was distilled from
        values["val"] = _manifest_source(values["distilled"])
    config_cli.require(values["val"] == "digits" or os.path.isdir(values["val"]), "--val", "digits or a dataset root "
                       "with val/ or test/ class folders", values["val"])
    return config_cli.build_config(EvalConfig, values)


def _run_evaluate(cfg: EvalConfig, args: argparse.Namespace) -> int:
    from infer_fast.train.loop import train_students

    train_students(cfg)
    return 0


def register(subparsers) -> None:
    register_train_teacher(subparsers)
    config_cli.add_command(
        subparsers, "evaluate", EvalConfig, _run_evaluate, build=_config,
        help="train a student on a distilled dataset and report real validation accuracy",
        description="Train a student on DIR (synthetic images composed on the fly, augmentation, mixup, fused "
                    "mixed-label KL) and validate it on real data (--val, by default the data the set was "
                    "distilled from). Defaults follow the paper (INFER §5).")


def _run_train_teacher(cfg: TeacherConfig, args: argparse.Namespace) -> int:
    path, meta = train_teacher(cfg)
    if meta is None:  # --stop-after ended the sitting; the state folder holds the run
        print(json.dumps({"out": path, "finished": False}))
    else:
        print(json.dumps({"out": path, "finished": True, "arch": meta.arch, "val_acc": meta.val_acc,
                          "sha256": meta.fingerprint}))
    return 0


def register_train_teacher(subparsers) -> None:
    config_cli.add_command(
        subparsers, "train-teacher", TeacherConfig, _run_train_teacher,
        help="train a teacher classifier and save it as safetensors with metadata",
        description="Train a teacher (SGD nesterov 0.9, cosine lr, weight decay 5e-4, no label smoothing) and save "
                    "it atomically as safetensors with its metadata (arch, classes, normalisation, val acc, history). "
                    "Resumable: --stop-after N ends a sitting, --resume continues it.")
