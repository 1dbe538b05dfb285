"""The balance of INFER's objective, measured (issue 18): r_bn x T, class evidence and students at equal steps.

    python bench/bench_sweep.py --workload cifar10 --data DIR \\
        --teacher-files ../shared/data/weights/cifar10-resnet/resnet{20,32}-*.th \\
        --r-bn 1 0.1 0.01 0 --iterations 100 300 1000 --students-at 1000 --epochs 100 --student-width 0.25 \\
        --json sweep.json --png sweep.png

For every r_bn, T and seed, one ``--method infer`` (or ``sre2l``) distillation and its class evidence as ``distill``
measures it (teacher ensemble, un-augmented: top-1 and mean true-class probability of the naturals and of the
compositions or synthesised images; the iteration-0 gradient ratio |r_bn dBN| / |dCE| and cosine). At the T values
of ``--students-at`` the cell is a ``bench_quality --match steps --no-saturation`` run instead (the same
distillation, plus the method's student at infer/static's optimizer steps: static labels, sre2l dynamic ones), and
random/static runs once there as the reference at the same steps.

The choice (printed; never taken on the validation split that the tables report): the largest r_bn whose
compositions carry at least their naturals' class evidence (ensemble true-class probability at the largest T, mean
over seeds); if none does, the r_bn whose compositions lose the least (:func:`choose` says why not simply the most
evidence). The students' validation accuracy is reported beside it, not used for it.

Cells reuse their folders (``--cache``): a sweep resumes where it stopped, and a cell whose r_bn is the distill
default of the data for the method (synth.config: 1 for small images, the measured 0 for INFER with more than
100 classes) shares the folder of a plain ``bench_quality`` run at the same settings
(that run passes no ``--r-bn``), so the main table's distillations and random students are not paid twice.
Records (common.record): one per cell and seed, metric ``evidence_composed`` with ``evidence_natural``, top-1 of
the compositions and naturals, the gradient figures and, at student cells, ``top1`` and ``student_steps``.
"""

from __future__ import annotations

import argparse
import os
import statistics

import bench_quality as bq
from common import Stats, git_commit, markdown_table, record, write_json

from infer_fast.data import dataset_info
from infer_fast.runtime import cache_root, json_key
from infer_fast.synth.config import DistillConfig


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", choices=sorted(bq.WORKLOADS), default="cifar10")
    p.add_argument("--data", help="the workload's tarball or an extracted root (default: the shared data folder)")
    p.add_argument("--cache", help="cache folder (default: infer_fast's cache)")
    p.add_argument("--teacher-files", nargs="+", metavar="PATH", help="teacher checkpoints (default: the workload's)")
    p.add_argument("--method", choices=("infer", "sre2l"), default="infer",
                   help="the method swept (sre2l: its students use its relabel protocol, dynamic labels)")
    p.add_argument("--r-bn", type=float, nargs="+", default=[1.0, 0.1, 0.01, 0.0], help="BN-matching weights")
    p.add_argument("--iterations", type=int, nargs="+", default=[100, 300, 1000], help="synthesis iterations T")
    p.add_argument("--students-at", type=int, nargs="*", default=None,
                   help="T values whose cells also train the student at equal steps (default: the largest T)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--epochs", type=int, help="student epochs of infer/static (sets the equal steps)")
    p.add_argument("--student", help="student architecture (default: the workload's)")
    p.add_argument("--student-width", type=float, help="student width (default: the workload's)")
    p.add_argument("--eval-points", type=int, default=2)
    p.add_argument("--json", metavar="PATH", help="write the per-cell records as a JSON list")
    p.add_argument("--png", metavar="PATH", help="write the sweep figure (default: <sweep folder>/sweep.png)")
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)
    if a.students_at is None:
        a.students_at = [max(a.iterations)]
    if any(r < 0 for r in a.r_bn) or any(t < 1 for t in a.iterations):
        p.error("--r-bn must be >= 0 and --iterations >= 1")
    return a


def _quality_argv(a, r_bn: float, iterations: int, methods: list[str]) -> list[str]:
    argv = ["--workload", a.workload, "--iterations", str(iterations), "--ipc", str(a.ipc), "--eval-points",
            str(a.eval_points), "--seeds", *map(str, a.seeds), "--methods", *methods, "--match", "steps",
            "--no-saturation", "--resume", "--device", a.device]
    for flag, value in (("--data", a.data), ("--cache", a.cache), ("--epochs", a.epochs), ("--student", a.student),
                        ("--student-width", a.student_width)):
        if value is not None:
            argv += [flag, str(value)]
    if a.teacher_files:
        argv += ["--teacher-files", *a.teacher_files]
    # the data's default r_bn for this method (known once the data is: main sets it) shares bench_quality's folder
    if r_bn != getattr(a, "default_r_bn", None):
        argv += ["--r-bn", str(r_bn)]
    return argv


def _evidence_fields(evidence: dict) -> dict:
    nat, comp = (evidence.get(g) or {} for g in ("natural", "composed"))
    losses = evidence.get("losses") or {}
    return {**bq.evidence_fields(evidence),
            "top1_natural": nat.get("ensemble", {}).get("top1"), "top1_composed": comp.get("ensemble", {}).get("top1"),
            "grad_ratio_bn_ce": losses.get("grad_ratio_bn_ce"), "grad_cos": losses.get("grad_cos"),
            "ce_last": losses.get("ce_last"), "bn_last": losses.get("bn_last")}


def _distill_only(a, root: str, tpaths: list[str], sweep_dir: str, r_bn: float, iterations: int, seed: int) -> dict:
    from infer_fast.distilled import load_distilled
    from infer_fast.synth.runner import run_distill

    out = os.path.join(sweep_dir, f"{a.method}-r{r_bn:g}-T{iterations}-seed{seed}")
    w = bq.WORKLOADS[a.workload]["settings"]
    run_distill(DistillConfig(data=root, teachers=tpaths, method=a.method, ipc=a.ipc, iterations=iterations,
                              seed=seed, out=out, device=a.device, resume=True, r_bn=r_bn,
                              image_size=w.get("image_size"), jitter=w.get("jitter")))
    return load_distilled(out).manifest.evidence or {}


def choose(rows: list[dict]) -> tuple[float, str]:
    """(r_bn, why): the largest r_bn whose compositions carry at least their naturals' class evidence (ensemble
    true-class probability, mean over seeds, at the largest T); if none does, the r_bn whose compositions carry the
    most. Not simply the most evidence: u is optimised against these teachers' CE, so r_bn = 0 maximises their
    confidence by construction; BN matching is INFER's pull towards natural statistics, lowered only as far as the
    compositions need to keep their class."""
    top = max(r["iterations"] for r in rows)
    comp: dict[float, list[float]] = {}
    nat: dict[float, list[float]] = {}
    for r in rows:
        if r["iterations"] == top and r["evidence_composed"] is not None:
            comp.setdefault(r["r_bn"], []).append(r["evidence_composed"])
            nat.setdefault(r["r_bn"], []).append(r["evidence_natural"])
    gap = {rb: statistics.fmean(comp[rb]) - statistics.fmean(nat[rb]) for rb in comp}
    keeping = [rb for rb in gap if gap[rb] >= 0]
    best = max(keeping) if keeping else max(gap, key=lambda rb: (gap[rb], rb))
    rule = "the largest r_bn whose compositions keep" if keeping else "no r_bn keeps; the most of"
    return best, (f"r_bn {best:g} ({rule} their naturals' class evidence at T = {top}; composed - natural ensemble "
                  "true-class probability: " + ", ".join(f"r_bn {rb:g} {v:+.3f}" for rb, v in
                                                          sorted(gap.items(), reverse=True)) + ")")


def plot(rows: list[dict], reference: float | None, path: str, title: str, label: str = "infer/static") -> None:
    from infer_fast.train.report import pyplot, save_figure

    plt = pyplot()

    students = [r for r in rows if r.get("top1") is not None]
    # the student panel only where students were trained (an evidence-only sweep is one panel)
    fig, axes = plt.subplots(1, 2 if students else 1, figsize=(11 if students else 6, 4), squeeze=False)
    ax1 = axes[0][0]
    for rb in sorted({r["r_bn"] for r in rows}, reverse=True):
        pts = sorted((r["iterations"], r["evidence_composed"]) for r in rows if r["r_bn"] == rb)
        ts = sorted({t for t, _ in pts})
        ax1.plot(ts, [statistics.fmean(v for t2, v in pts if t2 == t) for t in ts], marker="o", label=f"r_bn {rb:g}")
    nat = statistics.fmean(r["evidence_natural"] for r in rows if r["evidence_natural"] is not None)
    ax1.axhline(nat, color="k", ls="--", label="naturals")
    ax1.set(xscale="log", xlabel="synthesis iterations T", ylabel="ensemble true-class probability",
            title="class evidence of the compositions")
    ax1.legend(fontsize=8)
    if students:
        ax2 = axes[0][1]
        rbs = sorted({r["r_bn"] for r in students}, reverse=True)
        means = [statistics.fmean(r["top1"] for r in students if r["r_bn"] == rb) for rb in rbs]
        ax2.plot(range(len(rbs)), means, marker="o", label=label)
        ax2.set_xticks(range(len(rbs)), [f"{rb:g}" for rb in rbs])
        if reference is not None:
            ax2.axhline(reference, color="k", ls="--", label="random/static")
        ax2.set(xlabel="r_bn", ylabel="student top-1 (%)", title=f"students at {students[0]['student_steps']} steps")
        ax2.legend(fontsize=8)
    fig.suptitle(title)
    save_figure(fig, path, dpi=110)


def main(argv=None) -> list[dict]:
    from infer_fast.distilled import load_distilled

    a = parse_args(argv)
    from infer_fast.synth import methods as synth_methods

    spec = f"{a.method}/" + ("dynamic" if synth_methods.get(a.method).relabels else "static")
    qa = bq.parse_args(_quality_argv(a, a.r_bn[0], a.iterations[0], [spec]))
    root = bq.data_root(qa)
    tpaths = bq.teachers(qa, root)
    info = dataset_info(root, image_size=qa.image_size)
    a.default_r_bn = DistillConfig(data=root, method=a.method).defaults(info.small, len(info.classes))["r_bn"][0]
    key = json_key({"workload": a.workload, "ipc": a.ipc, "teachers": [os.path.basename(t) for t in tpaths]})[:12]
    sweep_dir = os.path.join(a.cache or cache_root("bench_quality"), "sweep", f"{a.workload}-{key}")
    os.makedirs(sweep_dir, exist_ok=True)
    rows, reference = [], None
    first = True
    for iterations in a.iterations:
        for r_bn in a.r_bn:
            if iterations in a.students_at:
                methods = [spec] + (["random/static"] if first else [])
                first = False
                for rec in bq.main(_quality_argv(a, r_bn, iterations, methods)):
                    if rec["method"] == "random":
                        reference = rec["top1"] if reference is None else reference
                    if rec["method"] != a.method:
                        continue
                    ev = load_distilled(rec["distilled"]).manifest.evidence or {}
                    rows.append({"r_bn": r_bn, "iterations": iterations, "seed": rec["seed"], "top1": rec["top1"],
                                 "student_steps": rec["student_steps"], **_evidence_fields(ev)})
            else:
                for seed in a.seeds:
                    ev = _distill_only(a, root, tpaths, sweep_dir, r_bn, iterations, seed)
                    rows.append({"r_bn": r_bn, "iterations": iterations, "seed": seed, "top1": None,
                                 "student_steps": None, **_evidence_fields(ev)})
    best, why = choose(rows)
    cols = ["r_bn", "iterations", "seed", "evidence_natural", "evidence_composed", "top1_natural", "top1_composed",
            "evidence_natural_own", "evidence_own", "evidence_natural_other", "evidence_other",
            "grad_ratio_bn_ce", "grad_cos", "top1", "student_steps"]
    print(markdown_table(rows, cols))
    if reference is not None:
        print(f"bench_sweep: random/static at the same steps: {reference:.2f} % top-1 (seed {a.seeds[0]})")
    print(f"bench_sweep: choice {why}; commit {git_commit()}")
    png = a.png or os.path.join(sweep_dir, f"sweep-{a.method}.png")
    names = ", ".join(os.path.basename(t) for t in tpaths)
    plot(rows, reference, png, f"{a.method}, {a.workload} ipc {a.ipc}, teachers {names}", label=spec)
    print(f"bench_sweep: figure {png}")
    records = [record("sweep", a.method, f"r_bn={r['r_bn']:g}", "evidence_composed", "true-class probability",
                      "iterations", r["iterations"], Stats.of([r["evidence_composed"] or 0.0]), a.device,
                      workload=a.workload, chosen_r_bn=best, random_top1=reference, **r) for r in rows]
    write_json(a.json, records)
    return records


if __name__ == "__main__":
    main()
