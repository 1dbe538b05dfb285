"""`infer-fast distill`: orchestration of one distillation run (single process or torchrun ranks).

1. Data info, teachers (``--teachers`` or, for digits, the cached default ensemble), the method
   (:mod:`infer_fast.synth.methods`) and its budget (K, storage).
2. Natural sets sampled (seeded) through infer_fast.data; the problems of the method, partitioned into fixed
   batches (``problems_per_batch`` problems of one teacher per forward).
3. Batches are sharded round-robin over the torchrun ranks (one rank without torchrun); each finished batch is
   saved atomically to ``OUT/progress/`` (safetensors), so ``--resume`` skips it and a killed run loses at most
   the batches in flight. The result of a batch depends only on the config (each problem's RNG is seeded by
   (seed, k, m)), hence resumed and sharded runs equal an uninterrupted single-process run tensor for tensor,
   given the same CPU threads per process (``--threads``; oneDNN's float reductions depend on the thread count,
   and torchrun gives each rank 1 thread unless OMP_NUM_THREADS says otherwise).
4. Rank 0 gathers the batches through the filesystem, computes the static labels and writes the format of
   :mod:`infer_fast.distilled`; the progress folder is removed once manifest.json is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Callable
from typing import Any

import torch
from tqdm import tqdm

from infer_fast.config_cli import ConfigError, resume_fields
from infer_fast.dashboard import Dashboard
from infer_fast.distilled import DistilledDataset, Manifest, write_distilled
from infer_fast.labels import TeacherEnsemble, static_labels
from infer_fast.runtime import (
    DistContext,
    Normalisation,
    atomic_save_safetensors,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_with,
    git_commit,
    json_key,
    keeping,
    lock_folder,
    make_dirs,
    remove_temp_files,
)
from infer_fast.synth import methods
from infer_fast.synth.budget import Storage
from infer_fast.synth.config import DistillConfig, paper_defaults
from infer_fast.synth.evidence import (
    EVIDENCE_NATURALS,
    EvidenceMeter,
    add_natural_sample,
    describe,
    loss_summary,
)
from infer_fast.synth.fold import SynthesisTeacher
from infer_fast.synth.methods import Inputs, Method
from infer_fast.synth.problem import Problem, make_batches
from infer_fast.synth.ufc import PixelGeometry, SynthesisSettings, optimise_batch

PROGRESS_DIR = "progress"
# Fields that change the result (their `resume` metadata): the resume fingerprint covers exactly these.
_RESULT_FIELDS = resume_fields(DistillConfig)


# ---- helpers ----------------------------------------------------------------------------------


# The per-dataset defaults live beside the fields they fill (DistillConfig.resolved); the old name stays.
resolve = DistillConfig.resolved


DefaultTeachers = Callable[[str, int], list[str]]  # (data source, image size) -> teacher files


def resolve_teacher_files(cfg: DistillConfig, image_size: int, dist: DistContext,
                  default_teachers: DefaultTeachers | None = None) -> list[str]:
    """``--teachers``, else the source's default ensemble from ``default_teachers`` (the CLI passes the teacher
    training stage's: rank 0 trains and caches it first, the other ranks then find it in the cache)."""
    if cfg.teachers:
        return list(cfg.teachers)
    if cfg.source != "digits":
        raise ConfigError(f"--teachers: expected teacher files for --data {cfg.source} (only --data digits has a "
                          "default teacher ensemble), got none")
    if default_teachers is None:
        raise ValueError("distill: no --teachers given; pass teacher files (run_distill from Python does not train "
                         "the digits' default ensemble unless given default_teachers, as the CLI does)")
    paths: list[str] = []
    if dist.rank == 0:
        paths = default_teachers(cfg.source, image_size)
    dist.barrier()
    return paths if dist.rank == 0 else default_teachers(cfg.source, image_size)


def load_run_teachers(cfg: DistillConfig, paths: list[str], classes: list[str], norm: Normalisation,
                  device: torch.device) -> tuple[list[torch.nn.Module], list, list[dict]]:
    """(models in eval mode with frozen weights, their TeacherMeta, manifest entries) of the M teacher files, each
    restricted to the data's ``classes`` in the data's order (models.classes: a subset of the teacher's classes,
    e.g. Imagenette under an ImageNet-1k teacher, or a permutation of them)."""
    from infer_fast import models

    try:
        loaded = models.load_teachers(paths, classes, device, declared=cfg.teacher_classes)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"distill: {exc}") from None
    nets, tmetas, entries = [], [], []
    for path, (model, meta) in zip(paths, loaded, strict=True):
        if not norm.matches(Normalisation(meta.mean, meta.std)):
            # the labels re-normalise per teacher (labels.TeacherEnsemble); the optimisation cannot: it shapes
            # the images the students see, in the data's normalisation
            print(f"distill: warning: teacher {path!r} was trained with mean/std {tuple(meta.mean)}/{tuple(meta.std)}"
                  f" but the data is normalised with {norm.mean}/{norm.std}; the synthesis feeds it the "
                  "data's normalisation", file=sys.stderr)
        nets.append(model)
        tmetas.append(meta)
        named = meta.extra.get("name")  # a teacher by name: the manifest pins its weights tag and records the url
        entry = {"path": f"{named}:{meta.extra['weights']}" if named else os.path.abspath(path), "arch": meta.arch,
                 "fingerprint": meta.fingerprint, "num_classes": int(meta.num_classes), "val_acc": meta.val_acc}
        if named:
            entry.update(name=named, weights=meta.extra["weights"], url=meta.extra["url"])
        if cfg.teacher_classes is not None:  # dynamic labels reload the file with the same declaration
            entry["classes"] = cfg.teacher_classes
        if "class_index" in meta.extra:  # the teacher outputs the data's classes are read from
            entry["teacher_classes"] = meta.extra["teacher_classes"]
            entry["class_index"] = meta.extra["class_index"]
        entries.append(entry)
    return nets, tmetas, entries


def fingerprint(cfg: DistillConfig, teachers: list[dict], naturals: torch.Tensor | None) -> str:
    d = {k: v for k, v in cfg.to_dict().items() if k in _RESULT_FIELDS}
    d["teachers"] = [t["fingerprint"] for t in teachers]
    return json_key(d, *([] if naturals is None else [naturals.contiguous().numpy().tobytes()]))


@dataclasses.dataclass(frozen=True)
class Reused:
    """The arrays and per-problem metrics of a finished infer run that a content control transforms."""

    source: str
    tensors: dict[str, torch.Tensor]
    metrics: list[dict]


def reuse_compensators(setup: RunSetup, naturals: torch.Tensor) -> Reused:
    """``--compensators-from DIR``: the naturals and UFCs of a finished ``--method infer`` run, after checking that
    it is the run this one would otherwise repeat: the same result-changing settings (but the method), the same
    teachers (fingerprints) and the same natural sets (so the transformed result equals an optimised one)."""
    from infer_fast.distilled import DistilledFormatError, load_distilled

    cfg, src = setup.cfg, setup.cfg.compensators_from
    flag = "--compensators-from"
    try:
        ds = load_distilled(src)
    except (DistilledFormatError, OSError) as exc:
        raise ConfigError(f"{flag}: {src} is not a readable distilled set ({exc})") from None
    if ds.method != "infer" or "ufcs" not in ds.tensors:
        raise ConfigError(f"{flag}: expected the folder of a --method infer run, got {src} (method {ds.method})")
    ours = json.loads(json.dumps(cfg.to_dict()))  # as the manifest holds it (lists, not tuples)
    theirs = ds.manifest.config or {}
    differ = [k for k in _RESULT_FIELDS if k not in ("method", "compensators_from") and theirs.get(k) != ours.get(k)]
    if differ:
        raise ConfigError(f"{flag}: {src} was distilled with other settings: " + ", ".join(
            f"{k} {theirs.get(k)!r} there, {ours.get(k)!r} here" for k in differ))
    if ds.teacher_fingerprints != [t["fingerprint"] for t in setup.teacher_entries]:
        raise ConfigError(f"{flag}: {src} was distilled with other teachers (fingerprints differ)")
    if not torch.equal(ds.tensors["naturals"], naturals):
        raise ConfigError(f"{flag}: {src} holds other natural sets than this run samples (data changed?)")
    metrics = []
    path = os.path.join(src, "metrics.jsonl")
    if os.path.isfile(path):
        with open(path) as f:
            metrics = [json.loads(line) for line in f if line.strip()]
    return Reused(src, {"naturals": ds.tensors["naturals"], "ufcs": ds.tensors["ufcs"]}, metrics)


def _batch_path(out: str, b: int) -> str:
    return os.path.join(out, PROGRESS_DIR, f"batch_{b:05d}.safetensors")


def _prepare_out(cfg: DistillConfig, fp: str, num_batches: int, dist: DistContext,
                 stack: contextlib.ExitStack) -> bool:
    """Checks the output folder (all ranks, read-only), then rank 0 creates progress/ and locks the output folder
    for the rest of the run (``stack``). True if already complete."""
    out = cfg.out
    state_path = os.path.join(out, PROGRESS_DIR, "state.json")
    if os.path.isfile(os.path.join(out, "manifest.json")):
        if cfg.resume:
            done = Manifest.read(out).fingerprint
            if done is not None and done != fp:  # older manifests lack it: taken as they are
                raise ConfigError(f"--resume: {out!r} holds a finished run of other settings, teachers or natural "
                                  "sets (its manifest's fingerprint differs); choose a new --out")
            return True
        raise FileExistsError(f"distill: {out!r} already holds a distilled dataset (manifest.json); choose a new "
                              "--out or pass --resume")
    if os.path.isdir(out) and os.listdir(out):
        if not cfg.resume:
            raise FileExistsError(f"distill: output folder {out!r} is not empty; pass --resume to continue an "
                                  "interrupted run there, or choose a new --out")
        if os.path.isfile(state_path):
            with open(state_path) as f:
                state = json.load(f)
            if state.get("fingerprint") != fp:
                raise ConfigError(f"--resume: {state_path} was written by a run with a different config, "
                                 "teachers or natural sets; resume with the same settings or choose a new --out")
    if cfg.resume and dist.rank == 0 and not os.path.isfile(state_path):
        print(f"distill: --resume: {out!r} holds no interrupted run; starting fresh", file=sys.stderr)
    dist.barrier()
    if dist.rank == 0:
        make_dirs(os.path.join(out, PROGRESS_DIR))
        # One writer per folder: a second run (say, a --resume while the first one still runs) would otherwise
        # rewrite the same batches and delete progress/ under the other's feet.
        stack.enter_context(lock_folder(out, "distill"))
        # Temporary files of a killed run: never read (batches are found by their final names), just removed.
        remove_temp_files(out)
        remove_temp_files(os.path.join(out, PROGRESS_DIR))
        if not os.path.isfile(state_path):
            atomic_write_json(state_path, {"fingerprint": fp, "num_batches": num_batches})
    dist.barrier()
    return False


def preview_grid(ds: DistilledDataset, max_classes: int = 10) -> torch.Tensor:
    """[3, H, W] grid in [0, 1]: set 0's naturals then its composition with each UFC (INFER), or the first stored
    rows."""
    from torchvision.utils import make_grid

    c = ds.num_classes
    show = min(c, max_classes)
    kc = ds.num_sets * c
    rows = []
    if ds.num_ufc_teachers:
        rows.append(torch.arange(show))
        rows += [kc + m * c + torch.arange(show) for m in range(ds.num_ufc_teachers)]
    else:
        rows += [k * c + torch.arange(show) for k in range(min(ds.num_sets, 8))]
    idx = torch.cat(rows)
    with torch.no_grad():
        images = ds.denormalise(ds.compose(idx).float())
    return make_grid(images, nrow=show, padding=1)


def write_preview(grid: torch.Tensor, path: str) -> None:
    """The preview grid as a PNG, written atomically."""
    from torchvision.utils import save_image

    atomic_write_with(path, lambda buf: save_image(grid, buf, format="png"))


# ---- the run ----------------------------------------------------------------------------------


@dataclasses.dataclass
class RunSetup:
    """What a distillation (or its --plan) starts from: the resolved config, the data, the teachers restricted to
    the data's classes, the method, its budget and the data's normalisation."""

    cfg: DistillConfig
    info: Any
    classes: list[str]
    image_size: int
    teachers: list[torch.nn.Module]
    teacher_metas: list  # TeacherMeta per teacher
    teacher_entries: list[dict]  # the manifest's entry per teacher
    method: Method
    storage: Storage
    norm: Normalisation
    defaults: dict[str, str] = dataclasses.field(default_factory=dict)  # DistillConfig.default_sources
    fingerprint: str | None = None  # of the result-changing settings (:func:`fingerprint`), set once sampled


def prepare(cfg: DistillConfig, dist: DistContext, default_teachers: DefaultTeachers | None = None) -> RunSetup:
    from infer_fast import data

    info = data.dataset_info(cfg.source, image_size=cfg.image_size)
    cfg = dataclasses.replace(cfg, image_size=info.image_size)
    defaults = cfg.default_sources(info.small, len(info.classes))
    cfg = resolve(cfg, info.small, len(info.classes))
    classes, s = list(info.classes), int(info.image_size)
    norm = Normalisation(info.mean, info.std)
    paths = resolve_teacher_files(cfg, s, dist, default_teachers)
    teachers, metas, entries = load_run_teachers(cfg, paths, classes, norm, dist.device)
    method = methods.get(cfg.method)
    return RunSetup(cfg, info, classes, s, teachers, metas, entries, method,
                    method.storage(cfg.ipc, len(classes), len(teachers), s), norm, defaults)


def run_distill(cfg: DistillConfig, progress: bool = True,
                default_teachers: DefaultTeachers | None = None) -> str | None:
    """Run (or resume) a distillation; returns the output folder, or None if stopped early (``stop_after``).
    ``default_teachers`` provides the teacher files when ``cfg.teachers`` is empty
    (see :func:`resolve_teacher_files`)."""
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    note = (f"finished batches in {os.path.join(cfg.out, PROGRESS_DIR)} are kept; free space or fix the folder, "
            "then rerun with --resume")
    with DistContext(cfg.device) as dist, contextlib.ExitStack() as stack, keeping(note):
        return _run(cfg, dist, progress, stack, default_teachers)


def _sample(setup: RunSetup) -> tuple[torch.Tensor | None, list | None]:
    """(naturals uint8 [K, C, 3, S, S], their files) when the method samples them, else (None, None)."""
    from infer_fast import data

    cfg, s, k = setup.cfg, setup.image_size, setup.storage.num_natural_sets
    if not setup.method.samples_naturals(cfg):
        return None, None
    c = len(setup.classes)
    sample = data.sample_naturals(cfg.source, per_class=k, seed=cfg.seed, image_size=s)
    imgs = sample.images
    if imgs.dtype != torch.uint8 or tuple(imgs.shape) != (c, k, 3, s, s):
        raise RuntimeError(f"distill: sample_naturals returned {imgs.dtype} {list(imgs.shape)}, expected uint8 "
                           f"[{c}, {k}, 3, {s}, {s}]")
    return imgs.transpose(0, 1).contiguous(), sample.files  # [K, C, 3, S, S]: set k = naturals[k]


def _run(cfg: DistillConfig, dist: DistContext, progress: bool, stack: contextlib.ExitStack,
         default_teachers: DefaultTeachers | None) -> str | None:
    if dist.device.type == "cuda":  # the same result on every run and rank (resume and torchrun equality)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    setup = prepare(cfg, dist, default_teachers)
    cfg, method = setup.cfg, setup.method
    if dist.rank == 0 and "r_bn" in setup.defaults and cfg.r_bn != paper_defaults(setup.info.small)["r_bn"]:
        print(f"distill: r_bn {setup.defaults['r_bn']}", file=sys.stderr)
    naturals, files = _sample(setup)
    inputs = Inputs(cfg, setup.storage, setup.norm, setup.image_size, naturals, bool(setup.info.small))
    reused = reuse_compensators(setup, naturals) if cfg.compensators_from else None
    batches = [] if reused else make_batches(method.problems(inputs), cfg.problems_per_batch)
    setup.fingerprint = fingerprint(cfg, setup.teacher_entries, naturals)
    if _prepare_out(cfg, setup.fingerprint, len(batches), dist, stack):
        if dist.rank == 0:
            print(f"distill: {cfg.out} is already complete", file=sys.stderr)
        return cfg.out
    board = stack.enter_context(Dashboard(cfg.log_dir, "distill", dist.rank))
    todo = [b for b in range(len(batches))
            if b % dist.world == dist.rank and not os.path.isfile(_batch_path(cfg.out, b))]
    if todo:
        _optimise(setup, method.base(inputs), batches, todo, dist, progress, board)
    dist.barrier()

    missing = [b for b in range(len(batches)) if not os.path.isfile(_batch_path(cfg.out, b))]
    if missing:
        if dist.rank == 0:
            print(f"distill: stopped with {len(batches) - len(missing)} of {len(batches)} batches finished "
                  f"(saved in {os.path.join(cfg.out, PROGRESS_DIR)}); rerun with --resume to continue",
                  file=sys.stderr)
        return None
    if dist.rank == 0:
        _finish(setup, inputs, batches, files, dist.device, progress, board, reused)
    dist.barrier()
    return cfg.out


def _optimise(setup: RunSetup, base: torch.Tensor, batches: list[list[Problem]], todo: list[int],
              dist: DistContext, progress: bool, board: Dashboard) -> None:
    """Optimise this rank's unfinished batches ``todo``, each saved to progress/ when done."""
    cfg = setup.cfg
    pixels = PixelGeometry.of(base, setup.norm, dist.device)
    settings = SynthesisSettings.from_config(cfg, setup.info.small)
    prepared: dict[int, SynthesisTeacher] = {}  # per teacher index, built on first use
    desc = f"distill {cfg.method}" + (f" rank {dist.rank}" if dist.world > 1 else "")
    bar = tqdm(total=len(todo) * cfg.iterations, desc=desc, unit="it", disable=not progress, dynamic_ncols=True)
    try:
        for finished, b in enumerate(todo):
            if cfg.stop_after and finished >= cfg.stop_after:
                break
            batch = batches[b]

            def on_progress(n, ce, bn, _b=b, _start=finished * cfg.iterations):
                bar.update(n)
                if ce is not None:
                    bar.set_postfix(batch=f"{_b + 1}/{len(batches)}", ce=f"{ce:.4f}", bn=f"{bn:.4f}")
                    rate = bar.format_dict.get("rate")
                    board.scalars(bar.n, "distill", ce=ce, bn=bn, iterations_per_s=rate)

            m = batch[0].teacher
            if m not in prepared:
                prepared[m] = SynthesisTeacher(
                    setup.teachers[m], first_bn_multiplier=cfg.first_bn_multiplier, backend=cfg.backend,
                    fold_bn=cfg.fold_bn, channels_last=cfg.channels_last, compile=cfg.compile,
                    probe_size=setup.image_size)
                if prepared[m].report["fold_error"]:
                    tqdm.write(f"distill: teacher {setup.teacher_entries[m]['arch']} used unfolded: "
                               f"{prepared[m].report['fold_error']}", file=sys.stderr)
            res = optimise_batch(batch, prepared[m], pixels, settings, on_progress=on_progress)
            tensors = {f"p{j}": p for j, p in enumerate(res.params)}
            tensors["ce"], tensors["bn"], tensors["gradients"] = res.ce, res.bn, res.gradients
            keys = json.dumps([list(p.key) for p in batch])
            atomic_save_safetensors(_batch_path(cfg.out, b), tensors, metadata={"keys": keys})
    finally:
        bar.close()


def _gather(out: str, batches: list[list[Problem]], key_name: str) -> tuple[list[tuple[Problem, torch.Tensor]],
                                                                          list[dict]]:
    """Every problem with its optimised parameters, and the per-problem metrics, from the saved batches."""
    from safetensors.torch import load_file

    solved, metrics = [], []
    for b, batch in enumerate(batches):
        saved = load_file(_batch_path(out, b))
        for j, p in enumerate(batch):
            solved.append((p, saved[f"p{j}"]))
            ce, bn = saved["ce"][:, j], saved["bn"][:, j]
            row = {key_name: p.key[0], "m": p.key[1], "ce_first": float(ce[0]), "ce_last": float(ce[-1]),
                   "bn_first": float(bn[0]), "bn_last": float(bn[-1])}
            if "gradients" in saved:  # batches saved before this release lack them
                g_ce, g_bn, cos = (float(v) for v in saved["gradients"][j])
                row.update(grad_ce=g_ce, grad_bn=g_bn, grad_ratio_bn_ce=g_bn / g_ce if g_ce > 0 else float("inf"),
                           grad_cos=cos)
            metrics.append(row)
    return solved, metrics


def _measure(setup: RunSetup, teachers: TeacherEnsemble, ds: DistilledDataset, device: torch.device,
             progress: bool) -> tuple[torch.Tensor, EvidenceMeter]:
    """The static labels of ``ds`` and, from the same pass, the class evidence of its images. A set without real
    images (sre2l) is measured against a fresh natural sample: ``EVIDENCE_NATURALS`` images per class (at most
    ipc), seeded like the run."""
    cfg = setup.cfg
    meter = EvidenceMeter(len(teachers.models))
    natural = setup.method.natural_mask(ds)
    labels = static_labels(teachers, ds, cfg.label_batch, device, progress=progress, evidence=meter,
                           natural=natural)
    if not bool(natural.any()):
        add_natural_sample(meter, teachers, cfg.source, min(cfg.ipc, EVIDENCE_NATURALS), cfg.seed, setup.image_size,
                           setup.norm, cfg.label_batch, device)
    return labels, meter


def _manifest(setup: RunSetup, files: list | None) -> Manifest:
    from infer_fast import __version__

    cfg, info, storage = setup.cfg, setup.info, setup.storage
    return Manifest(
        method=cfg.method, classes=setup.classes, mean=setup.norm.mean, std=setup.norm.std,
        image_size=setup.image_size, small=bool(info.small), ipc=cfg.ipc, num_natural_sets=storage.num_natural_sets,
        num_teachers=len(setup.teachers), num_synthetic=storage.num_synthetic,
        storage=storage.as_dict(getattr(info, "train_bytes", None)), label_bytes=storage.label_bytes,
        teachers=setup.teacher_entries, source={"source": cfg.source, "natural_files": files}, config=cfg.to_dict(),
        defaults=setup.defaults or None, fingerprint=setup.fingerprint,
        package_version=__version__, torch_version=torch.__version__, git_commit=git_commit(short=False))


def _finish(setup: RunSetup, inputs: Inputs, batches: list[list[Problem]], files: list | None,
            device: torch.device, progress: bool, board: Dashboard, reused: Reused | None = None) -> None:
    """Rank 0: assemble the stored arrays (or transform ``reused`` ones), compute the static labels, write the
    format, remove progress/."""
    cfg, method = setup.cfg, setup.method
    if reused:
        tensors, metrics = method.transform(inputs, dict(reused.tensors)), reused.metrics
    else:
        solved, metrics = _gather(cfg.out, batches, method.key_name)
        tensors = method.assemble(inputs, solved)
    manifest = _manifest(setup, files)
    teachers = TeacherEnsemble(list(zip(setup.teachers, setup.teacher_metas, strict=True)), setup.norm.mean,
                               setup.norm.std, setup.image_size)
    labels, meter = _measure(setup, teachers, DistilledDataset(manifest, dict(tensors), backend=cfg.backend), device,
                             progress)
    if not torch.isfinite(labels).all():
        raise RuntimeError("distill: the teachers produced non-finite logits on the synthetic images")
    tensors["labels"] = labels.half()
    manifest.evidence = {**meter.summary(), "losses": loss_summary(metrics)}
    line, warning = describe(manifest.evidence, method.evidence_hint)
    print(f"distill: {line}")
    if warning:
        print(f"distill: {warning}", file=sys.stderr)
    if metrics:
        atomic_write_bytes(os.path.join(cfg.out, "metrics.jsonl"),
                           "".join(json.dumps(r) + "\n" for r in metrics).encode())
    grid = preview_grid(DistilledDataset(manifest, tensors, backend=cfg.backend))
    write_preview(grid, os.path.join(cfg.out, "preview.png"))
    board.image("distill/preview", grid)
    for group in ("natural", "composed"):
        if group in manifest.evidence:
            board.scalars(0, f"distill/evidence_{group}", **manifest.evidence[group]["ensemble"])
    write_distilled(cfg.out, manifest, tensors)  # manifest.json last: its presence marks a complete dataset
    shutil.rmtree(os.path.join(cfg.out, PROGRESS_DIR), ignore_errors=True)
    ratio = f", compression {manifest.compression_ratio:.4%}" if manifest.compression_ratio else ""
    print(f"distill: wrote {cfg.out}: {manifest.num_synthetic} synthetic images from {manifest.stored_images} stored "
          f"({manifest.stored_bytes} bytes{ratio}), labels {manifest.static_label_bytes} bytes"
          f"{method.summary(tensors, setup.norm)}", file=sys.stderr)
