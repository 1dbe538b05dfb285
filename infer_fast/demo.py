"""``infer-fast demo``: the whole method end to end on the embedded digits, with nothing downloaded.

Default teacher ensemble (train.teacher.default_teachers, cached) -> distill with ``infer``, ``sre2l`` and ``random``
at the same storage budget (synth.run_distill) -> train the same student with the same epochs on each (static labels for
infer and random; sre2l with its own relabel protocol, see ``DemoConfig.sre2l_labels``) -> a table of top-1, labels,
stored bytes, label bytes and wall time, written as results.json, report.md and PNGs.
The default settings are sized to finish in under 4 minutes on a 2-core CPU (see report.md of a run).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass

import torch

from infer_fast.config_cli import add_command, check_choices, option, require
from infer_fast.runtime import atomic_write_text, git_commit
from infer_fast.synth import methods as synth_methods
from infer_fast.synth.methods import names as method_names
from infer_fast.train.config import BACKENDS, LABEL_MODES, EvalConfig
from infer_fast.train.loop import train_student
from infer_fast.train.report import plot_curves, pyplot, save_figure

METHODS = method_names(controls=False)


@dataclass
class DemoConfig:
    out: str = option("runs/demo", help="output folder")
    methods: list[str] = option(default_factory=lambda: list(METHODS), choices=METHODS, help="the synthesis methods "
                                "to compare (every method, no controls)")
    ipc: int = option(10, help="storage budget, images per class (same for every method)")
    image_size: int = option(16, help="digits image size")  # 8x8 originals; 16 px keeps every stage fast on a CPU
    iterations: int = option(120, help="synthesis iterations per UFC / sre2l image")  # paper: 1000 at CIFAR scale
    epochs: int = option(40, help="student epochs, every method")  # paper: 400 at CIFAR ipc 10
    student: str = option("convnet", help="student architecture")
    width: float = option(0.5, help="student width")
    batch_size: int = option(64, help="student batch size")
    # 30 in the research code; a short run learns faster from sharper targets
    temperature: float = option(4.0, help="student KL temperature")
    lr: float = option(3e-3, help="student AdamW learning rate")
    # SRe2L's own protocol (its relabel stage) labels every augmented, mixed batch with the teacher. Its synthesised
    # images carry little class evidence of their own (the demo's teachers give 22 % of them their class), so one
    # label per image, taken on the un-augmented image, does not describe the crops, flips and mixes the student trains
    # on, and the student ends at chance on digits (README, "Student training and the demo").
    sre2l_labels: str = option("dynamic", choices=LABEL_MODES, help="labels of the sre2l student: dynamic (SRe2L's "
                               "relabel protocol: the teachers label every augmented, mixed batch) or static (one "
                               "stored label per image, as infer and random get)")
    seed: int = option(0, help="seed of the teachers, the distillations and the students")
    device: str = option("auto", help="auto, cpu, cuda or cuda:N")
    backend: str = option("fused", choices=BACKENDS, help="loss implementation")
    teacher_cache: str | None = option(None, metavar="DIR", help="where the default teachers are cached (default: "
                                       "~/.cache/infer_fast or $INFER_FAST_CACHE)")

    def quick(self) -> DemoConfig:
        """A much smaller setting for tests and CI (not the one the report's numbers come from)."""
        return dataclasses.replace(self, ipc=min(self.ipc, 3), iterations=min(self.iterations, 10),
                                   epochs=min(self.epochs, 10), width=min(self.width, 0.25),
                                   batch_size=min(self.batch_size, 16))

    def labels_for(self, method: str) -> str:
        """The label procedure of ``method``'s student: static (INFER's stored labels) for infer and random, SRe2L's
        own relabel protocol (``sre2l_labels``) for sre2l."""
        return self.sre2l_labels if synth_methods.get(method).relabels else "static"

    def validate(self) -> None:
        check_choices(self)
        require(bool(self.methods), "--methods", f"a non-empty subset of {', '.join(METHODS)}", self.methods)
        for name in ("ipc", "iterations", "epochs", "image_size", "batch_size"):
            require(getattr(self, name) >= 1, f"--{name.replace('_', '-')}", ">= 1", getattr(self, name))


def save_grid(ds, path: str, per_class: int = 8, max_classes: int = 10) -> None:
    """Grid PNG: one row per class, ``per_class`` synthetic images spread over the class's indices (for INFER the
    first are the stored naturals, the later ones natural + UFC compositions)."""
    from torchvision.utils import make_grid

    plt = pyplot()

    picks = []
    for c in range(min(max_classes, len(ds.classes))):
        idx = torch.nonzero(ds.hard_labels == c).flatten()
        sel = idx[torch.linspace(0, idx.numel() - 1, min(per_class, idx.numel())).round().long()]
        picks.append(torch.cat([sel, sel[-1:].repeat(per_class - sel.numel())]))
    imgs = ds.denormalise(ds.compose(torch.cat(picks)))
    grid = make_grid(imgs, nrow=per_class, padding=1, pad_value=1.0).permute(1, 2, 0).numpy()
    fig, ax = plt.subplots(figsize=(per_class * 0.6 + 0.5, len(picks) * 0.6 + 0.6), dpi=100)
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(f"{ds.method}: {len(ds)} synthetic images (rows: classes)", fontsize=9)
    save_figure(fig, path)


def _table(rows: list[dict]) -> str:
    cols = [("method", "method", "{}"), ("labels", "labels", "{}"), ("top1", "top-1 %", "{:.2f}"),
            ("synthetic_images", "synthetic imgs", "{}"),
            ("stored_bytes", "stored bytes", "{:,}"), ("label_bytes", "label bytes", "{:,}"),
            ("distill_time_s", "distill s", "{:.1f}"), ("eval_time_s", "student s", "{:.1f}"),
            ("wall_time_s", "wall s", "{:.1f}")]
    lines = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(fmt.format(r[k]) if r.get(k) is not None else "-" for k, _, fmt in cols) + " |")
    return "\n".join(lines)


def run_demo(cfg: DemoConfig) -> dict:
    """Run the demo; returns the results dict (also written to ``<out>/results.json``)."""
    from infer_fast.distilled import load_distilled
    from infer_fast.synth.config import DistillConfig
    from infer_fast.synth.runner import run_distill
    from infer_fast.train.teacher import default_teachers

    cfg.validate()
    t_all = time.perf_counter()
    os.makedirs(cfg.out, exist_ok=True)
    for sub in ("distilled", "students"):  # the demo is a fresh run: its own previous stage outputs are replaced
        shutil.rmtree(os.path.join(cfg.out, sub), ignore_errors=True)

    t0 = time.perf_counter()
    teachers = default_teachers("digits", cache_dir=cfg.teacher_cache, image_size=cfg.image_size, seed=cfg.seed)
    teacher_time = time.perf_counter() - t0
    print(f"demo: {len(teachers)} teachers ready in {teacher_time:.1f}s", flush=True)

    rows, curves = [], {}
    for method in cfg.methods:
        ddir = os.path.join(cfg.out, "distilled", method)
        t0 = time.perf_counter()
        run_distill(DistillConfig(data="digits", teachers=list(teachers), method=method, ipc=cfg.ipc,
                                  seed=cfg.seed, out=ddir, image_size=cfg.image_size, iterations=cfg.iterations,
                                  device=cfg.device, backend=cfg.backend))
        distill_time = time.perf_counter() - t0
        ds = load_distilled(ddir, backend=cfg.backend)
        save_grid(ds, os.path.join(cfg.out, f"synthetic_{method}.png"))
        t0 = time.perf_counter()
        ecfg = _student_config(cfg, ddir, os.path.join(cfg.out, "students", method), cfg.labels_for(method))
        summary = train_student(ecfg, ds)
        eval_time = time.perf_counter() - t0
        with open(os.path.join(ecfg.out, "metrics.jsonl")) as f:
            evals = [r for r in map(json.loads, f) if "top1" in r]
        curves[method] = [(r["epoch"], r["top1"]) for r in evals]
        man = ds.manifest
        rows.append({
            "method": method, "labels": ecfg.labels, "top1": summary["top1"],
            "best_top1_selected_on_val": summary["best_top1_selected_on_val"],
            "synthetic_images": len(ds), "stored_images": man.stored_images, "stored_bytes": man.stored_bytes,
            "label_bytes": man.static_label_bytes, "compression_ratio": man.compression_ratio,
            "distill_time_s": distill_time,
            "eval_time_s": eval_time, "wall_time_s": distill_time + eval_time, "distilled": ddir,
            "student_run": ecfg.out,
        })
    plot_curves(curves, os.path.join(cfg.out, "accuracy.png"),
                title=f"digits, ipc {cfg.ipc}: {cfg.student} (width {cfg.width:g}) validation top-1")
    total = time.perf_counter() - t_all
    results = {"results": rows, "config": asdict(cfg), "classes": len(ds.classes),
               "val_images": evals[-1]["val_images"], "teachers": teachers,
               "teacher_time_s": teacher_time,
               "total_time_s": total, "machine": _machine(), "commit": git_commit()}
    atomic_write_text(os.path.join(cfg.out, "results.json"), json.dumps(results, indent=1))
    table = _table(rows)
    atomic_write_text(os.path.join(cfg.out, "report.md"), _report(cfg, rows, results, table))
    print(table)
    print(f"demo: done in {total:.1f}s (teachers {teacher_time:.1f}s) -> {cfg.out}/results.json, report.md, "
          f"accuracy.png, synthetic_*.png", flush=True)
    return results


def _student_config(cfg: DemoConfig, distilled: str, out: str, labels: str = "static") -> EvalConfig:
    """The student run of every method: the demo's settings over EvalConfig's defaults, with ``labels``."""
    return EvalConfig(distilled=distilled, val="digits", student=cfg.student, width=cfg.width, labels=labels,
                      epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, temperature=cfg.temperature,
                      device=cfg.device, backend=cfg.backend, seed=cfg.seed, workers=0, out=out)


def _machine() -> dict:
    return {"cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _report(cfg: DemoConfig, rows: list[dict], results: dict, table: str) -> str:
    from infer_fast.synth.config import SMALL_DEFAULTS
    from infer_fast.train.loop import auto_student

    m = results["machine"]
    ev, paper = _student_config(cfg, "", ""), EvalConfig()  # this run's student recipe; the paper's defaults
    mixing = f"{ev.mix} Beta({ev.mix_alpha:g}, {ev.mix_alpha:g})" if ev.mix_alpha > 0 else "no mixing"
    imgs = "\n".join(f"![{r['method']}](synthetic_{r['method']}.png)" for r in rows)
    return f"""# infer_fast demo: INFER vs SRe2L vs random on the embedded digits

Same storage budget (ipc {cfg.ipc}: {cfg.ipc * results['classes']} image-sized tensors), same teachers, same student
(`{ev.student}`, width {ev.width:g}) trained {ev.epochs} epochs, {mixing},
AdamW lr {ev.lr:g} wd {ev.weight_decay:g}, cosine, batch {ev.batch_size}, KL temperature {ev.temperature:g}. Labels:
static (the stored teacher labels) for infer and random; {cfg.sre2l_labels} for sre2l (dynamic is SRe2L's own relabel
protocol: the teachers label every augmented, mixed batch; `--sre2l-labels static` gives it stored labels too).
Validation: the digits' held-out split ({results['val_images']} real images). top-1 is the **final-epoch** accuracy.

{table}

Settings reduced to fit a CPU demo (paper values in brackets): digits at {cfg.image_size} px,
synthesis {cfg.iterations} iterations per UFC / SRe2L image [{SMALL_DEFAULTS['iterations']}],
student {ev.epochs} epochs [{paper.epochs}], KL temperature {ev.temperature:g} [{paper.temperature:g}],
student `{ev.student}` [`{auto_student(True)}`]. Teachers: {len(results['teachers'])} default digits teachers
(trained once and cached, {results['teacher_time_s']:.1f}s this run).

Total wall time {results['total_time_s']:.1f}s on {m['cpu_count']} CPU cores ({m['platform']}, torch {m['torch']}),
commit {results['commit']}.

![accuracy curves](accuracy.png)

{imgs}
"""


def _run(cfg: DemoConfig, args: argparse.Namespace) -> int:
    run_demo(cfg.quick() if args.quick else cfg)
    return 0


def register(subparsers) -> None:
    q = add_command(
        subparsers, "demo", DemoConfig, _run,
        help="the main job: teachers, distill (infer, sre2l, random) and evaluate on the embedded digits",
        description="On scikit-learn's embedded digits (nothing downloaded): train the default teacher ensemble, "
                    "distill with infer, sre2l and random at the same budget, evaluate each with the same student, "
                    "and write results.json, report.md and PNGs into --out.")
    q.add_argument("--quick", action="store_true", help="a much smaller setting (for tests and CI), not the report's")
