"""``infer-fast evaluate`` and ``infer-fast demo``: each maps 1:1 onto its config dataclass (EvalConfig,
DemoConfig); ``--config FILE`` (YAML or JSON) sets the same fields, explicit flags override it."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import fields

from infer_fast.distilled import DistilledFormatError, data_source, read_manifest
from infer_fast.train.config import BACKENDS, LABEL_MODES, EvalConfig


def _load_config_file(path: str, cls) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--config: {path} does not exist")
    with open(path) as f:
        text = f.read()
    if path.endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected a mapping of {cls.__name__} fields, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"--config {path}: unknown field(s) {unknown}; {cls.__name__} has {sorted(known)}")
    return data


def config_from_args(args: argparse.Namespace, cls, mapping: dict[str, str]):
    """Build ``cls`` from the config file (if any) then every flag given explicitly (argparse default None)."""
    values = _load_config_file(args.config, cls) if getattr(args, "config", None) else {}
    for arg_name, field_name in mapping.items():
        v = getattr(args, arg_name, None)
        if v is not None:
            values[field_name] = v
    return cls(**values)


_EVAL_MAP = {
    "distilled": "distilled", "student": "student", "width": "width", "labels": "labels", "epochs": "epochs",
    "dynamic_divide_epochs": "dynamic_divide_epochs", "batch_size": "batch_size", "lr": "lr", "wd": "weight_decay",
    "temperature": "temperature", "mixup_alpha": "mixup_alpha", "eval_every": "eval_every",
    "eval_batch_size": "eval_batch_size", "device": "device", "loader": "loader", "workers": "workers",
    "backend": "backend", "teacher": "teachers", "out": "out", "resume": "resume",
    "stop_after": "stop_after", "seed": "seed",
    "progress": "progress",
}


def _manifest_source(directory: str) -> str:
    """The data source the distilled set was made from (its validation split is the default --val)."""
    try:
        src = data_source(read_manifest(directory))
    except DistilledFormatError:
        src = None
    if not src:
        raise SystemExit(f"infer-fast evaluate: {directory}/manifest.json names no data source; pass --val ROOT or "
                         "--dataset digits")
    return src


def _run_evaluate(args: argparse.Namespace) -> int:
    from infer_fast.train.loop import train_student

    if args.val is not None and args.dataset is not None:
        raise SystemExit("infer-fast evaluate: give either --val ROOT or --dataset digits, not both")
    cfg = config_from_args(args, EvalConfig, _EVAL_MAP)
    if not os.path.isdir(cfg.distilled):
        raise SystemExit(f"infer-fast evaluate: DIR {cfg.distilled}: not a folder (expected a distilled dataset "
                         "written by `infer-fast distill`)")
    if args.val is not None:
        cfg.val = args.val
    elif args.dataset is not None:
        cfg.val = args.dataset
    elif not (args.config and "val" in _load_config_file(args.config, EvalConfig)):
        cfg.val = _manifest_source(cfg.distilled)
    if cfg.val != "digits" and not os.path.isdir(cfg.val):
        raise SystemExit(f"infer-fast evaluate: --val {cfg.val}: not a folder (expected a dataset root with val/ or "
                         "test/ class folders, or --dataset digits)")
    try:
        cfg.validate()
    except ValueError as exc:
        raise SystemExit(f"infer-fast evaluate: {exc}") from exc
    train_student(cfg)
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from infer_fast.train.demo import DemoConfig, run_demo

    cfg = config_from_args(args, DemoConfig, {k: k for k in (f.name for f in fields(DemoConfig))})
    if args.quick:
        cfg = cfg.quick()
    run_demo(cfg)
    return 0


def register(subparsers) -> None:
    d = EvalConfig()
    p = subparsers.add_parser(
        "evaluate", help="train a student on a distilled dataset and report real validation accuracy",
        description="Train a student on DIR (synthetic images composed on the fly, augmentation, mixup, fused "
                    "mixed-label KL) and validate it on real data. Defaults follow the paper (INFER.md section 5).",
        argument_default=None)
    p.add_argument("distilled", metavar="DIR", help="distilled dataset folder")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--val", metavar="ROOT",
                     help="dataset root holding val/ or test/ class folders (default: the manifest's data source)")
    src.add_argument("--dataset", choices=["digits"], help="validate on the embedded digits test split")
    p.add_argument("--config", metavar="FILE", help="YAML/JSON file with EvalConfig fields (flags override it)")
    p.add_argument("--student", help=f"student architecture (models.ARCHS); default {d.student}: resnet18_cifar "
                                     "for small images, resnet18 otherwise")
    p.add_argument("--width", type=float, help=f"student width multiplier (default {d.width})")
    p.add_argument("--labels", choices=LABEL_MODES, help=f"default {d.labels}")
    p.add_argument("--epochs", type=int,
                   help=f"default {d.epochs}; dynamic labels on an INFER set run epochs // (M + 1)")
    p.add_argument("--no-divide-epochs", dest="dynamic_divide_epochs", action="store_false", default=None,
                   help="dynamic labels on an INFER set: train the full --epochs instead of epochs // (M + 1) "
                        "(baselines always train the full --epochs)")
    p.add_argument("--batch-size", type=int, help=f"global batch (default {d.batch_size})")
    p.add_argument("--lr", type=float, help=f"AdamW learning rate (default {d.lr})")
    p.add_argument("--wd", type=float, help=f"AdamW weight decay (default {d.weight_decay})")
    p.add_argument("--temperature", type=float, help=f"KL temperature (default {d.temperature})")
    p.add_argument("--mixup-alpha", type=float, help=f"lam ~ Beta(a, a), 0 disables (default {d.mixup_alpha})")
    p.add_argument("--eval-every", type=int, help="validate every N epochs (default: ~25 points, always the last)")
    p.add_argument("--eval-batch-size", type=int, help=f"default {d.eval_batch_size}")
    p.add_argument("--teacher", action="append", metavar="PATH",
                   help="dynamic labels: teacher file (repeatable); default: the manifest's teachers")
    p.add_argument("--backend", choices=BACKENDS, help="loss implementation (default fused)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (default auto)")
    p.add_argument("--loader", choices=["auto", "dali", "torch"], help="validation loader (default auto)")
    p.add_argument("--workers", type=int, help=f"validation loader workers (default {d.workers})")
    p.add_argument("--out", metavar="RUNDIR", help="run folder (default runs/eval-<method>-<labels>-<time>)")
    p.add_argument("--resume", action="store_true", default=None,
                   help="continue the run in --out from its last checkpoint")
    p.add_argument("--stop-after", type=int, metavar="N", help="stop (resumably) after N epochs of this run")
    p.add_argument("--seed", type=int, help=f"default {d.seed}")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
    p.set_defaults(func=_run_evaluate)

    from infer_fast.train.demo import DemoConfig

    dd = DemoConfig()
    q = subparsers.add_parser(
        "demo", help="the main job: teachers, distill (infer, sre2l, random) and evaluate on the embedded digits",
        description="On scikit-learn's embedded digits (nothing downloaded): train the default teacher ensemble, "
                    "distill with infer, sre2l and random at the same budget, evaluate each with the same student, "
                    "and write results.json, report.md and PNGs into --out.",
        argument_default=None)
    q.add_argument("--out", help=f"output folder (default {dd.out})")
    q.add_argument("--config", metavar="FILE", help="YAML/JSON file with DemoConfig fields (flags override it)")
    q.add_argument("--quick", action="store_true", help="a much smaller setting (for tests and CI), not the report's")
    q.add_argument("--ipc", type=int, help=f"images per class budget (default {dd.ipc})")
    q.add_argument("--iterations", type=int, help=f"synthesis iterations (default {dd.iterations})")
    q.add_argument("--epochs", type=int, help=f"student epochs (default {dd.epochs})")
    q.add_argument("--student", help=f"student architecture (default {dd.student})")
    q.add_argument("--width", type=float, help=f"student width (default {dd.width})")
    q.add_argument("--image-size", dest="image_size", type=int, help=f"digits image size (default {dd.image_size})")
    q.add_argument("--methods", nargs="+", choices=["infer", "sre2l", "random"], help="default: all three")
    q.add_argument("--teacher-cache", dest="teacher_cache", metavar="DIR",
                   help="where the default teachers are cached (default ~/.cache/infer_fast or $INFER_FAST_CACHE)")
    q.add_argument("--seed", type=int, help=f"default {dd.seed}")
    q.add_argument("--device", help="default auto")
    q.add_argument("--backend", choices=BACKENDS, help="loss implementation (default fused)")
    q.set_defaults(func=_run_demo)
