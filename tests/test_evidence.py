"""infer_fast.synth.evidence: class evidence per teacher and for the ensemble, natural vs composed."""

from __future__ import annotations

import math

import pytest
import torch

from infer_fast.synth.evidence import EvidenceMeter, describe, loss_summary


def test_figures_per_teacher_and_ensemble_match_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(40, 7, generator=g) * 3 for _ in range(3)]
    targets = torch.randint(0, 7, (40,), generator=g)
    meter = EvidenceMeter(3)
    for lo in range(0, 40, 16):  # batches of uneven size accumulate to the whole
        meter.add("composed", [z[lo:lo + 16] for z in logits], targets[lo:lo + 16])
    meter.add("natural", [z[:5] for z in logits], targets[:5])
    out = meter.summary()
    ens = (logits[0] + logits[1] + logits[2]) / 3
    for z, fig in zip([*logits, ens], [*out["composed"]["teachers"], out["composed"]["ensemble"]], strict=True):
        assert fig["top1"] == pytest.approx(float((z.argmax(1) == targets).double().mean()))
        assert fig["true_prob"] == pytest.approx(float(z.softmax(1)[torch.arange(40), targets].double().mean()))
    assert out["composed"]["images"] == 40 and out["natural"]["images"] == 5
    nat = float(ens[:5].softmax(1)[torch.arange(5), targets[:5]].mean())
    assert out["composed_minus_natural"]["true_prob"] == pytest.approx(out["composed"]["ensemble"]["true_prob"] - nat)


def test_a_set_without_compositions_reports_only_its_naturals():
    meter = EvidenceMeter(1)
    meter.add("natural", [torch.eye(4) * 10], torch.arange(4))
    meter.add("composed", [torch.zeros(0, 4)], torch.zeros(0, dtype=torch.int64))
    out = meter.summary()
    assert set(out) == {"natural"} and out["natural"]["ensemble"]["top1"] == 1.0
    line, warning = describe(out)
    assert "natural top-1 100.0%" in line and "composed" not in line and warning is None


def test_warning_names_the_loss_of_evidence_in_one_line():
    meter = EvidenceMeter(2)
    sharp, flat = torch.eye(3) * 8, torch.zeros(3, 3)
    meter.add("natural", [sharp, sharp], torch.arange(3))
    meter.add("composed", [flat, sharp], torch.arange(3))  # one teacher lost the class entirely
    out = meter.summary()
    assert out["composed"]["teachers"][0]["true_prob"] == pytest.approx(1 / 3)
    line, warning = describe(out)
    assert warning is not None and len(warning.splitlines()) == 1 and "less class evidence" in warning
    assert out["composed_minus_natural"]["true_prob"] < 0


def test_bad_calls_and_loss_summary():
    with pytest.raises(ValueError, match="num_teachers"):
        EvidenceMeter(0)
    meter = EvidenceMeter(2)
    with pytest.raises(ValueError, match="expected 2 teachers"):
        meter.add("natural", [torch.zeros(1, 2)], torch.zeros(1, dtype=torch.int64))
    with pytest.raises(ValueError, match="group must be one of"):
        meter.add("other", [torch.zeros(1, 2)] * 2, torch.zeros(1, dtype=torch.int64))
    rows = [{"ce_first": 2.0, "ce_last": 1.0, "bn_first": 4.0, "bn_last": 3.0},
            {"ce_first": 4.0, "ce_last": 2.0, "bn_first": 6.0, "bn_last": 1.0}]
    assert loss_summary(rows) == {"ce_first": 3.0, "ce_last": 1.5, "bn_first": 5.0, "bn_last": 2.0, "problems": 2}
    assert loss_summary([]) is None and not math.isnan(loss_summary(rows)["bn_last"])


def test_warning_margin_and_the_methods_hint():
    def evidence(diff):
        e = {"images": 10, "ensemble": {"top1": 0.5, "true_prob": 0.5}, "teachers": []}
        c = {"images": 20, "ensemble": {"top1": 0.5, "true_prob": 0.5 + diff}, "teachers": []}
        return {"natural": e, "composed": c, "composed_minus_natural": {"top1": 0.0, "true_prob": diff}}

    assert describe(evidence(-0.005))[1] is None  # within WARN_MARGIN: sampling noise
    _, warning = describe(evidence(-0.2))
    assert warning.endswith("(lower --r-bn, see the README's 'Class evidence')")
    _, warning = describe(evidence(-0.2), hint=None)
    assert warning.endswith("top-1 +0.0%)")
    # the figures name the cause: u serving its own teacher and not the others is lost transfer, not the BN term
    split = evidence(-0.025) | {"composed_by_ufc": {k: {"top1": 0.5, "true_prob": p} for k, p in (
        ("own", 0.392), ("other", 0.212), ("natural_own", 0.321), ("natural_other", 0.321))}}
    _, warning = describe(split)
    assert "serves its own teacher (true-class p 0.321 -> 0.392) and not the others (0.321 -> 0.212)" in warning
    assert "BN term may dominate" not in warning
    fell = split | {"composed_by_ufc": split["composed_by_ufc"] | {"own": {"top1": 0.5, "true_prob": 0.30}}}
    assert describe(fell)[1].endswith("(lower --r-bn, see the README's 'Class evidence')"), "own fell too: BN"
    no_bn = fell | {"losses": {"grad_ratio_bn_ce": 0.0, "grad_cos": 0.0}}
    assert describe(no_bn)[1].endswith("top-1 +0.0%)"), "r_bn 0: no BN term to blame"
    assert describe(split, hint="a control's own hint")[1].endswith("; a control's own hint")
    from infer_fast.synth import methods

    assert methods.get("infer").evidence_hint == methods.get("sre2l").evidence_hint != methods.get(
        "infer-views").evidence_hint == methods.get("infer-noise").evidence_hint


def test_the_summarised_gradient_ratio_is_the_ratio_of_the_means():
    rows = [{"ce_first": 1.0, "ce_last": 0.5, "bn_first": 2.0, "bn_last": 1.0, "grad_ce": g, "grad_bn": b,
             "grad_ratio_bn_ce": b / g, "grad_cos": 0.0} for g, b in ((1.0, 7.5), (1.0, 7.5), (0.01, 6.6))]
    out = loss_summary(rows)
    assert out["grad_ratio_bn_ce"] == pytest.approx((21.6 / 3) / (2.01 / 3))  # ~10.7, not the mean ratio ~225
    assert out["problems"] == 3 and out["ce_first"] == 1.0


def test_composed_images_split_by_the_teacher_whose_compensator_made_them():
    g = torch.Generator().manual_seed(1)
    nat = [torch.randn(6, 5, generator=g) * 2 for _ in range(2)]
    comp = [torch.randn(12, 5, generator=g) * 2 for _ in range(2)]
    y_nat = torch.arange(6) % 5
    y = torch.cat([y_nat, y_nat])
    src = torch.tensor([0] * 6 + [1] * 6)  # each natural composed once with u_0 and once with u_1
    meter = EvidenceMeter(2)
    meter.add("natural", nat, y_nat)
    for lo in (0, 5):  # batches that cut across the two compensator teachers
        hi = 12 if lo else 5
        meter.add("composed", [z[lo:hi] for z in comp], y[lo:hi], ufc_teacher=src[lo:hi])
    out = meter.summary()["composed_by_ufc"]

    def p(z, t):
        return z.softmax(1)[torch.arange(len(t)), t].double()

    own = torch.cat([p(comp[0][:6], y[:6]), p(comp[1][6:], y[6:])]).mean()
    other = torch.cat([p(comp[1][:6], y[:6]), p(comp[0][6:], y[6:])]).mean()
    assert out["own"]["true_prob"] == pytest.approx(float(own)) and out["other"]["true_prob"] == pytest.approx(
        float(other))
    nat_own = (p(nat[0], y_nat).mean() + p(nat[1], y_nat).mean()) / 2  # each natural under u_0's and u_1's teacher
    assert out["natural_own"]["true_prob"] == pytest.approx(float(nat_own))
    assert [grp["ufc_teacher"] for grp in out["groups"]] == [0, 1] and out["groups"][1]["images"] == 6
    assert out["groups"][0]["teachers"][1]["true_prob"] == pytest.approx(float(p(comp[1][:6], y[:6]).mean()))
    line, _ = describe(meter.summary())
    assert "by compensator teacher: own p" in line and len(line.splitlines()) == 1


def test_no_split_without_compensators_or_with_one_teacher():
    meter = EvidenceMeter(2)
    z = [torch.randn(4, 3)] * 2
    meter.add("composed", z, torch.arange(4) % 3, ufc_teacher=torch.full((4,), -1))  # stored views: no u
    assert "composed_by_ufc" not in meter.summary()
    one = EvidenceMeter(1)
    one.add("composed", z[:1], torch.arange(4) % 3, ufc_teacher=torch.zeros(4, dtype=torch.int64))
    assert "composed_by_ufc" not in one.summary()  # own is the whole ensemble: nothing to split
    with pytest.raises(ValueError, match="ufc_teacher has 3 entries for 4 images"):
        meter.add("composed", z, torch.arange(4) % 3, ufc_teacher=torch.zeros(3, dtype=torch.int64))
