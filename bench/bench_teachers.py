"""Teachers and their ensembles on a validation split: which files to distil from (issue 18).

    python bench/bench_teachers.py --data DIR/tiny-imagenet-32 bench/teachers/tiny200/*.safetensors \\
        --json teachers.json
    python bench/bench_teachers.py --on DISTILLED_DIR bench/teachers/tiny200/*.safetensors   # on a set's images

For every teacher file and every ensemble of two or more of them (the mean of their logits, the rule of the soft
labels, ``infer_fast.labels.TeacherEnsemble``): val top-1 and the mean true-class probability over the whole
evaluation split, from one forward per teacher and image (the ensembles reuse the logits). Teachers trained with
other statistics or at another input size are re-normalised or resized as the ensemble does for distillation.
Beside them, what the soft labels are made of: per teacher the spread of its logits (``logit_sd``, the per-image
standard deviation over classes, mean over images) and how far the true class stands out (``true_class_z``, the
true class's centred logit in those units); per ensemble how much its members agree (``agreement``, the per-image
cosine of their centred logits, mean over images and member pairs).

``--on DIR`` scores the teachers on a distilled set's un-augmented images instead (``DistilledDataset.compose``,
naturals and compositions, each labelled with its natural's class): the inputs the static labels were computed on.

With ``--data`` this reads the validation split, so it is a report on the teachers, never a choice of settings for
the tables (issue 18: choices come from held-out training images or class evidence). Records (common.record): one
per teacher or ensemble, metric ``top1`` (percent, a single exact figure: samples = 1) with ``true_class_prob``,
``members``, ``images`` and ``logit_sd`` / ``true_class_z`` (one teacher) or ``agreement`` (an ensemble).
"""

from __future__ import annotations

import itertools
import os
import sys

import torch
from common import Stats, base_parser, markdown_table, record, write_json
from tqdm import tqdm

from infer_fast.data import dataset_info, make_loader
from infer_fast.labels import TeacherEnsemble, load_ensemble
from infer_fast.synth.evidence import EvidenceMeter


def member_logits(ensemble: TeacherEnsemble, loader, desc: str = "teachers on val"
                  ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every member's float32 logits over the whole ``loader`` (any iterable of ``(images, labels)`` batches) and
    the labels (one forward per teacher and image)."""
    each: list[list[torch.Tensor]] = [[] for _ in ensemble.models]
    labels = []
    for images, y in tqdm(loader, desc=desc, unit="batch"):
        for i, logits in enumerate(ensemble.each(images)):
            each[i].append(logits.cpu())
        labels.append(y.cpu())
    return [torch.cat(e) for e in each], torch.cat(labels)


def logit_stats(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(mean per-image sd of the logits over classes, mean true-class z-score in those units) of one teacher."""
    centred = logits - logits.mean(1, keepdim=True)
    sd = centred.std(1).clamp_min(1e-12)
    return float(sd.mean()), float((centred.gather(1, labels[:, None]).squeeze(1) / sd).mean())


def agreement(each: list[torch.Tensor], members: tuple[int, ...]) -> float:
    """Mean over images and member pairs of the cosine between two members' centred logits (1: the same ranking
    and spacing of the classes; 0: unrelated)."""
    centred = [each[i] - each[i].mean(1, keepdim=True) for i in members]
    pairs = [torch.nn.functional.cosine_similarity(a, b, dim=1).mean() for a, b in itertools.combinations(centred, 2)]
    return float(torch.stack(pairs).mean())


def set_batches(ds, batch_size: int, device: torch.device):
    """``(un-augmented images, hard labels)`` batches of a distilled set, naturals and compositions."""
    for start in range(0, len(ds), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(ds)))
        yield ds.compose(idx, device), ds.hard_labels[idx]


def scores(each: list[torch.Tensor], labels: torch.Tensor, members: tuple[int, ...]) -> tuple[float, float]:
    """(top-1 %, mean true-class probability) of the mean logits of ``members``: the ensemble figures of
    :class:`~infer_fast.synth.evidence.EvidenceMeter`, the class evidence every ``distill`` reports."""
    meter = EvidenceMeter(len(members))
    meter.add("natural", [each[i] for i in members], labels)
    fig = meter.summary()["natural"]["ensemble"]
    return 100.0 * fig["top1"], fig["true_prob"]


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("teachers", nargs="+", metavar="FILE", help="teacher files (any load_teacher reads)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--data", metavar="ROOT|digits", help="dataset root with a val/ (or test/) split")
    where.add_argument("--on", metavar="DIR", help="a distilled set (infer-fast distill --out): score the teachers on "
                       "its un-augmented images, each labelled with its natural's class")
    p.add_argument("--image-size", type=int, default=None, help="evaluation size with --data (default: the dataset's)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--max-members", type=int, default=3, help="largest ensemble evaluated")
    args = p.parse_args(argv)
    missing = [f for f in args.teachers if not os.path.isfile(f)]
    if missing:
        print(f"bench_teachers: error: teacher file(s) not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.on:
        from infer_fast.distilled import load_distilled

        try:
            ds = load_distilled(args.on)
        except (OSError, ValueError) as e:
            print(f"bench_teachers: error: --on {args.on}: not a distilled set ({e})", file=sys.stderr)
            return 2
        ensemble = load_ensemble(args.teachers, ds, device)
        each, labels = member_logits(ensemble, set_batches(ds, args.batch_size, device), "teachers on the set")
        split = os.path.basename(os.path.normpath(args.on))
    else:
        info = dataset_info(args.data, image_size=args.image_size)
        loader = make_loader(args.data, "eval", batch_size=args.batch_size, loader="torch", num_workers=1,
                             image_size=info.image_size, device=device)
        ensemble = load_ensemble(args.teachers, info, device)
        each, labels = member_logits(ensemble, loader)
        split = os.path.basename(os.path.normpath(args.data))
    names = [os.path.basename(f).removesuffix(".safetensors") for f in args.teachers]
    rows = []
    for size in range(1, min(args.max_members, len(names)) + 1):
        for members in itertools.combinations(range(len(names)), size):
            top1, prob = scores(each, labels, members)
            if size == 1:
                sd, z = logit_stats(each[members[0]], labels)
                extra = {"logit_sd": round(sd, 3), "true_class_z": round(z, 3)}
            else:
                extra = {"agreement": round(agreement(each, members), 4)}
            rows.append(record("teacher_ensemble", " + ".join(names[i] for i in members),
                               "set" if args.on else "eval", "top1", "%", "set" if args.on else "data", split,
                               Stats.of([top1]), args.device, true_class_prob=round(prob, 4),
                               members=[names[i] for i in members], images=len(labels), **extra))
    print(markdown_table([{**r, "top1": r["p50"]} for r in rows],
                         ["provider", "top1", "true_class_prob", "logit_sd", "true_class_z", "agreement", "images"]))
    write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
