"""Student accuracy against the class evidence of the set it trained on, from bench_quality's records.

    python bench/plot_evidence.py tiny200-*.json --judged judged/*.json --out evidence-vs-student.png

Each bench_quality record (one student: ``--json`` of ``bench/bench_quality.py``) is one point: x is the mean
true-class probability of the set's composed images (of its naturals where it has none, e.g. ``random``), y the
student's final top-1. The left panel takes x from the set's teachers (the record's ``evidence_composed``), the right
one from judges that took no part in the synthesis: the record's ``evidence_judged_composed`` (``bench_quality
--judges``) or an ``infer-fast evidence --json`` file whose ``directory`` is the record's set (``--judged``). Colour
is the method (with its r_bn, and its synthesis iterations T where the records mix several), the marker the
student's labels; records of another ``compute`` than ``--compute`` (default 1x, the equal-steps point) are left
out, and a record found in several files counts once. Prints one line per point; the PNG is written atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

MARKERS = {"static": "o", "dynamic": "^", "hard": "x"}


def _read(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"plot_evidence: {path}: not a readable JSON file ({exc})") from None


def _r_bn(method: str, settings: dict):
    """The r_bn a record's set was made with: the flag's, else the measured default bench_quality recorded (for the
    method, or INFER's for the content controls that take its settings: the registry's ``measured_r_bn``); None
    where the paper's applied."""
    if settings.get("r_bn") is not None:
        return settings["r_bn"]
    measured = settings.get("default_r_bn") or {}
    if method in measured:
        return measured[method]
    from infer_fast.synth import methods

    try:
        takes_measured = methods.get(method).measured_r_bn
    except ValueError:  # a method this version does not know: the paper's value is all that can be said
        return None
    return measured.get("infer") if takes_measured else None


def points(records: list[dict], judged: list[dict], compute: str = "1x") -> list[dict]:
    """One dict per record of ``compute`` with a top-1: ``name`` (method, r_bn where set), ``labels``, ``seed``,
    ``top1``, ``teachers`` and ``judged`` (x of each panel; None where not measured)."""
    by_dir = {os.path.realpath(j["directory"]): j for j in judged if j.get("directory")}
    # one point per student: the same record in several files (a resumed benchmark's JSON) counts once, the last
    unique = {(r.get("distilled"), r.get("method"), r.get("labels"), r.get("compute"), r.get("seed")): r
              for r in records}
    kept = [r for r in unique.values() if r.get("top1") is not None and r.get("compute", "1x") == compute]
    # the synthesis's iteration count joins the name only where the records mix several (T = 100 and 1000 sets)
    many_t = len({(r.get("settings") or {}).get("iterations") for r in kept if r["method"] != "random"}) > 1
    out = []
    for r in kept:
        settings, synthesised = r.get("settings") or {}, r["method"] != "random"
        j = by_dir.get(os.path.realpath(r.get("distilled") or ""))
        group = "composed" if r.get("evidence_composed") is not None else "natural"
        x_judged = r.get(f"evidence_judged_{group}")
        if x_judged is None and j is not None and j.get(group):
            x_judged = j[group]["ensemble"]["true_prob"]
        r_bn = _r_bn(r["method"], settings)
        name = r["method"] + (f" r_bn {r_bn:g}" if r_bn is not None and synthesised else "")
        if many_t and settings.get("iterations") is not None and synthesised:
            name += f" T {settings['iterations']}"
        out.append({"name": name, "labels": r.get("labels", "static"), "seed": r.get("seed"), "top1": r["top1"],
                    "teachers": r.get(f"evidence_{group}"), "judged": x_judged, "natural_only": group == "natural"})
    return out


def plot(pts: list[dict], path: str, title: str) -> list[str]:
    """Writes the figure: a panel per evidence source that some point has (no empty judges' panel); returns their
    keys."""
    from infer_fast.train.report import pyplot, save_figure

    plt = pyplot()

    names = sorted({p["name"] for p in pts})
    colour = {n: f"C{i % 10}" for i, n in enumerate(names)}
    sources = (("teachers", "the set's teachers"), ("judged", "held-out judges"))
    panels = [(key, label) for key, label in sources if any(p[key] is not None for p in pts)] or list(sources[:1])
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), sharey=True, squeeze=False)
    axes = list(axes[0])
    for ax, (key, label) in zip(axes, panels, strict=True):
        for n in names:
            for labels, marker in MARKERS.items():
                sel = [p for p in pts if p["name"] == n and p["labels"] == labels and p[key] is not None]
                if sel:
                    ax.scatter([p[key] for p in sel], [p["top1"] for p in sel], color=colour[n], marker=marker,
                               label=f"{n} / {labels}")
        ax.set(xlabel=f"true-class probability of the composed images ({label})", title=label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("student top-1 (%)")
    legend = {}  # every method / labels pair once, from whichever panel shows it
    for ax in axes:
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(text, handle)
    if legend:
        axes[-1].legend(legend.values(), legend.keys(), fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle(title)
    save_figure(fig, path, dpi=110)
    return [key for key, _ in panels]


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("records", nargs="+", help="bench_quality --json files")
    p.add_argument("--judged", nargs="*", default=[], help="infer-fast evidence --json files (matched by set)")
    p.add_argument("--compute", default="1x", help="which students: 1x (equal steps, default), 2x, epochs")
    p.add_argument("--title", default="student top-1 against the class evidence of its set")
    p.add_argument("--out", required=True, help="the PNG to write")
    a = p.parse_args(argv)
    records = [r for f in a.records for r in _read(f)]
    pts = points(records, [_read(f) for f in a.judged], a.compute)
    if not pts:
        raise SystemExit(f"plot_evidence: no record with compute {a.compute!r} and a top-1 in {', '.join(a.records)}")
    for q in sorted(pts, key=lambda q: (q["name"], q["labels"], q["seed"] if q["seed"] is not None else -1)):
        ev = " / ".join("-" if q[k] is None else f"{q[k]:.3f}" for k in ("teachers", "judged"))
        print(f"plot_evidence: {q['name']} / {q['labels']} seed {q['seed']}: top-1 {q['top1']:.2f} %, evidence "
              f"(teachers / judged) {ev}" + (" (naturals)" if q["natural_only"] else ""))
    panels = plot(pts, a.out, a.title)
    print(f"plot_evidence: {len(pts)} students (evidence of {' and '.join(panels)}) -> {a.out}")
    return pts


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:
        sys.exit(1)
