"""``infer-fast data check ROOT``: validate every image of a dataset root, report, cache the good-file list.
``infer-fast data holdout ROOT --per-class N --out OUT``: split a held-out slice off the training images."""

from __future__ import annotations

import argparse
import os
import shutil
from dataclasses import dataclass

from infer_fast.config_cli import add_command, option, require
from infer_fast.data.folder import EVAL_SPLITS, TRAIN_SPLITS, DataError, resolve_split, scan_split
from infer_fast.runtime import atomic_write_json

MAX_CLASS_ROWS = 50  # print per-class counts in full up to this many classes, else a summary


@dataclass
class CheckConfig:
    root: str = option(positional=True, metavar="ROOT",
                       help="dataset root holding train/ and val/ or test/ (ImageFolder layout)")
    json: str | None = option(None, metavar="PATH", help="write the full report as JSON to PATH")
    full_decode: bool = option(False, help="decode every file at full resolution (slower; otherwise: 1/8-scale JPEG "
                               "decode, PIL verify)")
    workers: int | None = option(None, help="validation threads (default: 2 x cores, max 32)")
    cache: bool = option(True, help="read and write the cached good-file list (--no-cache: neither)")


@dataclass
class HoldoutConfig:
    root: str = option(positional=True, metavar="ROOT", help="dataset root holding train/ (ImageFolder layout)")
    per_class: int = option(50, help="training images per class held out (seeded; every class keeps the rest)")
    seed: int = option(0, help="seed of the per-class choice")
    out: str | None = option(None, metavar="OUT", required=True,
                      help="new folder: OUT/train (the rest) and OUT/holdout (the slice)")

    def validate(self) -> None:
        require(isinstance(self.per_class, int) and self.per_class >= 1, "--per-class", "an integer >= 1",
                self.per_class)
        require(not os.path.lexists(self.out), "--out", "a new folder (nothing is overwritten)", self.out)


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="dataset tools", description="Dataset tools.")
    sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    add_command(
        sub, "check", CheckConfig, _run_check,
        help="validate every image of a dataset root and cache the list of good files",
        description="Scan ROOT/{train,val,test}/<class>/* in parallel, report per-class counts and every bad file "
                    "(empty, truncated, not an image, undecodable), and cache the good-file list that the loaders "
                    "read (invalidated when the folder changes).",
    )
    add_command(
        sub, "holdout", HoldoutConfig, _run_holdout,
        help="split a seeded held-out slice off a dataset's training images (to choose settings on)",
        description="Create OUT/train/<class>/ (links to every valid training image but the slice) and "
                    "OUT/holdout/<class>/ (links to --per-class seeded ones), plus OUT/holdout.json listing both. "
                    "Distil and train with --data OUT and choose settings with evaluate --val OUT/holdout, so that "
                    "the validation split stays for the tables. Written to a temporary folder, then renamed.",
    )


def _run_check(cfg: CheckConfig, args: argparse.Namespace) -> int:
    return check(cfg)  # a DataError (unusable root) ends in infer_fast.cli.main: one line, exit status 2


def _run_holdout(cfg: HoldoutConfig, args: argparse.Namespace) -> int:
    report = holdout(cfg.root, cfg.out, cfg.per_class, cfg.seed)
    print(f"holdout: {report['holdout_images']} images held out ({cfg.per_class} per class, seed {cfg.seed}), "
          f"{report['train_images']} left to train on, {report['skipped']} invalid skipped -> {cfg.out}")
    return 0


def holdout(root: str, out: str, per_class: int, seed: int = 0) -> dict:
    """Split ``per_class`` seeded valid training images of every class of ``root`` off into ``out/holdout`` and
    link the rest into ``out/train`` (symlinks to the absolute originals). Every class must keep at least one
    training image. Written into a temporary sibling folder and renamed, so ``out`` is whole or absent.
    Returns the report also written to ``out/holdout.json``."""
    from infer_fast.data.api import _pick, files_by_class  # the seeded per-class choice of sample_naturals

    scan = scan_split(root, "train")
    by_class = files_by_class(scan)
    short = [(c, len(fs)) for c, fs in zip(scan.classes, by_class, strict=True) if len(fs) <= per_class]
    if short:
        raise DataError(f"--per-class {per_class}: class {short[0][0]!r} of {scan.split_dir} has {short[0][1]} valid "
                        f"images; every class must keep at least one to train on ({len(short)} class(es) short)")
    out = os.path.abspath(out)
    tmp = f"{out}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    held: dict[str, list[str]] = {}
    try:
        for c, (cls, files) in enumerate(zip(scan.classes, by_class, strict=True)):
            files = sorted(files)
            chosen = set(_pick(len(files), per_class, seed, c, cls, scan.split_dir))
            held[cls] = [files[i] for i in sorted(chosen)]
            for i, f in enumerate(files):
                split = "holdout" if i in chosen else "train"
                os.makedirs(os.path.join(tmp, split, cls), exist_ok=True)
                os.symlink(f, os.path.join(tmp, split, cls, os.path.basename(f)))
        report = {"root": os.path.abspath(root), "per_class": per_class, "seed": seed,
                  "classes": len(scan.classes), "holdout_images": sum(map(len, held.values())),
                  "train_images": len(scan.files) - sum(map(len, held.values())), "skipped": len(scan.bad),
                  "holdout": held}
        atomic_write_json(os.path.join(tmp, "holdout.json"), report)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def check(cfg: CheckConfig) -> int:
    """Run the check; 0 when every class of every split has a valid image, 1 otherwise (2: unusable root)."""
    root = os.path.abspath(cfg.root)
    if not os.path.exists(root):
        raise DataError(f"dataset root {root!r} does not exist")
    if not os.path.isdir(root):
        raise DataError(f"dataset root {root!r} is not a directory")
    splits = [s for s in (*TRAIN_SPLITS, *EVAL_SPLITS) if os.path.isdir(os.path.join(root, s))]
    if not splits:  # a plain ROOT/<class>/<image> tree is an evaluation source (resolve_split says so, or refuses)
        splits = [resolve_split(root, "eval")]
    report, rc = {"root": root, "splits": {}}, 0
    for split in splits:
        scan = scan_split(root, split, full_decode=cfg.full_decode, workers=cfg.workers, use_cache=cfg.cache,
                          require_all_classes=False, progress=True)
        rep = scan.report()
        rep["from_cache"] = scan.from_cache
        empty = [c for c in scan.classes if scan.counts[c] == 0]
        rep["classes_without_valid_image"] = empty
        report["splits"][split] = rep
        _print_split(rep)
        if empty:
            print(f"error: {split}: class folder(s) without a valid image: {', '.join(empty)}")
            rc = 1
    if cfg.json:
        atomic_write_json(cfg.json, report)
        print(f"wrote report to {cfg.json}")
    return rc


def _print_split(rep: dict) -> None:
    counts = rep["counts"]
    bad_by_class: dict[str, int] = {}
    for b in rep["bad"]:
        bad_by_class[b["class"]] = bad_by_class.get(b["class"], 0) + 1
    src = "cached" if rep["from_cache"] else ("full decode" if rep["full_decode"] else "checked")
    print(f"{rep['split']}: {len(rep['classes'])} classes, {rep['num_good']} good, {rep['num_bad']} bad files "
          f"({src}; median image side {rep['median_side']} px)")
    if len(counts) <= MAX_CLASS_ROWS:
        width = max(len(c) for c in counts)
        for c, n in counts.items():
            extra = f"  ({bad_by_class[c]} bad)" if c in bad_by_class else ""
            print(f"  {c:<{width}}  {n}{extra}")
    else:
        lo = min(counts, key=counts.get)
        hi = max(counts, key=counts.get)
        print(f"  images per class: min {counts[lo]} ({lo}), max {counts[hi]} ({hi})")
    for b in rep["bad"]:
        print(f"  bad: {b['file']}: {b['reason']} ({b['detail']})")
    if rep["cache"]:
        print(f"  good-file list cached at {rep['cache']}")
