"""The CIFAR-10 reproduction: INFER (static and dynamic labels) vs SRe2L vs random at the same budget.

    python bench/bench_quality.py                 # ipc 10, the paper's synthesis/student settings (long on a CPU)
    python bench/bench_quality.py --full          # ipc 50
    python bench/bench_quality.py --smoke         # minutes: tiny teachers, few iterations/epochs (pipeline check)

Data: ``../shared/data/cifar10-jpeg.tar.gz`` (or ``--data`` PATH to the tarball or an extracted root), unpacked
once into ``<cache>/data`` (``--cache``, default ``$INFER_FAST_CACHE`` or ``~/.cache/infer_fast``), outside the
project. Teacher recipe (models.train_teacher): SGD nesterov momentum 0.9, one-cycle lr peak 0.1 (25 % warm-up),
weight decay 5e-4, label smoothing 0.1, batch 128, the loader's pad-4 crop + flip, ``--teacher-epochs`` epochs at
``--teacher-width``; the paper's CIFAR ensemble (ResNet-18 CIFAR stem, MobileNet-V2, EfficientNet-B0, ShuffleNet-V2).
Teachers, distilled sets and student runs are cached by their settings, so a rerun only does what is missing
(distillation resumes; a finished student run is reused). Every method uses the same teachers, budget, student
(``--student``, default ResNet-18 CIFAR stem) and epochs (dynamic labels: epochs // (M + 1), as the research code).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tarfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.common import git_commit, markdown_table, shared_data_dir, write_json  # noqa: E402

TARBALL = "cifar10-jpeg.tar.gz"
TARBALL_SHA256 = "7a3bafc056fb035dd9a189086d221ad2c4c40b1b898d59e7d1dc27f1f51f823b"
CIFAR_TEACHERS = ["resnet18_cifar", "mobilenet_v2", "efficientnet_b0", "shufflenet_v2"]
PAPER_TOP1 = {10: {"infer/static": 32.0, "infer/dynamic": 30.7, "sre2l/static": 27.2},
              50: {"infer/static": 60.4, "infer/dynamic": 60.7, "sre2l/static": 47.5}}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help=f"{TARBALL} or an extracted CIFAR-10 root (default: shared data folder)")
    p.add_argument("--cache", help="cache folder for the extracted data, teachers, distilled sets and student runs")
    p.add_argument("--full", action="store_true", help="ipc 50 instead of 10")
    p.add_argument("--smoke", action="store_true",
                   help="tiny pipeline check: 2 teachers of width 0.125 for 1 epoch, 5 iterations, 2 student epochs "
                        "of width 0.125 (numbers are meaningless; explicit flags override these)")
    p.add_argument("--json", metavar="PATH", help="write the result rows as JSON")
    p.add_argument("--teachers", nargs="+", help=f"teacher architectures (default {' '.join(CIFAR_TEACHERS)})")
    p.add_argument("--teacher-files", nargs="+", metavar="PATH",
                   help="use these teacher checkpoints instead of training (e.g. the shared cifar10-resnet .th files)")
    p.add_argument("--teacher-width", type=float, help="teacher width multiplier (default 1.0)")
    p.add_argument("--teacher-epochs", type=int, help="teacher training epochs (default 30)")
    p.add_argument("--iterations", type=int, help="synthesis iterations per UFC / SRe2L image (default 1000)")
    p.add_argument("--epochs", type=int, help="student epochs, static labels (default 400; dynamic: // (M + 1))")
    p.add_argument("--student", default="resnet18_cifar", help="student architecture (default resnet18_cifar)")
    p.add_argument("--student-width", type=float, help="student width multiplier (default 1.0)")
    p.add_argument("--eval-every", type=int, default=0, help="validate every N student epochs (default ~25 points)")
    p.add_argument("--methods", nargs="+", default=["infer/static", "infer/dynamic", "sre2l/static", "random/static"],
                   help="method/labels pairs to run")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    smoke = {"teachers": ["resnet18_cifar", "convnet"], "teacher_width": 0.125, "teacher_epochs": 1,
             "iterations": 5, "epochs": 2, "student_width": 0.125}
    full = {"teachers": CIFAR_TEACHERS, "teacher_width": 1.0, "teacher_epochs": 30, "iterations": 1000, "epochs": 400,
            "student_width": 1.0}
    for k, v in (smoke if a.smoke else full).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    for m in a.methods:
        meth, _, labels = m.partition("/")
        if meth not in ("infer", "sre2l", "random") or labels not in ("static", "dynamic"):
            p.error(f"--methods: {m!r} is not <infer|sre2l|random>/<static|dynamic>")
    a.ipc = 50 if a.full else 10
    return a


def _cache_dir(a) -> str:
    return a.cache or os.path.join(os.environ.get("INFER_FAST_CACHE") or os.path.expanduser("~/.cache/infer_fast"),
                                   "bench_quality")


def _key(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def cifar_root(a) -> str:
    """An extracted CIFAR-10 root (train/ and test/), unpacking the tarball once into the cache."""
    src = a.data or os.path.join(shared_data_dir(), TARBALL)
    if os.path.isdir(src):
        return src
    if not os.path.isfile(src):
        raise SystemExit(f"bench_quality: {src} not found; pass --data PATH ({TARBALL} or an extracted root)")
    dest = os.path.join(_cache_dir(a), "data")
    root = os.path.join(dest, "cifar10")
    stamp = os.path.join(dest, ".extracted")
    if not os.path.exists(stamp):
        h = hashlib.sha256()
        with open(src, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        if src.endswith(TARBALL) and h.hexdigest() != TARBALL_SHA256:
            raise SystemExit(f"bench_quality: {src} has sha256 {h.hexdigest()}, expected {TARBALL_SHA256}")
        os.makedirs(dest, exist_ok=True)
        print(f"bench_quality: extracting {src} into {dest} (once)", flush=True)
        with tarfile.open(src) as t:
            t.extractall(dest, filter="data")
        with open(stamp, "w") as f:
            f.write(h.hexdigest())
    if not os.path.isdir(os.path.join(root, "train")):
        raise SystemExit(f"bench_quality: {root}/train missing after extraction of {src}")
    return root


def teachers(a, root: str) -> list[str]:
    from infer_fast.models import load_teacher
    from infer_fast.models.checkpoint import CheckpointError
    from infer_fast.models.teacher import TeacherConfig, train_teacher

    if a.teacher_files:
        for path in a.teacher_files:
            _, meta = load_teacher(path)
            print(f"bench_quality: teacher {path} ({meta.arch}), val acc {meta.val_acc}", flush=True)
        return list(a.teacher_files)
    paths = []
    for arch in a.teachers:
        recipe = {"arch": arch, "width": a.teacher_width, "epochs": a.teacher_epochs, "seed": a.seed, "root": root}
        path = os.path.join(_cache_dir(a), "teachers", f"{arch}-w{a.teacher_width:g}-e{a.teacher_epochs}-"
                                                      f"{_key(recipe)}.safetensors")
        try:
            _, meta = load_teacher(path)
            print(f"bench_quality: cached teacher {arch}: val acc {meta.val_acc:.2%}", flush=True)
        except (FileNotFoundError, CheckpointError):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            train_teacher(TeacherConfig(source=root, arch=arch, out=path, epochs=a.teacher_epochs,
                                        width=a.teacher_width, image_size=32, seed=a.seed,
                                        device=None if a.device == "auto" else a.device))
        paths.append(path)
    return paths


def main(argv=None) -> list[dict]:
    a = parse_args(argv)
    import torch

    from infer_fast.distilled import load_distilled
    from infer_fast.synth.config import DistillConfig
    from infer_fast.synth.runner import run_distill
    from infer_fast.train import EvalConfig, train_student

    t_all = time.perf_counter()
    root = cifar_root(a)
    t0 = time.perf_counter()
    tpaths = teachers(a, root)
    teacher_time = time.perf_counter() - t0
    rows, distilled = [], {}
    for spec in a.methods:
        method, _, labels = spec.partition("/")
        if method not in distilled:
            dkey = _key({"method": method, "ipc": a.ipc, "iterations": a.iterations, "teachers": tpaths,
                         "seed": a.seed})
            ddir = os.path.join(_cache_dir(a), "distilled", f"{method}-ipc{a.ipc}-{dkey}")
            t0 = time.perf_counter()
            run_distill(DistillConfig(data=root, teachers=tpaths, method=method, ipc=a.ipc, iterations=a.iterations,
                                      seed=a.seed, out=ddir, device=a.device, resume=os.path.isdir(ddir)))
            distilled[method] = (ddir, time.perf_counter() - t0)
        ddir, distill_time = distilled[method]
        ds = load_distilled(ddir)
        ekey = _key({"d": ddir, "labels": labels, "student": a.student, "w": a.student_width, "epochs": a.epochs,
                     "seed": a.seed})
        run = os.path.join(_cache_dir(a), "students", f"{method}-{labels}-ipc{a.ipc}-{ekey}")
        if os.path.isfile(os.path.join(run, "summary.json")):
            with open(os.path.join(run, "summary.json")) as f:
                summary = json.load(f)
            print(f"bench_quality: reusing finished student run {run}", flush=True)
        else:
            cfg = EvalConfig(distilled=ddir, val=root, student=a.student, width=a.student_width, labels=labels,
                             epochs=a.epochs, eval_every=a.eval_every, device=a.device, seed=a.seed, out=run,
                             resume=os.path.isdir(run))
            summary = train_student(cfg, ds)
        st = ds.manifest.get("storage", {})
        rows.append({
            "method": method, "labels": labels, "ipc": a.ipc, "top1": summary["top1"],
            "best_top1_selected_on_val": summary.get("best_top1_selected_on_val"),
            "paper_top1": PAPER_TOP1[a.ipc].get(spec), "synthetic_images": len(ds),
            "stored_bytes": st.get("stored_bytes"), "compression_ratio": st.get("compression_ratio"),
            "label_bytes": 0 if labels == "dynamic" else ds.manifest.get("label_bytes"),
            "student_epochs": summary["epochs"], "distill_time_s": distill_time,
            "student_time_s": summary["wall_time_s"],
        })
    cols = ["method", "labels", "ipc", "top1", "paper_top1", "synthetic_images", "stored_bytes", "compression_ratio",
            "label_bytes", "student_epochs", "distill_time_s", "student_time_s"]
    settings = {k: getattr(a, k) for k in ("teachers", "teacher_files", "teacher_width", "teacher_epochs",
                                           "iterations", "epochs", "student", "student_width", "ipc", "seed", "smoke")}
    print()
    print(markdown_table(rows, cols))
    gpu = "cuda " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    print(f"settings: {json.dumps(settings)}; teachers {teacher_time:.0f}s; total {time.perf_counter() - t_all:.0f}s; "
          f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {gpu}, commit {git_commit()}")
    for r in rows:
        r["settings"] = settings
    write_json(a.json, rows)
    return rows


if __name__ == "__main__":
    main()
