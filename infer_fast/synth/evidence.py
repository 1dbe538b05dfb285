"""Class evidence: how much of its class each image of a distilled set still carries, under the teachers.

INFER's premise (spec section 1) is that a compensator turns every natural image into an extra image that keeps its
class. This module measures that on what ``distill`` made, un-augmented, with one forward per image per teacher (the
pass that computes the static labels): per teacher and for the ensemble (the mean logits, the static labels' rule),
top-1 and the mean probability of the image's own class, on the naturals and on the composed (INFER) or synthesised
(sre2l) images. A set whose composed images carry less than their naturals gets a one-line warning: its extra images
are extra teacher-labelled views, not extra class evidence.

INFER optimises each compensator u_{k,m} against one teacher m, and the ensemble judges x + u_{k,m} with all of them,
so the composed figures are also split by the teacher whose u made the image (``composed_by_ufc``): ``own`` is what
the optimisation can promise (teacher m on x + u_{k,m}), ``other`` what transfers to the rest of the ensemble (on
Tiny-ImageNet-32 at low r_bn ``own`` rises while ``other`` and the ensemble fall: README, "The balance of the
objective").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

GROUPS = ("natural", "composed")


class EvidenceMeter:
    """Accumulates top-1 hits and true-class probabilities per group, per teacher and for the ensemble."""

    def __init__(self, num_teachers: int) -> None:
        if num_teachers < 1:
            raise ValueError(f"EvidenceMeter: num_teachers must be >= 1, got {num_teachers}")
        self.num_teachers = int(num_teachers)
        # per group: rows = teachers then the ensemble; columns = top-1 hits, sum of true-class probability, images
        self._sums = {g: torch.zeros(num_teachers + 1, 3, dtype=torch.float64) for g in GROUPS}
        # composed images by the teacher m whose compensator made them: {m: the same [teachers + 1, 3] sums}
        self._by_ufc: dict[int, torch.Tensor] = {}

    @staticmethod
    def _per_image(logits: Sequence[torch.Tensor], t: torch.Tensor) -> torch.Tensor:
        """float64 [teachers + 1, B, 2] on CPU (one copy per batch): each image's top-1 hit and true-class probability
        under each teacher's logits and under the ensemble (their mean)."""
        z = torch.stack([y.float() for y in logits])
        z = torch.cat([z, z.mean(0, keepdim=True)])  # [R, B, C]
        tt = t.view(1, -1, 1).expand(z.shape[0], -1, 1)
        hits = (z.argmax(2, keepdim=True) == tt).double()
        prob = torch.softmax(z, dim=2).gather(2, tt).double()
        return torch.cat([hits, prob], 2).cpu()

    @staticmethod
    def _pool(per: torch.Tensor) -> torch.Tensor:
        """[teachers + 1, 3]: hits, summed true-class probability and images of ``per`` [teachers + 1, B, 2]."""
        return torch.cat([per.sum(1), torch.full((per.shape[0], 1), float(per.shape[1]), dtype=per.dtype)], 1)

    def add(self, group: str, logits: Sequence[torch.Tensor], targets: torch.Tensor,
            ufc_teacher: torch.Tensor | None = None) -> None:
        """One batch of ``group``: each teacher's logits [B, C] (the ensemble is their mean) and the classes [B];
        for "composed", ``ufc_teacher`` [B] (int, optional) names the teacher whose compensator made each image (-1:
        none, e.g. a stored view)."""
        if group not in GROUPS:
            raise ValueError(f"EvidenceMeter.add: group must be one of {GROUPS}, got {group!r}")
        if len(logits) != self.num_teachers:
            raise ValueError(f"EvidenceMeter.add: expected {self.num_teachers} teachers' logits, got {len(logits)}")
        if targets.numel() == 0:
            return
        split = group == "composed" and ufc_teacher is not None
        if split and ufc_teacher.numel() != targets.numel():
            raise ValueError(f"EvidenceMeter.add: ufc_teacher has {ufc_teacher.numel()} entries for "
                             f"{targets.numel()} images")
        per = self._per_image(logits, targets.to(logits[0].device, torch.int64).view(-1))
        self._sums[group] += self._pool(per)
        if split:
            src = ufc_teacher.reshape(-1).to("cpu", torch.int64)
            for m in src[src >= 0].unique().tolist():
                sums = self._by_ufc.setdefault(int(m), torch.zeros(self.num_teachers + 1, 3, dtype=torch.float64))
                sums += self._pool(per[:, src == m])

    @staticmethod
    def _rate(s: torch.Tensor) -> dict:
        """``{"top1", "true_prob"}`` of one row of sums (hits, summed true-class probability, images)."""
        return {"top1": float(s[0] / s[2]), "true_prob": float(s[1] / s[2])}

    @staticmethod
    def _group(s: torch.Tensor) -> dict | None:
        n = float(s[0, 2])
        if n == 0:
            return None
        figs = [EvidenceMeter._rate(r) for r in s]
        return {"images": int(n), "ensemble": figs[-1], "teachers": figs[:-1]}

    def summary(self) -> dict:
        """``{group: {"images", "ensemble": {"top1", "true_prob"}, "teachers": [{"top1", "true_prob"}, ...]}}`` for
        each group that saw images (top-1 as a fraction), plus ``composed_minus_natural`` (ensemble) when both did.

        Where the composed images were added with ``ufc_teacher`` and more than one teacher judges them, also
        ``composed_by_ufc``: ``groups`` (one such dict per compensator teacher m, in order), ``own`` (teacher m on the
        images of u_m, pooled over m) and ``other`` (the other teachers on them), each ``{"top1", "true_prob"}``;
        with the naturals, ``natural_own`` / ``natural_other`` (the same teacher pairs on the naturals, weighted by
        the images of each u_m: the baseline ``own`` and ``other`` move from)."""
        out: dict = {}
        for g, s in self._sums.items():
            fig = self._group(s)
            if fig is not None:
                out[g] = fig
        if all(g in out for g in GROUPS):
            nat, comp = out["natural"]["ensemble"], out["composed"]["ensemble"]
            out["composed_minus_natural"] = {k: comp[k] - nat[k] for k in ("top1", "true_prob")}
        ms = sorted(self._by_ufc)
        if ms and self.num_teachers > 1 and ms[-1] < self.num_teachers:
            own, other = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
            for m in ms:
                s = self._by_ufc[m][:-1]
                own += s[m]
                other += s.sum(0) - s[m]
            by = {"groups": [self._group(self._by_ufc[m]) | {"ufc_teacher": m} for m in ms],
                  "own": self._rate(own), "other": self._rate(other)}
            nat = self._sums["natural"][:-1]
            if float(nat[0, 2]) > 0:
                # the naturals under the same (u_m's teacher, judge) pairs, weighted by the images of each u_m. Where
                # every natural is composed with every u_m (INFER and its controls) the weights are equal and both
                # come to the mean over teachers of their figures on the naturals: one baseline for own and other.
                w = torch.tensor([float(self._by_ufc[m][0, 2]) for m in ms], dtype=torch.float64).view(-1, 1)
                rates = nat[:, :2] / nat[:, 2:]  # [teachers, 2] on the naturals
                own_nat = rates[ms]
                other_nat = (rates.sum(0) - own_nat) / (self.num_teachers - 1)
                by["natural_own"], by["natural_other"] = (
                    self._rate(torch.cat([(w * r).sum(0), w.sum(0)])) for r in (own_nat, other_nat))
            out["composed_by_ufc"] = by
        return out


def loss_summary(rows: Sequence[dict]) -> dict | None:
    """Mean over problems of the CE and BN losses at the first and last iteration (the runner's metrics rows), and
    of the initial gradient figures where the rows carry them: |dCE/dp|, |r_bn dBN/dp| and the cosine; their ratio
    as the ratio of those means (a mean of per-problem ratios is one problem's: a set whose naturals the teacher
    already classifies has |dCE| near 0, and one such problem read 663 where the others read 7.5)."""
    if not rows:
        return None
    keys = [k for k in ("ce_first", "ce_last", "bn_first", "bn_last", "grad_ce", "grad_bn", "grad_cos")
            if k in rows[0]]
    out = {k: sum(float(r[k]) for r in rows) / len(rows) for k in keys} | {"problems": len(rows)}
    if "grad_ce" in out and "grad_bn" in out:
        out["grad_ratio_bn_ce"] = out["grad_bn"] / out["grad_ce"] if out["grad_ce"] > 0 else float("inf")
    return out


# A composed set warns when its ensemble true-class probability is below its naturals' by more than this: a drop of
# a few thousandths is sampling noise over a few hundred images (a set of fixed views read -0.001 on CIFAR-10).
WARN_MARGIN = 0.01
R_BN_HINT = "the BN term may dominate the objective (lower --r-bn, see the README's 'Class evidence')"


def _cause(evidence: dict, hint: str | None) -> str | None:
    """The BN hint where the figures point elsewhere: compensators whose own teacher gains while the other teachers
    lose (Tiny-ImageNet-32 at r_bn 0 and 0.01 as T grows) lose transfer, not to the BN term; and at r_bn 0 (an
    initial |r_bn dBN| of 0) the BN term cannot be the cause."""
    if hint != R_BN_HINT:
        return hint
    by = evidence.get("composed_by_ufc") or {}
    if "natural_own" in by:
        own, other = (by[k]["true_prob"] for k in ("own", "other"))
        own_nat, other_nat = (by[k]["true_prob"] for k in ("natural_own", "natural_other"))
        if own >= own_nat and other < other_nat:
            return (f"each compensator serves its own teacher (true-class p {own_nat:.3f} -> {own:.3f}) and not the "
                    f"others ({other_nat:.3f} -> {other:.3f}): the ensemble loses transfer between teachers, not to "
                    "the BN term (fewer --iterations keep more; see the README's 'The balance of the objective')")
    if (evidence.get("losses") or {}).get("grad_ratio_bn_ce") == 0:
        return None  # r_bn 0: no BN term in the objective
    return hint


def describe(evidence: dict, hint: str | None = R_BN_HINT,
             judged_by: str = "teacher ensemble") -> tuple[str, str | None]:
    """(one summary line, one warning line or None) for a distilled set's evidence figures; ``hint`` ends the
    warning (the method's likely cause: :attr:`~infer_fast.synth.methods.Method.evidence_hint`; the BN hint gives way
    to what the figures show, :func:`_cause`); ``judged_by`` names the networks in the line (:func:`judge`)."""
    parts = []
    for g in GROUPS:
        if g in evidence:
            e = evidence[g]["ensemble"]
            parts.append(f"{g} top-1 {e['top1']:.1%}, true-class p {e['true_prob']:.3f} ({evidence[g]['images']} "
                         "images)")
    line = f"class evidence ({judged_by}, un-augmented): " + "; ".join(parts)
    losses = evidence.get("losses") or {}
    if "grad_ratio_bn_ce" in losses:
        line += (f"; initial gradients |r_bn dBN| / |dCE| {losses['grad_ratio_bn_ce']:.3g}, cosine "
                 f"{losses['grad_cos']:+.2f}")
    by = evidence.get("composed_by_ufc") or {}
    if "natural_own" in by:
        line += (f"; by compensator teacher: own p {by['natural_own']['true_prob']:.3f} -> {by['own']['true_prob']:.3f}"
                 f", other teachers {by['natural_other']['true_prob']:.3f} -> {by['other']['true_prob']:.3f}")
    diff = evidence.get("composed_minus_natural")
    warning = None
    if diff is not None and diff["true_prob"] < -WARN_MARGIN:
        hint = _cause(evidence, hint)
        who = "ensemble" if judged_by == "teacher ensemble" else judged_by
        warning = (f"warning: the composed images carry less class evidence than their naturals ({who} "
                   f"true-class probability {diff['true_prob']:+.3f}, top-1 {diff['top1']:+.1%})"
                   + (f"; {hint}" if hint else ""))
    return line, warning


# natural images per class that a set without any (sre2l) is measured against, by distill and by judge
EVIDENCE_NATURALS = 10


def add_natural_sample(meter: EvidenceMeter, ensemble, source: str, per_class: int, seed: int, image_size: int,
                       norm, batch_size: int, device: torch.device) -> None:
    """Measure ``per_class`` fresh natural images of every class of ``source`` (seeded: ``data.sample_naturals``)
    into ``meter``'s "natural" group: the reference of a set without stored naturals (sre2l)."""
    from infer_fast import data

    sample = data.sample_naturals(source, per_class=per_class, seed=seed, image_size=image_size)
    images = norm.normalise(sample.images.reshape(-1, 3, image_size, image_size))
    targets = torch.arange(sample.images.shape[0]).repeat_interleave(per_class)
    for lo in range(0, len(images), batch_size):
        with torch.no_grad():
            each = ensemble.each(images[lo:lo + batch_size].to(device))
        meter.add("natural", each, targets[lo:lo + batch_size])


def judge(directory: str, judges: Sequence[str], device: torch.device | str = "cpu", batch_size: int = 256,
          declared: str | None = None, data: str | None = None, backend: str = "fused",
          progress: bool = True) -> dict:
    """The class evidence of the distilled set in ``directory`` under ``judges``: classifier files (any that
    ``load_teachers`` reads, e.g. teachers the set was not distilled with, or a student trained on naturals alone),
    in the figures ``distill`` records under its own teachers (:meth:`EvidenceMeter.summary`, without the split by
    compensator: a judge is not the teacher a compensator was optimised against).

    The set's own evidence asks the networks its compensators were optimised against; a judge that took no part in
    the optimisation asks whether that evidence is a property of the images or of those networks. Each judge is
    marked ``held_out`` unless its file's sha256 is one of the set's teachers'. A set without stored naturals (sre2l)
    is measured against :data:`EVIDENCE_NATURALS` fresh naturals per class of ``data`` (default: the source it was
    distilled from), seeded as its distillation was.

    Returns ``{"natural", "composed", "composed_minus_natural"}`` as in the manifest's ``evidence``, plus ``judges``
    (path, arch, val_acc, fingerprint, held_out per judge), ``teachers_evidence`` (the set's own ensemble figures,
    from its manifest, for comparison) and ``directory``."""
    from infer_fast.distilled import load_distilled
    from infer_fast.labels import TeacherEnsemble, static_labels
    from infer_fast.models import load_teachers
    from infer_fast.runtime import resolve_device
    from infer_fast.synth import methods

    if not judges:
        raise ValueError("judge: at least one judge file is needed")
    device = resolve_device(device)
    ds = load_distilled(directory, backend=backend)
    loaded = load_teachers(list(judges), ds.classes, device, declared)
    ensemble = TeacherEnsemble(loaded, ds.mean, ds.std, ds.image_size).to(device)
    meter = EvidenceMeter(len(ensemble.models))
    natural = methods.get(ds.method).natural_mask(ds)
    static_labels(ensemble, ds, batch_size, device, progress=progress, evidence=meter, natural=natural, by_ufc=False)
    if not bool(natural.any()):
        source = data or ds.data_source
        if source is None:
            from infer_fast.config_cli import ConfigError

            raise ConfigError(f"--data: {directory} stores no natural images and names no data source to take "
                              "reference naturals from; pass --data ROOT")
        cfg = ds.manifest.config or {}
        add_natural_sample(meter, ensemble, source, min(int(ds.manifest.ipc), EVIDENCE_NATURALS),
                           int(cfg.get("seed", 0)), ds.image_size, ds.norm, batch_size, device)
    out = meter.summary()
    own = set(ds.teacher_fingerprints)
    out["judges"] = [{"path": path, "arch": meta.arch, "val_acc": meta.val_acc, "fingerprint": meta.fingerprint,
                      "held_out": meta.fingerprint not in own}
                     for path, (_, meta) in zip(judges, loaded, strict=True)]
    mine = ds.manifest.evidence or {}
    out["teachers_evidence"] = {g: mine[g]["ensemble"] for g in GROUPS if g in mine}
    out["directory"] = directory
    return out
