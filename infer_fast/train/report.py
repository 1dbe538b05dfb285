"""What a student run reports: validation accuracy, the accuracy curves, and the final summary and weights."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn

from infer_fast.models.evaluate import accuracy_counts
from infer_fast.runtime import atomic_save_safetensors, atomic_write_text, atomic_write_with
from infer_fast.train.checkpoint import unwrap
from infer_fast.train.state import StudentRun


def evaluate_model(model: nn.Module, loader: Iterable, device: torch.device, topk5: bool) -> dict[str, float]:
    """Top-1 (and top-5) accuracy in percent over ``loader``; counts are summed over DDP ranks."""
    counts = accuracy_counts(model, loader, device, all_ranks=True)
    if counts[2] == 0:
        raise ValueError("validation loader yielded no images")
    out = {"top1": float(100.0 * counts[0] / counts[2]), "val_images": int(counts[2])}
    if topk5:
        out["top5"] = float(100.0 * counts[1] / counts[2])
    return out


_COMPUTE = re.compile(r"\s*\b\d+(?:\.\d+)?x\b")  # "1x", "2x": a compute budget within a curve's name
_STYLES = ("-", "--", ":", "-.")


def curve_styles(names: list[str]) -> list[tuple[str, str]]:
    """(colour, line style) per curve: names that differ only by a compute budget ("infer/static 1x" and
    "infer/static 2x") share a colour and differ in line style, so one method reads as one colour; past the 10
    colours of the default cycle the styles shift, so that no two curves look alike."""
    groups: dict[str, int] = {}
    seen: dict[str, int] = {}
    out = []
    for name in names:
        key = _COMPUTE.sub("", name)
        g = groups.setdefault(key, len(groups))
        within = seen[key] = seen.get(key, -1) + 1
        out.append((f"C{g % 10}", _STYLES[(within + g // 10) % len(_STYLES)]))
    return out


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend: every figure here goes to a file, and these machines have no
    display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str, dpi: float | None = None) -> None:
    """Lay ``fig`` out tightly, write it to ``path`` as a PNG atomically (at ``dpi``, else the figure's own) and
    close it, also when the write fails."""
    try:
        fig.tight_layout()
        atomic_write_with(path, lambda buf: fig.savefig(buf, format="png", dpi=dpi))
    finally:
        pyplot().close(fig)


def plot_curves(curves: dict[str, list[tuple[int, float]]], path: str, title: str = "student validation top-1",
                xlabel: str = "epoch") -> None:
    """Accuracy curves as a PNG (matplotlib Agg, written atomically); x: epochs unless ``xlabel`` says otherwise."""
    plt = pyplot()
    many = len(curves) > 4  # the legend goes beside the axes, where it cannot hide the curves
    fig, ax = plt.subplots(figsize=(9 if many else 6, 4), dpi=110)
    for (name, pts), (colour, ls) in zip(curves.items(), curve_styles(list(curves)), strict=True):
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=name, color=colour,
                    ls=ls)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend(**({"fontsize": 8, "loc": "center left", "bbox_to_anchor": (1.01, 0.5)} if many else {}))
    save_figure(fig, path)


def finish(run: StudentRun, history: list[dict], wall: float) -> dict[str, Any]:
    """The summary of a finished run; rank 0 writes student.safetensors, accuracy.png and summary.json."""
    cfg, out, model, rank, method = run.cfg, run.out, run.model, run.ctx.rank, run.method
    epochs, steps, n, n_cls = run.epochs, run.total_steps, run.n, run.num_classes
    evals = [r for r in history if "top1" in r]
    final = evals[-1] if evals else {}
    best = max(evals, key=lambda r: r["top1"]) if evals else {}
    summary = {
        "method": method, "labels": cfg.labels, "student": cfg.student, "width": cfg.width, "epochs": epochs,
        "student_steps": steps, "batch_size": cfg.batch_size, "synthetic_images": n, "classes": n_cls,
        "top1": final.get("top1"), "top5": final.get("top5"),
        "best_top1_selected_on_val": best.get("top1"), "best_epoch": best.get("epoch"),
        "wall_time_s": wall, "out": out,
        # what distill measured of the set's images (class evidence, synthesis losses), beside the accuracy
        "evidence": getattr(getattr(run.dataset, "manifest", None), "evidence", None),
        # the set's natural images that are files of the validation split (None: not told, e.g. the digits)
        "val_overlap": run.val_overlap,
    }
    if rank == 0:
        atomic_save_safetensors(os.path.join(out, "student.safetensors"), unwrap(model).state_dict(),
                                metadata={"arch": cfg.student, "num_classes": str(n_cls), "method": method,
                                          "labels": cfg.labels, "top1": str(summary["top1"])})
        plot_curves({f"{method} ({cfg.labels})": [(r["epoch"], r["top1"]) for r in evals]},
                    os.path.join(out, "accuracy.png"))
        atomic_write_text(os.path.join(out, "summary.json"), json.dumps(summary, indent=1))
        top5 = f" top5={summary['top5']:.2f}%" if summary["top5"] is not None else ""
        print(f"evaluate: {method} labels={cfg.labels} student={cfg.student} epochs={epochs} steps={steps} images={n} "
              f"top1={summary['top1']:.2f}%{top5} (best {summary['best_top1_selected_on_val']:.2f}% at epoch "
              f"{summary['best_epoch']}, selected on val) time={wall:.1f}s -> {out}", flush=True)
    return summary
