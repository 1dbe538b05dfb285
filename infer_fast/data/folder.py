"""ImageFolder scanning, per-file validation and the cached list of good files.

A dataset root holds split folders (``train/`` and ``val/`` or ``test/``), each with one subfolder per class
(ImageNet wnids or names); class index = position in the sorted folder names. A root with only ``val/`` or
``test/`` is an evaluation source, and so is a plain ``ROOT/<class>/<image>`` tree (no split folder at all), read
as one split named ``.``; the layout assumed is printed once. Only image files directly inside
a class folder count: nested folders, hidden entries and non-image files are ignored, and so are folders whose
name starts with "." or "_" (``_meta``, ``__MACOSX``) at the class level.

A corrupt JPEG kills a DALI pipeline, so loaders never read an unchecked file: every file of a split is validated
once (in parallel) and the good list is cached, keyed by a fingerprint of the listing (names, sizes, mtimes), so
any change to the folder invalidates it. The cache lives in ``$INFER_FAST_CACHE`` when set, else in
``<root>/.infer_fast/`` when the root is writable, else in ``~/.cache/infer_fast/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from PIL import Image, UnidentifiedImageError

from infer_fast.runtime import atomic_write_json, cache_root

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
TRAIN_SPLITS = ("train",)
EVAL_SPLITS = ("val", "test")
PLAIN = "."  # the split name of a plain ROOT/<class>/<image> tree
CACHE_VERSION = 1
# Reasons a file is rejected (the "reason" field of a bad-file record).
REASONS = ("empty", "truncated", "not an image", "undecodable")


class DataError(ValueError):
    """Bad dataset input (missing path, empty root, class without a valid image...)."""


@dataclass
class SplitScan:
    """Validated listing of one split folder."""

    root: str  # dataset root
    split: str  # split folder name (train / val / test)
    classes: list[str]
    files: list[str]  # absolute paths of the good files, class-major, sorted by name within a class
    labels: list[int]
    bad: list[dict] = field(default_factory=list)  # {"file", "class", "reason", "detail"}
    counts: dict[str, int] = field(default_factory=dict)  # class -> good files
    median_side: int = 0  # median of max(width, height) over good files
    full_decode: bool = False
    fingerprint: str = ""
    cache_path: str | None = None
    from_cache: bool = False

    @property
    def split_dir(self) -> str:
        return os.path.normpath(os.path.join(self.root, self.split))

    def report(self) -> dict:
        return {
            "root": self.root,
            "split": self.split,
            "classes": self.classes,
            "num_good": len(self.files),
            "num_bad": len(self.bad),
            "counts": self.counts,
            "bad": self.bad,
            "median_side": self.median_side,
            "full_decode": self.full_decode,
            "fingerprint": self.fingerprint,
            "cache": self.cache_path,
        }


_ANNOUNCED: set[str] = set()


def _holds_class_folders(root: str) -> bool:
    """True when some subfolder of ``root`` directly holds an image file (a plain class tree)."""
    for e in os.scandir(root):
        if e.is_dir() and not e.name.startswith((".", "_")):
            with os.scandir(e.path) as it:
                if any(_is_image_name(f.name) and f.is_file() for f in it):
                    return True
    return False


def resolve_split(root: str, split: str) -> str:
    """Split folder name for ``split`` ("train", "eval", or a literal folder name) under ``root``.

    "eval" takes ``val/``, else ``test/``, else, when the root has no split folder at all but its subfolders
    hold images, the root itself (:data:`PLAIN`), printing that layout once per root."""
    if not os.path.exists(root):
        raise DataError(f"dataset root {root!r} does not exist")
    if not os.path.isdir(root):
        raise DataError(f"dataset root {root!r} is not a directory")
    candidates = {"train": TRAIN_SPLITS, "eval": EVAL_SPLITS}.get(split, (split,))
    for name in candidates:
        if os.path.isdir(os.path.join(root, name)):
            return name
    splits = (*TRAIN_SPLITS, *EVAL_SPLITS)
    if split in ("eval", PLAIN) and not any(os.path.isdir(os.path.join(root, s)) for s in splits) \
            and _holds_class_folders(root):
        if root not in _ANNOUNCED:
            _ANNOUNCED.add(root)
            print(f"data: {root} has no train/, val/ or test/ folder; reading it as one evaluation split laid "
                  "out ROOT/<class>/<image>", file=sys.stderr)
        return PLAIN
    present = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    layouts = "ROOT/<split>/<class>/<image>" + (" or, for evaluation, ROOT/<class>/<image>" if split == "eval"
                                                else "")
    raise DataError(
        f"dataset root {root!r} has no {'/'.join(candidates)} split folder (found folders: {present or 'none'}); "
        f"expected ImageFolder layout {layouts}"
    )


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def list_split(root: str, split: str) -> tuple[list[str], list[list[tuple[str, int, int]]]]:
    """Classes and, per class, (file name, size, mtime_ns) of candidate image files (not validated yet)."""
    split_dir = os.path.normpath(os.path.join(root, split))
    classes = sorted(
        e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith((".", "_"))
    )
    if not classes:
        raise DataError(f"split folder {split_dir!r} is empty: expected one subfolder per class")
    entries = []
    for c in classes:
        rows = []
        with os.scandir(os.path.join(split_dir, c)) as it:
            for e in it:
                if _is_image_name(e.name) and e.is_file():
                    st = e.stat()
                    rows.append((e.name, st.st_size, st.st_mtime_ns))
        rows.sort()
        entries.append(rows)
    if not any(entries):
        raise DataError(
            f"split folder {split_dir!r} has class folders but no image files ({', '.join(IMAGE_EXTENSIONS)})"
        )
    return classes, entries


def fingerprint(classes: list[str], entries: list[list[tuple[str, int, int]]]) -> str:
    h = hashlib.sha256()
    for c, rows in zip(classes, entries, strict=True):
        h.update(f"\0{c}\n".encode())
        for name, size, mtime in rows:
            h.update(f"{name}\t{size}\t{mtime}\n".encode())
    return h.hexdigest()


def check_image(path: str, full_decode: bool = False) -> tuple[str | None, str, int]:
    """Validate one file: ``(reason or None, detail, max side)``.

    Default check: JPEGs are entropy-decoded at 1/8 scale (libjpeg draft mode: every byte of the stream is
    parsed, which finds truncation and broken data at a fraction of a full decode), other formats run PIL's
    ``verify`` (PNG chunk CRCs). ``full_decode`` decodes every file at full resolution.
    """
    try:
        if os.path.getsize(path) == 0:
            return "empty", "0 bytes", 0
        with Image.open(path) as im:
            side = max(im.size)
            if full_decode:
                im.load()
            elif im.format == "JPEG":
                im.draft("RGB", (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
                im.load()
            else:
                im.verify()
    except UnidentifiedImageError:
        return "not an image", "PIL cannot identify the format", 0
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error... on broken files
        msg = f"{type(exc).__name__}: {exc}"
        return ("truncated" if "truncat" in msg.lower() or isinstance(exc, EOFError) else "undecodable"), msg, 0
    return None, "", side


def cache_dir_for(root: str) -> str:
    if os.environ.get("INFER_FAST_CACHE"):
        return cache_root("check")
    local = os.path.join(root, ".infer_fast")
    if os.access(root, os.W_OK) and (not os.path.exists(local) or os.access(local, os.W_OK)):
        return local
    return cache_root("check")


def cache_path_for(root: str, split: str) -> str:
    key = hashlib.sha256(os.path.realpath(root).encode()).hexdigest()[:16]
    return os.path.join(cache_dir_for(root), f"{key}-{'plain' if split == PLAIN else split}.json")


def _load_cache(path: str, fp: str, full_decode: bool) -> dict | None:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if data.get("version") != CACHE_VERSION or data.get("fingerprint") != fp:
        return None
    if full_decode and not data.get("full_decode"):
        return None  # a cheap check does not vouch for a full decode; the reverse holds
    return data


def scan_split(
    root: str,
    split: str = "train",
    full_decode: bool = False,
    workers: int | None = None,
    use_cache: bool = True,
    require_all_classes: bool = True,
    progress: bool | None = None,
) -> SplitScan:
    """Validated listing of ``root/<split>`` (``split``: "train", "eval" or a folder name), from cache if current.

    Raises :class:`DataError` for a missing root or split, an empty split, and (``require_all_classes``)
    a class folder without a single valid image.
    """
    root = os.path.abspath(root)
    name = resolve_split(root, split)
    classes, entries = list_split(root, name)
    fp = fingerprint(classes, entries)
    cpath = cache_path_for(root, name)
    data = _load_cache(cpath, fp, full_decode) if use_cache else None
    from_cache = data is not None
    if data is None:
        data = _validate(root, name, classes, entries, full_decode, workers, progress)
        data["fingerprint"] = fp
        if use_cache:
            try:
                atomic_write_json(cpath, data, indent=None)
            except OSError:
                cpath = None  # read-only everywhere: validate again next time
    split_dir = os.path.normpath(os.path.join(root, name))
    files, labels, counts = [], [], {}
    for i, c in enumerate(classes):
        good = data["good"][c]
        counts[c] = len(good)
        files.extend(os.path.join(split_dir, c, n) for n in good)
        labels.extend([i] * len(good))
    scan = SplitScan(
        root=root, split=name, classes=classes, files=files, labels=labels, bad=data["bad"], counts=counts,
        median_side=data["median_side"], full_decode=data["full_decode"], fingerprint=fp,
        cache_path=cpath if use_cache else None, from_cache=from_cache,
    )
    if require_all_classes:
        empty = [c for c in classes if counts[c] == 0]
        if empty:
            raise DataError(
                f"class folder(s) without a valid image in {split_dir!r}: {', '.join(empty)} "
                f"({sum(1 for b in scan.bad if b['class'] in empty)} bad files there; run `infer-fast data check "
                f"{root}` for the reasons)"
            )
    return scan


def _validate(root, split, classes, entries, full_decode, workers, progress) -> dict:
    from tqdm import tqdm

    split_dir = os.path.normpath(os.path.join(root, split))
    jobs = [(c, n) for c, rows in zip(classes, entries, strict=True) for n, _, _ in rows]
    workers = workers or min(32, 2 * (os.cpu_count() or 1))
    if progress is None:
        progress = len(jobs) > 2000
    with ThreadPoolExecutor(workers) as pool:  # PIL releases the GIL while decoding
        results = pool.map(lambda j: check_image(os.path.join(split_dir, *j), full_decode), jobs, chunksize=64)
        results = list(tqdm(results, total=len(jobs), desc=f"check {split}", unit="img", disable=not progress))
    good: dict[str, list[str]] = {c: [] for c in classes}
    bad, sides = [], []
    for (c, n), (reason, detail, side) in zip(jobs, results, strict=True):
        if reason is None:
            good[c].append(n)
            sides.append(side)
        else:
            bad.append({"file": os.path.normpath(os.path.join(split, c, n)), "class": c, "reason": reason,
                        "detail": detail})
    return {
        "version": CACHE_VERSION,
        "full_decode": full_decode,
        "good": good,
        "bad": bad,
        "median_side": int(statistics.median(sides)) if sides else 0,
    }
