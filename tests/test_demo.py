"""`infer-fast demo --quick`: the whole pipeline on digits writes sane results, a report and PNGs."""

from __future__ import annotations

import json

import pytest

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path, capsys):
    from infer_fast.cli import main

    out = tmp_path / "demo"
    rc = main(["demo", "--quick", "--out", str(out), "--teacher-cache", str(tmp_path / "teachers"),
               "--device", "cpu"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r for r in res["results"]}
    assert set(rows) == {"infer", "sre2l", "random"}
    for m, r in rows.items():
        assert 0.0 <= r["top1"] <= 100.0, r
        assert r["stored_bytes"] > 0 and r["label_bytes"] > 0 and r["wall_time_s"] > 0, r
        assert (out / f"synthetic_{m}.png").read_bytes()[:8] == PNG
    # INFER composes K*C*(M+1) images from K*C naturals + K*M UFCs within the same budget as the baselines
    assert rows["infer"]["synthetic_images"] > rows["random"]["synthetic_images"] == rows["sre2l"]["synthetic_images"]
    assert rows["infer"]["stored_bytes"] <= rows["random"]["stored_bytes"] * 2  # fp16 UFCs: at most 2x per slot
    # INFER (naturals + compositions, teacher labels) is clearly above chance (10 %) even at the quick setting
    # (measured 30.8 %); the 30-image baselines get only ~20 steps here, so they are checked for range only
    assert rows["infer"]["top1"] > 15.0, rows["infer"]
    assert (out / "accuracy.png").read_bytes()[:8] == PNG
    report = (out / "report.md").read_text()
    assert "| infer |" in report and "accuracy.png" in report
    assert "| method |" in capsys.readouterr().out


def test_sre2l_student_gets_sre2l_relabel_protocol():
    """The demo labels sre2l's student as SRe2L does (teachers on every augmented, mixed batch); infer and random keep
    the stored static labels; ``--sre2l-labels static`` restores stored labels for sre2l (the old setting)."""
    from infer_fast.cli import build_parser
    from infer_fast.config_cli import config_from_args
    from infer_fast.demo import DemoConfig

    cfg = DemoConfig()
    assert [cfg.labels_for(m) for m in ("infer", "sre2l", "random")] == ["static", "dynamic", "static"]
    old = config_from_args(build_parser().parse_args(["demo", "--sre2l-labels", "static"]), DemoConfig)
    assert [old.labels_for(m) for m in ("infer", "sre2l", "random")] == ["static", "static", "static"]
    with pytest.raises(ValueError, match="sre2l_labels|sre2l-labels"):
        DemoConfig(sre2l_labels="soft").validate()


@pytest.mark.slow
def test_demo_sre2l_does_not_collapse(tmp_path):
    """Issue 18: at the demo's own settings the sre2l student ended at chance (10.0 %: every validation digit given one
    class; its curve peaked near 27 % at epoch 4) under one stored label per synthesised image. With SRe2L's relabel
    protocol it ends well above chance (measured 39.7 %, seed 0)."""
    from infer_fast.demo import DemoConfig, run_demo

    res = run_demo(DemoConfig(methods=["sre2l"], out=str(tmp_path / "demo"), teacher_cache=str(tmp_path / "t"),
                              device="cpu"))
    (row,) = res["results"]
    assert row["top1"] > 20.0, row
    assert row["labels"] == "dynamic", row
