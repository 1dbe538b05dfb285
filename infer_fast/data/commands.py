"""``infer-fast data check ROOT``: validate every image of a dataset root, report, cache the good-file list."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from infer_fast.config_cli import add_command, option
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


def _run_check(cfg: CheckConfig, args: argparse.Namespace) -> int:
    return check(cfg)  # a DataError (unusable root) ends in infer_fast.cli.main: one line, exit status 2


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
