"""Quality benchmark: INFER (static and dynamic labels) vs SRe2L vs random real images with the same teacher labels,
same teachers, same budget, same student recipe, over several seeds (mean +- sd of the final epoch).

    python bench/bench_quality.py --workload tiny200                 # Tiny-ImageNet-32, C = 200, 3 seeds
    python bench/bench_quality.py --workload tiny200 --quick --match steps --json F  # the acceptance check (< 40 min)
    python bench/bench_quality.py --workload cifar10 --teacher-files ../shared/data/weights/cifar10-resnet/*.th
    python bench/bench_quality.py --smoke                            # minutes: tiny teachers, pipeline check only

Workloads (data from ``../shared/data`` or ``--data``, unpacked once into ``<cache>/data``):

- ``cifar10``: CIFAR-10 JPEGs, C = 10; teachers trained here with ``models.train_teacher`` (the paper's CIFAR
  ensemble: ResNet-18 CIFAR stem, MobileNet-V2, EfficientNet-B0, ShuffleNet-V2) or ``--teacher-files``.
- ``tiny200``: Tiny-ImageNet at 32 px, C = 200; teachers are the committed ``bench/teachers/tiny200/*.safetensors``
  (how they were made: ``bench/teachers/README.md``), trained into the cache with the same recipe when absent.
- ``imagenette``: Imagenette (10 ImageNet classes, real ImageNet JPEGs) at 112 px, the ImageNet path: ImageNet-stem
  teachers ``bench/teachers/imagenette112/`` (ResNet-18, MobileNet-V2, EfficientNet-B0 at reduced width), the
  ImageNet-style augmentation, and the ``--preset imagenet`` student recipe at reduced epochs and width.

For every seed, each method is distilled with that seed (natural sets, problem RNGs) and its student trained with
that seed; teachers are the same for every seed. Student compute is explicit: static labels train ``--epochs``
epochs on every method; dynamic labels on an INFER set train ``epochs // (M + 1)`` (INFER's rule, about the steps
that ``epochs`` give a baseline of the same budget), and every record states the optimizer steps taken.
``--match steps`` is the equal-compute protocol: every method/labels pair trains exactly the optimizer steps of
infer/static (``evaluate --steps``, cosine over its own steps), and random/static and infer/static also train twice
those steps (``compute`` "2x"), so that no verdict is taken where every student is still under-trained. sre2l's
default labels are dynamic (SRe2L's relabel protocol; ``sre2l/static`` is one flag away). The content controls
(``infer-noise``, ``infer-swap``, ``infer-views``: :mod:`infer_fast.synth.methods.controls`) run with
``--methods ... infer-noise/static infer-swap/static infer-views/static``; the first two transform the seed's infer
compensators (``distill --compensators-from``) instead of optimising them a second time. ``infer/hard``,
``random/hard`` and the controls' ``/hard`` pairs train on each image's class with no teacher (``evaluate --labels
hard``: does the image itself carry its class?), each compared with its own label mode's random set and controls.

Everything lands in a run folder (``--run-dir``, default ``<cache>/bench_quality/<workload>-<settings key>``);
``--resume`` continues an interrupted benchmark there: finished distillations and student runs are reused, an
interrupted one resumes where it stopped. The script prints per-seed rows, the mean +- sd table, the fraction of
every stored UFC pinned at ~0 (|u| <= 1/255 in pixel units; INFER §3.5), and writes ``curves.png`` (every student's
validation curve) in the run folder; ``--json`` writes the per-seed records.

Records (common.record): one per method, labels, compute and seed, metric ``top1`` (%) of that seed's student, with
provider = method, mode = labels, x = ipc; each also carries ``control`` (the content control, or null),
``student_steps``, and ``evidence_natural`` / ``evidence_composed`` (the teacher ensemble's mean true-class
probability on the set's naturals and on its composed or synthesised images, from the distilled manifest), and for
sets composed under several teachers ``evidence_own`` / ``evidence_other`` (each u_{k,m}'s compositions under its own
teacher m / under the others) beside ``evidence_natural_own`` / ``evidence_natural_other`` (the same pairs on the
naturals), null where the set has no such split. With ``--judges FILE...`` (networks other than the teachers:
``infer-fast evidence``) they also carry ``evidence_judged_natural`` / ``evidence_judged_composed``, the judges'
ensemble true-class probability on the same images (measured once per set, cached beside it).
Each rests on one distillation and one student run (``samples`` = 1, the
wall times ``synthesis_time_s`` and ``student_time_s`` likewise): a whole distillation takes minutes, so the spread
this bench reports is the one over seeds (the mean +- sd table), not repeated timings.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tarfile
import time

from common import ROOT, Stats, git_commit, markdown_table, record, shared_data_dir, write_json

from infer_fast.runtime import cache_root, json_key, sha256_file

CONTROLS = ("infer-noise", "infer-swap", "infer-views")  # content controls (synth.methods.controls)
METHOD_CHOICES = ("infer/static", "infer/dynamic", "sre2l/static", "sre2l/dynamic", "random/static",
                  *(f"{c}/static" for c in CONTROLS),
                  # hard labels (each image its natural's class, no teacher): does the image carry its class?
                  *(f"{m}/hard" for m in ("infer", "random", *CONTROLS)))
# sre2l's default is SRe2L's own relabel protocol (dynamic labels; static ones collapse its students: README, demo)
DEFAULT_METHODS = ("infer/static", "infer/dynamic", "sre2l/dynamic", "random/static")
SATURATE = ("random/static", "infer/static")  # the pairs --match steps also trains at 2x the steps, by default
TEACHER_DIR = os.path.join(ROOT, "bench", "teachers")

# Per workload: data, teachers (arch, width, epochs) and the settings the table runs at, next to the paper's.
WORKLOADS: dict[str, dict] = {
    "cifar10": {
        "tarball": "cifar10-jpeg.tar.gz",
        "sha256": "7a3bafc056fb035dd9a189086d221ad2c4c40b1b898d59e7d1dc27f1f51f823b",
        "root": "cifar10",
        "teachers": [("resnet18_cifar", 1.0, 30), ("mobilenet_v2", 1.0, 30), ("efficientnet_b0", 1.0, 30),
                     ("shufflenet_v2", 1.0, 30)],
        "committed_teachers": None,
        "settings": {"iterations": 1000, "epochs": 400, "student": "resnet18_cifar", "student_width": 1.0,
                     "eval_points": 25, "seeds": [0, 1, 2]},
        "quick": {"iterations": 100, "epochs": 50, "student_width": 0.25, "eval_points": 2, "seeds": [0]},
        "paper": {10: {"infer/static": 32.0, "infer/dynamic": 30.7, "sre2l/static": 27.2},
                  50: {"infer/static": 60.4, "infer/dynamic": 60.7, "sre2l/static": 47.5}},
        "paper_settings": "ResNet-18 (CIFAR stem) student at full width, 400 epochs (dynamic 80), 1000 iterations, "
                          "teachers ResNet-18 / MobileNet-V2 / EfficientNet-B0 / ShuffleNet-V2 at full width",
    },
    "tiny200": {
        "tarball": "tiny-imagenet-32.tar.gz",
        "sha256": "5530579007deca9e9060c09df75995e7974f1a938afc7eb76f7aa67dd62a688d",
        "root": "tiny-imagenet-32",
        # The standard recipe for 15 epochs in sittings (bench/teachers/README.md): 1.5-4 h of one CPU core each.
        # Two of the paper's families, M = 2 (K = 9 at ipc 10); ShuffleNet-V2 would be the third.
        "teachers": [("resnet18_cifar", 0.5, 15), ("mobilenet_v2", 0.5, 15)],
        "committed_teachers": "tiny200",
        # T = 100: one iteration of one 200-image problem takes 1.2-1.3 s through the ResNet and 1.3-1.5 s through
        # the MobileNet on one core beside another job (the Tiny-200 sweep's cells), so the K x M = 18 problems
        # take ~40 min per seed at T = 100 and ~6.5 h at T = 1000; the student at width 0.5 (issue 18).
        # The table is issue 18's: INFER static against random and the three content controls (run with --match
        # steps). infer/dynamic and sre2l/dynamic are one --methods away, left out for cost: a dynamic student runs
        # both teachers on every batch and sre2l synthesises 2,000 images from noise, on top of the ~3.7 h (progress-
        # bar estimate) that a seed of these five takes on one core.
        "settings": {"iterations": 100, "epochs": 20, "student": "resnet18_cifar", "student_width": 0.5,
                     "eval_points": 2, "seeds": [0, 1, 2],
                     "methods": ["infer/static", "random/static", "infer-noise/static", "infer-swap/static",
                                 "infer-views/static"]},
        # The acceptance check (< 40 min): one seed, T = 50, a width-0.25 student for 10 epochs, INFER, random and
        # the three content controls (sre2l's 2,000 images from noise alone would take ~15 min of it).
        "quick": {"seeds": [0], "iterations": 50, "epochs": 10, "student_width": 0.25},
        "paper": {10: {"infer/static": 32.0, "infer/dynamic": 41.0}, 50: {"infer/static": 52.9,
                                                                         "infer/dynamic": 54.6}},
        "paper_settings": "Tiny-ImageNet at 64 px, ResNet-18 student at full width, 1000 iterations, "
                          "ImageNet-pretrained-style teachers at full width trained to convergence",
    },
    "imagenette": {
        "tarball": "imagenette-224.tar.gz",
        "sha256": "9644cfc15ac1254842c05f148d1dc20ab6e48cb0ba075b5c2af51852153ca8ec",
        "root": "imagenette",
        # The paper's ImageNet ensemble (ImageNet stems) at reduced width and 112 px, committed with their commands.
        "teachers": [("resnet18", 0.25, 6), ("mobilenet_v2", 0.5, 6), ("efficientnet_b0", 0.5, 6)],
        "committed_teachers": "imagenette112",
        # 112 px (the jitter scaled with the image: 16 px where ImageNet's 224 px uses 32); the student recipe is
        # --preset imagenet's (CutMix Beta(1, 1), T = 20, AdamW 1e-3 / 0.01, torchvision ResNet-18) with its epochs,
        # batch and width reduced to what 2 CPU cores allow; the preset itself is for 224 px sets.
        "settings": {"iterations": 300, "epochs": 40, "student": "resnet18", "student_width": 0.5,
                     "eval_points": 2, "seeds": [0, 1, 2], "image_size": 112, "jitter": 16,
                     "student_recipe": {"mix": "cutmix", "cutmix_alpha": 1.0, "temperature": 20.0}},
        "quick": {"seeds": [0]},
        "paper": {},
        "paper_settings": "the paper reports ImageNet-1k (224 px, full-width teachers and 300-epoch students), not "
                          "Imagenette",
    },
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", choices=sorted(WORKLOADS), default="cifar10")
    p.add_argument("--data", help="the workload's tarball or an extracted root (default: the shared data folder)")
    p.add_argument("--cache", help="cache folder for extracted data, trained teachers and run folders")
    p.add_argument("--run-dir", help="run folder (default: <cache>/bench_quality/<workload>-<settings key>)")
    p.add_argument("--resume", action="store_true", help="continue the benchmark in an existing run folder")
    p.add_argument("--ipc", type=int, default=10, help="storage budget, images per class (default 10)")
    p.add_argument("--quick", action="store_true",
                   help="one seed, fewer iterations and epochs (stated in the output); explicit flags override")
    p.add_argument("--smoke", action="store_true",
                   help="pipeline check: 2 teachers of width 0.125 for 1 epoch, 5 iterations, 2 student epochs "
                        "(numbers are meaningless; explicit flags override these)")
    p.add_argument("--json", metavar="PATH", help="write the per-seed records as a JSON list")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (default: 0 1 2; --quick: 0)")
    p.add_argument("--teachers", nargs="+", metavar="ARCH", help="teacher architectures to train (default: the "
                   "workload's ensemble)")
    p.add_argument("--teacher-files", nargs="+", metavar="PATH",
                   help="use these teacher checkpoints instead (e.g. the shared cifar10-resnet .th files)")
    p.add_argument("--teacher-width", type=float, help="width of trained teachers (default: the workload's)")
    p.add_argument("--teacher-epochs", type=int, help="epochs of trained teachers (default: the workload's)")
    p.add_argument("--iterations", type=int, help="synthesis iterations per UFC / SRe2L image")
    p.add_argument("--epochs", type=int, help="student epochs (dynamic labels on INFER: // (M + 1))")
    p.add_argument("--student", help="student architecture")
    p.add_argument("--student-width", type=float, help="student width multiplier")
    p.add_argument("--eval-points", type=int, help="validations per student run (the last epoch always)")
    p.add_argument("--r-bn", type=float, help="BN-matching weight (default: the distill default for the data)")
    p.add_argument("--ufc-bound", choices=["loose", "set"], default="loose",
                   help="UFC bound rule (set: the withdrawn rule, for the ablation)")
    p.add_argument("--class-chunk", type=int, default=0, help="distill --class-chunk (0: all classes at once)")
    p.add_argument("--methods", nargs="+", help="method/labels pairs to run (default: the workload's, else "
                   f"{' '.join(DEFAULT_METHODS)}; of "
                   f"{', '.join(METHOD_CHOICES)})")
    p.add_argument("--match", choices=("epochs", "steps"), default="epochs",
                   help="student compute: every method trains --epochs (epochs), or as many optimizer steps as "
                        "infer/static does (steps; the --saturate pairs also at 2x those steps, the saturation "
                        "check)")
    p.add_argument("--saturation", action=argparse.BooleanOptionalAction, default=True,
                   help="--match steps: also train the --saturate pairs at 2x the steps (default on; off for sweeps "
                        "that only compare settings at 1x)")
    p.add_argument("--saturate", nargs="+", metavar="METHOD/LABELS",
                   help="the pairs of --methods trained at 2x the steps too (default: "
                        f"{' '.join(SATURATE)}; add a content control to test its lead where the students saturate)")
    p.add_argument("--judges", nargs="+", default=[], metavar="PATH",
                   help="classifier files that also judge every set's class evidence (networks other than its "
                        "teachers: infer-fast evidence); records gain evidence_judged_natural / _composed")
    p.add_argument("--val", metavar="PATH",
                   help="the split the students are scored on (default: the data root's val/ or test/); to choose "
                        "settings without the reported split: --data OUT --val OUT/holdout of `infer-fast data "
                        "holdout`")
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)
    if a.val is not None and not os.path.isdir(a.val):
        p.error(f"--val: {a.val!r} is not a folder (an evaluation split: ROOT/<class>/<image>, or a root with val/)")
    w = WORKLOADS[a.workload]
    base = dict(w["settings"])
    if a.quick:
        base.update(w["quick"])
    if a.smoke:
        base.update({"iterations": 5, "epochs": 2, "student_width": 0.125, "eval_points": 1, "seeds": [0]})
    for k in ("image_size", "jitter", "student_recipe"):  # workload-only settings (no flag)
        setattr(a, k, None)
    for k, v in base.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.methods = list(a.methods or DEFAULT_METHODS)
    a.mode = "smoke" if a.smoke else "quick" if a.quick else "full"
    for j in a.judges:
        if not (j.startswith("torchvision:") or os.path.isfile(j)):
            p.error(f"--judges: {j!r} is not a file (a classifier checkpoint, or torchvision:NAME)")
    for m in a.methods:
        if m not in METHOD_CHOICES:
            p.error(f"--methods: {m!r} is not one of {', '.join(METHOD_CHOICES)}")
    for m in a.saturate or ():
        if m not in a.methods:
            p.error(f"--saturate: {m!r} is not one of the methods run ({' '.join(a.methods)})")
    a.saturate = list(a.saturate or SATURATE)  # the default pairs where they are run, silently
    if a.ipc < 1 or a.iterations < 1 or a.epochs < 1 or a.eval_points < 1:
        p.error("--ipc, --iterations, --epochs and --eval-points must be >= 1")
    return a


def check_eval_split(path: str, flag: str) -> None:
    """Refuse, in one line naming ``flag``, a folder the students cannot be scored on (no val/ or test/ split,
    nor a plain ROOT/<class>/<image> tree)."""
    from infer_fast.data import DataError
    from infer_fast.data.folder import resolve_split

    try:
        resolve_split(path, "eval")
    except DataError as e:
        raise SystemExit(f"bench_quality: {flag}: {e} (a data holdout OUT: pass --val OUT/holdout)") from None


def _cache_dir(a) -> str:
    return a.cache or cache_root("bench_quality")


def _key(d: dict) -> str:
    return json_key(d)[:12]


def data_root(a) -> str:
    """An extracted root of the workload (train/ and val/ or test/), unpacking the tarball once into the cache."""
    w = WORKLOADS[a.workload]
    src = a.data or os.path.join(shared_data_dir(), w["tarball"])
    if os.path.isdir(src):
        return src
    if not os.path.isfile(src):
        raise SystemExit(f"bench_quality: {src} not found; pass --data PATH ({w['tarball']} or an extracted root)")
    dest = os.path.join(_cache_dir(a), "data")
    root = os.path.join(dest, w["root"])
    stamp = os.path.join(dest, f".extracted-{w['root']}")
    if not os.path.exists(stamp):
        digest = sha256_file(src)
        if src.endswith(w["tarball"]) and digest != w["sha256"]:
            raise SystemExit(f"bench_quality: {src} has sha256 {digest}, expected {w['sha256']}")
        os.makedirs(dest, exist_ok=True)
        print(f"bench_quality: extracting {src} into {dest} (once)", flush=True)
        with tarfile.open(src) as t:
            t.extractall(dest, filter="data")
        with open(stamp, "w") as f:
            f.write(digest)
    if not os.path.isdir(os.path.join(root, "train")):
        raise SystemExit(f"bench_quality: {root}/train missing after extraction of {src}")
    return root


def teachers(a, root: str) -> list[str]:
    """Teacher files: --teacher-files, else the committed ones of the workload, else trained (and cached)."""
    from infer_fast.models import load_teacher
    from infer_fast.models.checkpoint import CheckpointError
    from infer_fast.train.teacher import TeacherConfig, train_teacher

    if a.teacher_files:
        for path in a.teacher_files:
            _, meta = load_teacher(path)
            print(f"bench_quality: teacher {path} ({meta.arch}), val acc {meta.val_acc}", flush=True)
        return list(a.teacher_files)
    w = WORKLOADS[a.workload]
    ensemble = list(w["teachers"])
    if a.smoke:
        ensemble = [("resnet18_cifar", 0.125, 1), ("convnet", 0.125, 1)]
    if a.teachers:
        ensemble = [(arch, 1.0, 30) for arch in a.teachers]
    ensemble = [(arch, a.teacher_width or width, a.teacher_epochs or ep) for arch, width, ep in ensemble]
    paths = []
    for arch, width, epochs in ensemble:
        name = f"{arch}-w{width:g}.safetensors"
        committed = os.path.join(TEACHER_DIR, w["committed_teachers"] or "-", name)
        if (w["committed_teachers"] and not a.smoke and not a.teacher_width and not a.teacher_epochs
                and not a.teachers and os.path.isfile(committed)):
            _, meta = load_teacher(committed)
            print(f"bench_quality: committed teacher {committed}: val acc {meta.val_acc:.2%}", flush=True)
            paths.append(committed)
            continue
        recipe = {"arch": arch, "width": width, "epochs": epochs, "seed": 0, "root": root}
        path = os.path.join(_cache_dir(a), "teachers", f"{a.workload}-{arch}-w{width:g}-e{epochs}-"
                                                       f"{_key(recipe)}.safetensors")
        try:
            _, meta = load_teacher(path)
            print(f"bench_quality: cached teacher {path}: val acc {meta.val_acc:.2%}", flush=True)
        except (FileNotFoundError, CheckpointError):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            train_teacher(TeacherConfig(source=root, arch=arch, out=path, epochs=epochs, width=width, seed=0,
                                        device=None if a.device == "auto" else a.device))
        paths.append(path)
    return paths


def evidence_fields(evidence: dict | None) -> dict:
    """A distilled set's class evidence as record fields (null where the manifest lacks the figure): the ensemble's
    true-class probability on the naturals and on the composed images, and the split by compensator teacher."""
    evidence = evidence or {}
    by = evidence.get("composed_by_ufc") or {}  # sets distilled before the split was measured lack it
    return {f"evidence_{g}": (evidence.get(g) or {}).get("ensemble", {}).get("true_prob")
            for g in ("natural", "composed")} | {f"evidence_{k}": (by.get(k) or {}).get("true_prob")
                                                  for k in ("natural_own", "own", "natural_other", "other")}


JUDGED_KEYS = ("evidence_judged_natural", "evidence_judged_composed")


def judged_fields(ddir: str, judges: list[str], device: str) -> dict:
    """The set's class evidence under ``judges`` (``infer_fast.synth.evidence.judge``: networks other than its
    teachers), as record fields: the judges' ensemble true-class probability on the naturals and on the composed
    images (null without judges). Measured once per set and judge files, cached beside the set
    (``<set>.judged-<key>.json``, keyed by the judges' and the set's sha256s, so a set made again is judged again)."""
    if not judges:
        return dict.fromkeys(JUDGED_KEYS)
    from infer_fast.distilled import Manifest
    from infer_fast.runtime import atomic_write_text
    from infer_fast.synth.evidence import judge

    files = Manifest.read(ddir).files
    named = [sha256_file(j) if os.path.isfile(j) else j for j in judges]  # torchvision:NAME is its own key
    key = _key({"judges": named, "set": {f: v["sha256"] for f, v in files.items()}})
    path = f"{ddir}.judged-{key}.json"
    if os.path.isfile(path):
        with open(path) as f:
            out = json.load(f)
    else:
        out = judge(ddir, judges, device=device)
        atomic_write_text(path, json.dumps(out, indent=1) + "\n")
    return {k: (out.get(g) or {}).get("ensemble", {}).get("true_prob")
            for k, g in zip(JUDGED_KEYS, ("natural", "composed"), strict=True)}


def measured_r_bn(a, small: bool, num_classes: int) -> dict[str, float]:
    """{method: r_bn} of this run's methods whose per-dataset default r_bn is the measured choice rather than the
    paper's regime value (synth.config.DistillConfig.defaults); {} when --r-bn is given or none differs. The content
    controls are left out: they take INFER's settings (and its compensators) by design, so adding them to a run
    keys the same folder and reuses its INFER sets."""
    from infer_fast.synth import methods as synth_methods
    from infer_fast.synth.config import DistillConfig, paper_defaults

    if a.r_bn is not None:
        return {}
    paper = paper_defaults(small)["r_bn"]
    out = {}
    named = {spec.partition("/")[0] for spec in a.methods}
    for method in sorted({m for m in named if not synth_methods.get(m).control} | {"infer"}):
        value = DistillConfig(data="digits", method=method).defaults(small, num_classes)["r_bn"][0]
        if value != paper:
            out[method] = value
    return out


def settings_of(a, tpaths: list[str], data_shape: tuple[bool, int] | None = None) -> dict:
    """The settings that key a run folder. ``data_shape`` (small, number of classes) adds the measured default r_bn
    where it replaces the paper's, so that a change of that default never reuses folders of the old one."""
    keys = ("workload", "ipc", "iterations", "epochs", "student", "student_width", "eval_points", "r_bn",
            "ufc_bound", "class_chunk", "match")
    s = {k: getattr(a, k) for k in keys}
    if data_shape is not None and (measured := measured_r_bn(a, *data_shape)):
        s["default_r_bn"] = measured
    # set only by some workloads; absent from the others' settings (and run-folder keys) when unset
    s.update({k: getattr(a, k) for k in ("image_size", "jitter", "student_recipe") if getattr(a, k) is not None})
    if a.val is not None:  # scored on another split (a holdout slice): another folder
        s["val"] = os.path.abspath(a.val)
    s["teachers"] = [os.path.basename(p) for p in tpaths]
    return s


def _run_dir(a, settings: dict, tpaths: list[str]) -> str:
    if a.run_dir:
        d = a.run_dir
    else:
        key = _key({**settings, "teacher_sha256": [sha256_file(p) for p in tpaths]})
        d = os.path.join(_cache_dir(a), f"{a.workload}-ipc{a.ipc}-{key}")
    if os.path.isdir(d) and os.listdir(d) and not a.resume:
        raise SystemExit(f"bench_quality: run folder {d} already holds results of these settings; pass --resume to "
                         "continue or reuse them, or --run-dir for a new folder")
    os.makedirs(d, exist_ok=True)
    return d


def ufc_report(ddir: str) -> dict | None:
    """Pinned fraction (|u| <= 1/255 in pixel units) of every UFC of a distilled INFER set."""
    import torch
    from safetensors.torch import load_file

    from infer_fast.distilled import load_distilled
    from infer_fast.synth.problem import pinned_fraction

    path = os.path.join(ddir, "ufcs.safetensors")
    if not os.path.isfile(path):
        return None
    std = torch.tensor(load_distilled(ddir).std, dtype=torch.float32)
    ufcs = load_file(path)["ufcs"]
    per = [[pinned_fraction(ufcs[k, m], std) for m in range(ufcs.shape[1])] for k in range(ufcs.shape[0])]
    flat = [v for row in per for v in row]
    return {"file": path, "per_ufc": per, "mean": sum(flat) / len(flat), "max": max(flat), "min": min(flat),
            **ufc_cosines(ufcs)}


def _cos(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def ufc_cosines(ufcs) -> dict:
    """How alike the compensators [K, M, 3, S, S] are: the mean cosine of u[k, m] with u[k', m] (one teacher, two
    natural sets: what the swap control exchanges; ~0 when every set gets its own u, 1 when one u serves all) and
    of u[k, m] with u[k, m'] (one set, two teachers); None where there is no pair."""
    import torch

    f = torch.nn.functional.normalize(ufcs.float().flatten(2), dim=2)  # [K, M, D]
    gram_sets = torch.einsum("kmd,jmd->mkj", f, f)  # per teacher, K x K
    gram_teachers = torch.einsum("kmd,knd->kmn", f, f)  # per set, M x M

    def off_diagonal_mean(g: torch.Tensor) -> float | None:  # [B, n, n] -> the mean of the n(n-1) pairs, over B
        n = g.shape[-1]
        return None if n < 2 else float((g.sum() - g.diagonal(dim1=-2, dim2=-1).sum()) / (g.shape[0] * n * (n - 1)))

    return {"cos_sets": off_diagonal_mean(gram_sets), "cos_teachers": off_diagonal_mean(gram_teachers)}


def _timed(path: str, fn) -> float:
    """Run ``fn`` once and remember its wall time in ``path`` (a resumed benchmark reports the first run's)."""
    from infer_fast.runtime import atomic_write_json

    if os.path.isfile(path):
        with open(path) as f:
            return float(json.load(f)["seconds"])
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    atomic_write_json(path, {"seconds": seconds})
    return seconds


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean +- sample sd over seeds per (method, labels, compute)."""
    out = []
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["labels"], r["compute"]), []).append(r)

    def ms(vals):
        vals = [v for v in vals if v is not None]
        if not vals:
            return None, None
        return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)

    for (method, labels, compute), rs in groups.items():
        t1, t1_sd = ms([r["top1"] for r in rs])
        t5, t5_sd = ms([r["top5"] for r in rs])
        ev_n, ev_c = ms([r["evidence_natural"] for r in rs])[0], ms([r["evidence_composed"] for r in rs])[0]
        judged = {k: ms([r.get(k) for r in rs])[0] for k in JUDGED_KEYS}
        out.append({
            "method": method, "labels": labels, "compute": compute, "control": rs[0].get("control"),
            "seeds": len(rs), "top1_mean": t1,
            "top1_sd": t1_sd, "evidence_natural": ev_n, "evidence_composed": ev_c, **judged,
            "top5_mean": t5, "top5_sd": t5_sd,
            "top1": f"{t1:.2f} ± {t1_sd:.2f}" if t1 is not None else None,
            "top5": f"{t5:.2f} ± {t5_sd:.2f}" if t5 is not None else None,
            "paper_top1": rs[0]["paper_top1"], "synthetic_images": rs[0]["synthetic_images"],
            "stored_bytes": rs[0]["stored_bytes"], "label_bytes": rs[0]["label_bytes"],
            "student_epochs": rs[0]["student_epochs"], "student_steps": rs[0]["student_steps"],
            "synthesis_s": statistics.fmean(r["synthesis_time_s"] for r in rs),
            "student_s": statistics.fmean(r["student_time_s"] for r in rs),
        })
    return out


def mean_curves(curves: dict[str, list[dict[int, float]]]) -> dict[str, list[tuple[int, float]]]:
    """Per curve name, the mean over seeds at the steps every seed evaluated."""
    out = {}
    for name, runs in curves.items():
        steps = sorted(set.intersection(*(set(r) for r in runs))) if runs else []
        out[f"{name} (n={len(runs)})"] = [(s, statistics.fmean(r[s] for r in runs)) for s in steps]
    return out


def paired(rows: list[dict], a: tuple[str, str, str], b: tuple[str, str, str]) -> str | None:
    """'per-seed differences x, y, z: mean +- sd' of a - b over the seeds both ran (the seed pairs their natural
    sample, student initialisation and batch order), or None with fewer than 2 such seeds."""
    def by_seed(key):
        return {r["seed"]: r["top1"] for r in rows if (r["method"], r["labels"], r["compute"]) == key
                and r["top1"] is not None}

    x, y = by_seed(a), by_seed(b)
    diffs = [x[s] - y[s] for s in sorted(set(x) & set(y))]
    if len(diffs) < 2:
        return None
    return (f"per-seed differences {', '.join(f'{d:+.2f}' for d in diffs)}: {statistics.fmean(diffs):+.2f} ± "
            f"{statistics.stdev(diffs):.2f}")


def verdict(agg: list[dict], rows: list[dict] | None = None) -> list[str]:
    by = {(r["method"], r["labels"], r["compute"]): r for r in agg}
    lines = []

    def has(*rs) -> bool:
        return all(r is not None and r["top1_mean"] is not None for r in rs)

    def gap(a: dict, b: dict, name: str, sd_label: str | None = None) -> list[str]:
        """a - b in points; with ``sd_label`` the 2-sd test on its own line and the paired one below it, else the
        paired differences on the same line (paired where ``rows`` holds both runs of at least 2 seeds)."""
        d = a["top1_mean"] - b["top1_mean"]
        pair = paired(rows or [], *((r["method"], r["labels"], r["compute"]) for r in (a, b)))
        head = f"{a['method']}/{a['labels']} - {name} = {d:+.2f} points"
        if sd_label is None:
            return [head + (f"; paired by seed: {pair}" if pair else "")]
        spread = 2 * max(a["top1_sd"], b["top1_sd"])
        return ([f"{head}; {sd_label} = {spread:.2f}: " + ("beats it" if d > spread and a["seeds"] > 1
                                                          else "NOT established")]
                + ([f"  paired by seed: {pair}"] if pair else []))

    one = "1x" if any(c == "1x" for _, _, c in by) else "epochs"  # --match steps ran (any labels' pairs)
    inf, rnd = (by.get((m, "static", one)) for m in ("infer", "random"))
    sre = by.get(("sre2l", "dynamic", one)) or by.get(("sre2l", "static", one))
    for labels in ("static", "hard"):  # each label mode against its own random set and controls
        a, r = (by.get((m, labels, one)) for m in ("infer", "random"))
        if has(a, r):
            at = f" at equal student steps ({a['student_steps']})" if one == "1x" else ""
            lines += gap(a, r, f"random/{labels}{at}", "2 sd of the seed spread")
        controls = sorted((c for c in agg if c.get("control") and c["labels"] == labels and c["compute"] == one
                           and has(c)), key=lambda c: -c["top1_mean"])
        if has(a) and controls:  # INFER's gain over what any perturbation of the naturals gives at the same steps
            lines += gap(a, controls[0], f"best control ({controls[0]['method']}/{labels})", "2 sd")
            for c in controls[1:]:  # the other controls
                lines += gap(a, c, f"{c['method']}/{labels}")
    saturated = sorted({(m, labels) for m, labels, c in by if c == "2x"},
                       key=lambda k: (k[1] != "static", k[0] not in ("random", "infer"), k[0] != "random", k[0]))
    for m, labels in saturated:  # saturation: is the 1x verdict taken where every student is under-trained?
        lo, hi = by.get((m, labels, "1x")), by.get((m, labels, "2x"))
        if has(lo, hi):
            lines.append(f"{m}/{labels} at 2x steps ({hi['student_steps']}): {hi['top1_mean']:.2f} ± "
                         f"{hi['top1_sd']:.2f} vs {lo['top1_mean']:.2f} at 1x "
                         f"({hi['top1_mean'] - lo['top1_mean']:+.2f} points)")
    inf2, rnd2 = (by.get((m, "static", "2x")) for m in ("infer", "random"))
    if has(inf2, rnd2):  # the gap, saturated
        lines += gap(inf2, rnd2, f"random/static at 2x steps ({inf2['student_steps']})", "2 sd")
    for m, labels in saturated:  # the controls, saturated
        c = by[(m, labels, "2x")]
        if labels == "static" and c.get("control") and has(inf2, c):
            lines += gap(inf2, c, f"{m} at 2x steps")
    if sre and has(inf, rnd, sre):
        below = sre["top1_mean"] < min(inf["top1_mean"], rnd["top1_mean"])
        lines.append(f"sre2l/{sre['labels']} {sre['top1_mean']:.2f}: " + ("below both" if below else "NOT below both"))
    return lines


def overlap_warning(rows: list[dict]) -> str | None:
    """One line naming the records whose student was scored on a split holding natural images of its set."""
    leaky = [r for r in rows if r.get("val_overlap")]
    if not leaky:
        return None
    which = ", ".join(f"{r['method']}/{r['labels']} seed {r['seed']} ({r['val_overlap']})" for r in leaky)
    return (f"warning: {len(leaky)} student(s) were scored on a split that holds natural images of their set "
            f"(val_overlap: {which}): not held-out accuracy")


def student_jobs(a, infer_set, batch: int) -> list[tuple[str, str, int]]:
    """(method/labels, compute, steps) of every student of one seed. ``--match epochs``: every pair trains
    ``--epochs`` (steps 0). ``--match steps``: every pair trains the optimizer steps of infer/static (its set size
    and ``--epochs`` at ``batch``: ``ceil(N / batch) * epochs``), and random/static and infer/static train twice
    those steps too (``--saturate``: any pairs of the methods), so that no verdict is taken where every student is
    still under-trained."""
    if a.match == "epochs":
        return [(spec, "epochs", 0) for spec in a.methods]
    steps = math.ceil(len(infer_set) / batch) * a.epochs
    jobs = [(spec, "1x", steps) for spec in a.methods]
    if not a.saturation:
        return jobs
    return jobs + [(spec, "2x", 2 * steps) for spec in a.saturate if spec in a.methods]


def main(argv=None) -> list[dict]:
    a = parse_args(argv)
    import torch

    from infer_fast.data import dataset_info
    from infer_fast.distilled import load_distilled
    from infer_fast.synth import methods as synth_methods
    from infer_fast.synth.config import DistillConfig
    from infer_fast.synth.runner import run_distill
    from infer_fast.train import EvalConfig, train_student
    from infer_fast.train.report import plot_curves

    t_all = time.perf_counter()
    device = a.device if a.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"  # as the stages do
    w = WORKLOADS[a.workload]
    root = data_root(a)
    check_eval_split(a.val or root, "--val" if a.val else "--data")  # before hours of synthesis, not after
    t0 = time.perf_counter()
    tpaths = teachers(a, root)
    teacher_time = time.perf_counter() - t0
    info = dataset_info(root, image_size=a.image_size)
    settings = settings_of(a, tpaths, (bool(info.small), len(info.classes)))
    run_dir = _run_dir(a, settings, tpaths)
    print(f"bench_quality: run folder {run_dir}", flush=True)
    rows, curves, ufc_reports = [], {}, {}
    batch = EvalConfig(**(a.student_recipe or {})).batch_size
    for seed in a.seeds:
        methods = {spec.partition("/")[0] for spec in a.methods} | ({"infer"} if a.match == "steps" else set())
        reuse = {m for m in methods if synth_methods.get(m).takes_compensators}
        methods |= {"infer"} if reuse else set()  # the controls transform infer's compensators, not re-optimise
        distilled: dict[str, tuple[str, float]] = {}
        for method in sorted(methods, key=lambda m: (m != "infer", m)):
            ddir = os.path.join(run_dir, "distilled", f"{method}-seed{seed}")
            cfg = DistillConfig(data=root, teachers=tpaths, method=method, ipc=a.ipc, iterations=a.iterations,
                                seed=seed, out=ddir, device=a.device, resume=True, r_bn=a.r_bn,
                                ufc_bound=a.ufc_bound, class_chunk=a.class_chunk, image_size=a.image_size,
                                jitter=a.jitter, compensators_from=distilled["infer"][0] if method in reuse else None)
            seconds = _timed(os.path.join(run_dir, "distilled", f"{method}-seed{seed}.time.json"),
                             lambda cfg=cfg: run_distill(cfg))
            distilled[method] = (ddir, seconds)
            rep = ufc_report(ddir)
            if rep is not None:
                ufc_reports[rep["file"]] = rep
                print(f"bench_quality: {rep['file']}: pinned fraction of u (|u| <= 1/255) mean "
                      f"{rep['mean']:.2%}, min {rep['min']:.2%}, max {rep['max']:.2%} over "
                      f"{sum(len(r) for r in rep['per_ufc'])} UFCs; mean cosine across natural sets "
                      f"{_cos(rep['cos_sets'])}, across teachers {_cos(rep['cos_teachers'])}", flush=True)
        for spec, compute, steps in student_jobs(a, load_distilled(distilled["infer"][0]) if "infer" in distilled
                                                 else None, batch):
            method, _, labels = spec.partition("/")
            ddir, distill_time = distilled[method]
            ds = load_distilled(ddir)
            suffix = "" if compute == "epochs" else f"-{compute}{steps}"
            run = os.path.join(run_dir, "students", f"{method}-{labels}-seed{seed}{suffix}")
            if os.path.isfile(os.path.join(run, "summary.json")):
                with open(os.path.join(run, "summary.json")) as f:
                    summary = json.load(f)
                print(f"bench_quality: reusing finished student run {run}", flush=True)
            else:
                epochs = math.ceil(steps / math.ceil(len(ds) / batch)) if steps else a.epochs
                cfg = EvalConfig(distilled=ddir, val=a.val or root, student=a.student, width=a.student_width,
                                 labels=labels, epochs=a.epochs, steps=steps,
                                 eval_every=max(1, epochs // a.eval_points), device=a.device, seed=seed, out=run,
                                 resume=os.path.isdir(run),
                                 **(a.student_recipe or {}))
                summary = train_student(cfg, ds)
            ufc = ufc_reports.get(os.path.join(ddir, "ufcs.safetensors")) or {}
            with open(os.path.join(run, "metrics.jsonl")) as f:
                curves.setdefault(f"{spec} {compute}", []).append(
                    {r["step"]: r["top1"] for r in map(json.loads, f) if "top1" in r})
            rows.append(record(
                "quality", method, labels, "top1", "%", "ipc", a.ipc, Stats.of([summary["top1"]]), device,
                workload=a.workload, method=method, labels=labels,
                control=method if synth_methods.get(method).control else None, compute=compute, seed=seed,
                ipc=a.ipc, top1=summary["top1"], top5=summary.get("top5"),
                best_top1_selected_on_val=summary.get("best_top1_selected_on_val"),
                paper_top1=w["paper"].get(a.ipc, {}).get(spec), synthetic_images=len(ds),
                stored_bytes=ds.manifest.stored_bytes, compression_ratio=ds.manifest.compression_ratio,
                label_bytes=ds.manifest.label_bytes if labels == "static" else 0,
                student_epochs=summary["epochs"], student_steps=summary.get("student_steps"),
                **evidence_fields(ds.manifest.evidence), **judged_fields(ddir, a.judges, a.device),
                val_overlap=(summary.get("val_overlap") or {}).get("in_val"),
                synthesis_time_s=distill_time, student_time_s=summary["wall_time_s"],
                ufc_pinned_mean=ufc.get("mean"), ufc_cos_sets=ufc.get("cos_sets"),
                distilled=ddir,
            ))
    judged_cols = list(JUDGED_KEYS) if a.judges else []
    per_seed_cols = ["method", "labels", "compute", "seed", "top1", "top5", "student_epochs", "student_steps",
                     "evidence_natural", "evidence_composed", *judged_cols, "synthesis_time_s", "student_time_s",
                     "ufc_pinned_mean"]
    agg = aggregate(rows)
    agg_cols = ["method", "labels", "compute", "seeds", "top1", "top5", "paper_top1", "synthetic_images",
                "stored_bytes", "label_bytes", "student_epochs", "student_steps", "evidence_natural",
                "evidence_composed", *judged_cols, "synthesis_s", "student_s"]
    print()
    print(markdown_table(rows, per_seed_cols))
    print()
    print(markdown_table(agg, agg_cols))
    for line in verdict(agg, rows):
        print("bench_quality: " + line)
    if (line := overlap_warning(rows)) is not None:
        print("bench_quality: " + line, flush=True)
    curves_png = os.path.join(run_dir, "curves.png")
    plot_curves(mean_curves(curves), curves_png, xlabel="optimizer step",
                title=f"{a.workload} ipc {a.ipc}: student validation top-1 (mean of {len(a.seeds)} seed(s))")
    gpu = "cuda " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    print(f"settings: {json.dumps(settings)}; seeds {a.seeds}; paper: {w['paper_settings']}; "
          f"teachers {teacher_time:.0f}s; total {time.perf_counter() - t_all:.0f}s; {os.cpu_count()} CPU cores, "
          f"torch {torch.__version__}, {gpu}, commit {git_commit()}; curves {curves_png}")
    for r in rows:
        r["settings"] = settings
    write_json(a.json, rows)
    return rows


if __name__ == "__main__":
    main()
