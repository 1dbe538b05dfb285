"""bench/bench_quality.py: settings per workload, the seed statistics and the verdict lines (no training here)."""

from __future__ import annotations

import statistics

import bench_quality as bq
import pytest

from infer_fast.synth.config import MANY_CLASSES_R_BN


def _row(method, labels, seed, top1, top5=None, compute="epochs", steps=30):
    return {"method": method, "labels": labels, "compute": compute, "seed": seed, "top1": top1, "top5": top5,
            "paper_top1": None, "synthetic_images": 10, "stored_bytes": 100, "label_bytes": 20, "student_epochs": 3,
            "student_steps": steps, "synthesis_time_s": 1.0 + seed, "student_time_s": 2.0, "evidence_natural": 0.3,
            "evidence_composed": 0.2 if method == "infer" else None}


def test_workload_settings_and_overrides():
    a = bq.parse_args(["--workload", "tiny200"])
    full = bq.WORKLOADS["tiny200"]["settings"]
    assert (a.seeds, a.iterations, a.epochs, a.mode) == (full["seeds"], full["iterations"], full["epochs"], "full")
    q = bq.parse_args(["--workload", "tiny200", "--quick", "--epochs", "7"])
    quick = bq.WORKLOADS["tiny200"]["quick"]
    assert q.seeds == [0] and q.epochs == 7 and q.iterations == quick["iterations"] and q.mode == "quick"
    # the workload's methods (Tiny-200: INFER, random and the content controls, quick or not), else the default
    assert q.methods == a.methods == full["methods"] and "infer-swap/static" in a.methods
    assert bq.parse_args(["--workload", "cifar10"]).methods == list(bq.DEFAULT_METHODS)
    assert bq.parse_args(["--workload", "tiny200", "--quick", "--methods", "random/static"]).methods == [
        "random/static"]
    c = bq.parse_args(["--workload", "cifar10", "--quick"])
    assert c.iterations == bq.WORKLOADS["cifar10"]["quick"]["iterations"] < bq.WORKLOADS["cifar10"]["settings"][
        "iterations"]
    with pytest.raises(SystemExit):
        bq.parse_args(["--methods", "infer/soft"])


def test_aggregate_is_mean_and_sample_sd_over_seeds():
    rows = [_row("infer", "static", s, t, t + 10) for s, t in enumerate([30.0, 32.0, 34.0])]
    rows += [_row("random", "static", s, t) for s, t in enumerate([20.0, 21.0, 22.0])]
    agg = {(r["method"], r["labels"]): r for r in bq.aggregate(rows)}
    assert agg[("infer", "static")]["evidence_composed"] == pytest.approx(0.2)
    inf = agg[("infer", "static")]
    assert inf["seeds"] == 3 and inf["top1_mean"] == 32.0 and inf["top1_sd"] == statistics.stdev([30, 32, 34])
    assert inf["top5_mean"] == 42.0 and inf["top1"] == "32.00 ± 2.00"
    assert inf["synthesis_s"] == 2.0 and agg[("random", "static")]["top5"] is None
    lines = bq.verdict(list(agg.values()))
    assert lines[0].startswith("infer/static - random/static = +11.00 points") and lines[0].endswith("beats it")


def test_verdict_needs_a_gap_beyond_two_sd_and_more_than_one_seed():
    rows = [_row("infer", "static", s, t) for s, t in enumerate([30.0, 36.0])]
    rows += [_row("random", "static", s, t) for s, t in enumerate([29.0, 31.0])]
    rows += [_row("sre2l", "static", s, t) for s, t in enumerate([40.0, 40.0])]
    lines = bq.verdict(bq.aggregate(rows))
    assert lines[0].endswith("NOT established"), lines
    assert lines[1].endswith("NOT below both"), lines
    one = bq.aggregate([_row("infer", "static", 0, 50.0), _row("random", "static", 0, 10.0)])
    assert bq.verdict(one)[0].endswith("NOT established"), "one seed has no spread to compare with"


def test_run_folder_needs_resume_to_continue(tmp_path):
    a = bq.parse_args(["--workload", "tiny200", "--run-dir", str(tmp_path / "run")])
    assert bq._run_dir(a, {}, []) == str(tmp_path / "run")
    (tmp_path / "run" / "x").write_text("partial")
    with pytest.raises(SystemExit, match="--resume"):
        bq._run_dir(a, {}, [])
    a.resume = True
    assert bq._run_dir(a, {}, []) == str(tmp_path / "run")


def test_match_steps_gives_every_pair_infers_steps_and_a_2x_saturation_point():
    class Set:
        def __len__(self):
            return 130  # 3 batches of 64 per epoch

    a = bq.parse_args(["--workload", "tiny200", "--match", "steps", "--epochs", "4", "--methods", "infer/static",
                       "random/static", "sre2l/static"])
    jobs = bq.student_jobs(a, Set(), batch=64)
    assert jobs == [("infer/static", "1x", 12), ("random/static", "1x", 12), ("sre2l/static", "1x", 12),
                    ("random/static", "2x", 24), ("infer/static", "2x", 24)]
    a.saturation = False  # --no-saturation: the 1x jobs only (sweeps)
    assert bq.student_jobs(a, Set(), batch=64) == jobs[:3]
    # --saturate: a content control at 2x too, to test its lead where the students saturate
    s = bq.parse_args(["--workload", "tiny200", "--match", "steps", "--epochs", "4", "--methods", "infer/static",
                       "infer-swap/static", "--saturate", "infer/static", "infer-swap/static"])
    assert bq.student_jobs(s, Set(), batch=64)[2:] == [("infer/static", "2x", 24), ("infer-swap/static", "2x", 24)]
    with pytest.raises(SystemExit):  # a pair that is not run cannot be saturated
        bq.parse_args(["--workload", "tiny200", "--methods", "infer/static", "--saturate", "random/static"])
    e = bq.parse_args(["--workload", "tiny200", "--epochs", "4", "--methods", "random/static"])
    assert bq.student_jobs(e, None, batch=64) == [("random/static", "epochs", 0)]
    assert bq.settings_of(a, [])["match"] == "steps" != bq.settings_of(e, [])["match"]
    # the measured default r_bn keys the run folder where it replaces the paper's, and only there: folders of the
    # paper's value are never reused for it, and the 10-class workloads keep their keys
    assert bq.settings_of(a, [], (True, 200))["default_r_bn"] == {"infer": MANY_CLASSES_R_BN}
    assert "default_r_bn" not in bq.settings_of(a, [], (True, 10)) and "default_r_bn" not in bq.settings_of(
        a, [], (False, 200))
    # adding the content controls (INFER's settings by design) keys the same folder, so its INFER sets are reused
    c = bq.parse_args(["--workload", "tiny200", "--match", "steps", "--methods", "infer/static", "random/static"])
    assert bq.settings_of(c, [], (True, 200)) == bq.settings_of(bq.parse_args(["--workload", "tiny200", "--match",
                                                                                "steps"]), [], (True, 200))
    c.methods.append("sre2l/dynamic")  # a method of its own synthesis: keyed when its default is measured
    assert bq.settings_of(c, [], (True, 200))["default_r_bn"] == {"infer": MANY_CLASSES_R_BN}  # sre2l keeps the paper's
    a.r_bn = 1.0
    assert "default_r_bn" not in bq.settings_of(a, [], (True, 200))


def test_verdict_at_equal_steps_and_the_saturation_lines():
    rows = [_row("infer", "static", s, t, compute="1x", steps=12) for s, t in enumerate([30.0, 31.0, 32.0])]
    rows += [_row("random", "static", s, t, compute="1x", steps=12) for s, t in enumerate([30.5, 31.0, 31.5])]
    rows += [_row("random", "static", s, t, compute="2x", steps=24) for s, t in enumerate([33.0, 33.0, 33.0])]
    rows += [_row("infer", "static", s, t, compute="2x", steps=24) for s, t in enumerate([32.0, 32.5, 33.0])]
    lines = bq.verdict(bq.aggregate(rows))
    assert lines[0].startswith("infer/static - random/static at equal student steps (12) = +0.00 points")
    assert lines[0].endswith("NOT established")
    assert lines[1] == "random/static at 2x steps (24): 33.00 ± 0.00 vs 31.00 at 1x (+2.00 points)"
    assert lines[2] == "infer/static at 2x steps (24): 32.50 ± 0.50 vs 31.00 at 1x (+1.50 points)"
    assert lines[3] == "infer/static - random/static at 2x steps (24) = -0.50 points; 2 sd = 1.00: NOT established"
    assert len(lines) == 4, lines
    paired = bq.verdict(bq.aggregate(rows), rows)  # the seed pairs the runs: the differences -0.5, 0, +0.5
    assert paired[1] == "  paired by seed: per-seed differences -0.50, +0.00, +0.50: +0.00 ± 0.50", paired
    assert paired[0] == lines[0] and paired[2:5] == lines[1:4]
    assert paired[5] == "  paired by seed: per-seed differences -1.00, -0.50, +0.00: -0.50 ± 0.50", paired


def test_the_gain_over_the_best_content_control_is_reported():
    rows = [_row("infer", "static", s, t, compute="1x") for s, t in enumerate([40.0, 41.0, 42.0])]
    rows += [_row("random", "static", s, t, compute="1x") for s, t in enumerate([30.0, 31.0, 32.0])]
    for name, vals in (("infer-noise", [35.0, 35.5, 36.0]), ("infer-swap", [37.0, 38.0, 39.0])):
        rows += [{**_row(name, "static", s, t, compute="1x"), "control": name} for s, t in enumerate(vals)]
    lines = bq.verdict(bq.aggregate(rows))
    assert lines[1] == "infer/static - best control (infer-swap/static) = +3.00 points; 2 sd = 2.00: beats it", lines
    with_rows = bq.verdict(bq.aggregate(rows), rows)
    assert with_rows[3] == "  paired by seed: per-seed differences +3.00, +3.00, +3.00: +3.00 ± 0.00"
    # every other control gets its gap too, paired by seed where the rows are given
    assert lines[2] == "infer/static - infer-noise/static = +5.50 points", lines
    assert with_rows[4] == ("infer/static - infer-noise/static = +5.50 points; paired by seed: per-seed differences "
                            "+5.00, +5.50, +6.00: +5.50 ± 0.50")
    # a control saturated too (--saturate): its 2x line and INFER's gap over it at 2x, paired
    rows += [{**_row("infer-swap", "static", s, t, compute="2x"), "control": "infer-swap"}
             for s, t in enumerate([40.0, 41.0, 42.0])]
    rows += [_row("infer", "static", s, t, compute="2x") for s, t in enumerate([41.0, 42.0, 44.0])]
    sat = bq.verdict(bq.aggregate(rows), rows)
    assert sat[-2] == "infer-swap/static at 2x steps (30): 41.00 ± 1.00 vs 38.00 at 1x (+3.00 points)", sat
    assert sat[-1] == ("infer/static - infer-swap at 2x steps = +1.33 points; paired by seed: per-seed differences "
                       "+1.00, +1.00, +2.00: +1.33 ± 0.58")
    rows += [_row("infer", "dynamic", s, t, compute=c) for c, t in (("1x", 30.0), ("2x", 31.0)) for s in range(2)]
    assert "infer/dynamic at 2x steps (30): 31.00 ± 0.00 vs 30.00 at 1x (+1.00 points)" in bq.verdict(
        bq.aggregate(rows), rows)  # any labels saturated get their line
    # hard labels: their own random set and controls, never mixed into the static ones' ranking
    hard = [_row("infer", "hard", s, t, compute="1x") for s, t in enumerate([20.0, 21.0, 22.0])]
    hard += [_row("random", "hard", s, t, compute="1x") for s, t in enumerate([21.0, 21.0, 21.0])]
    hard += [{**_row("infer-swap", "hard", s, t, compute="1x"), "control": "infer-swap"}
             for s, t in enumerate([16.0, 17.0, 18.0])]
    both = bq.verdict(bq.aggregate(rows + hard), rows + hard)
    assert both[:5] == with_rows[:5], "the static lines are unchanged by hard-label rows"
    assert "infer/hard - random/hard at equal student steps (30) = +0.00 points; 2 sd of the seed spread = 2.00: " \
        "NOT established" in both, both
    i = both.index("infer/hard - best control (infer-swap/hard) = +4.00 points; 2 sd = 2.00: beats it")
    assert both[i + 1] == "  paired by seed: per-seed differences +4.00, +4.00, +4.00: +4.00 ± 0.00"
    alone = bq.verdict(bq.aggregate(hard), hard)  # a run of hard-label pairs only (--match steps) gets its lines
    assert alone == both[both.index("infer/hard - random/hard at equal student steps (30) = +0.00 points; 2 sd of "
                                    "the seed spread = 2.00: NOT established"):][:len(alone)] and len(alone) == 4, alone
    curves = bq.mean_curves({"infer/static 1x": [{10: 20.0, 20: 30.0}, {10: 22.0, 20: 32.0, 30: 1.0}]})
    assert curves == {"infer/static 1x (n=2)": [(10, 21.0), (20, 31.0)]}  # the steps every seed evaluated
    a = bq.parse_args(["--workload", "tiny200", "--methods", "infer/static", "infer-noise/static"])
    assert a.methods == ["infer/static", "infer-noise/static"]


def test_sweep_chooses_on_the_compositions_evidence_and_shares_the_default_cells_folder(tmp_path):
    import bench_sweep as bs

    def cell(r_bn, t, seed, ev):
        return {"r_bn": r_bn, "iterations": t, "seed": seed, "evidence_composed": ev, "evidence_natural": 0.5,
                "top1": None, "student_steps": None}

    rows = [cell(1.0, 100, 0, 0.9), cell(1.0, 1000, 0, 0.40), cell(1.0, 1000, 1, 0.42),
            cell(0.01, 1000, 0, 0.52), cell(0.01, 1000, 1, 0.50), cell(0.0, 1000, 0, 0.7), cell(0.0, 1000, 1, 0.7)]
    best, why = bs.choose(rows)  # the largest T only (0.9 at T = 100 does not count); the largest r_bn that keeps
    assert best == 0.01 and why.startswith("r_bn 0.01 (the largest r_bn whose compositions keep their naturals' "
                                           "class evidence at T = 1000; composed - natural ensemble true-class "
                                           "probability: r_bn 1 -0.090, r_bn 0.01 +0.010, r_bn 0 +0.200)"), why
    assert bs.choose([cell(1.0, 10, 0, 0.3), cell(0.1, 10, 0, 0.45)])[0] == 0.1  # none keeps: the least loss
    a = bs.parse_args(["--r-bn", "1", "0.1", "--iterations", "100", "1000", "--teacher-files", "t.th"])
    assert a.students_at == [1000]
    a.default_r_bn = 1.0  # the data's default for the method, as main resolves it (CIFAR-10: the paper's 1)
    default, other = bs._quality_argv(a, 1.0, 1000, ["infer/static"]), bs._quality_argv(a, 0.1, 1000, ["x"])
    assert "--r-bn" not in default and other[other.index("--r-bn") + 1] == "0.1"
    # 200 classes: the measured default shares bench_quality's folder, the paper's 1 does not (0 is a value, not unset)
    a.default_r_bn = MANY_CLASSES_R_BN
    measured = bs._quality_argv(a, MANY_CLASSES_R_BN, 1000, ["x"])
    assert "--r-bn" not in measured and "--r-bn" in bs._quality_argv(a, 1.0, 1000, ["x"])
    q = bq.parse_args(default)
    assert (q.match, q.saturation, q.iterations, q.r_bn, q.resume) == ("steps", False, 1000, None, True)
    rows[0]["top1"], rows[0]["student_steps"] = 30.0, 400
    bs.plot(rows, 28.0, str(tmp_path / "sweep.png"), "test")
    assert (tmp_path / "sweep.png").stat().st_size > 1000


def test_val_scores_on_another_split_and_keys_its_own_run_folder(tmp_path):
    """--val (a data holdout slice): the students' split, a settings key of its own; unset, the keys of the
    run folders scored on the data root's split are unchanged."""
    plain = bq.parse_args(["--workload", "tiny200"])
    assert plain.val is None and "val" not in bq.settings_of(plain, [])
    held = bq.parse_args(["--workload", "tiny200", "--val", str(tmp_path)])
    s = bq.settings_of(held, [])
    assert s["val"] == str(tmp_path) and bq._key(s) != bq._key(bq.settings_of(plain, []))
    with pytest.raises(SystemExit):
        bq.parse_args(["--workload", "tiny200", "--val", str(tmp_path / "missing")])


def test_overlap_warning_names_the_students_scored_on_their_own_naturals():
    rows = [_row("infer", "static", 0, 12.0), {**_row("random", "static", 1, 11.0), "val_overlap": 190},
            {**_row("infer", "static", 2, 12.0), "val_overlap": 0}]
    line = bq.overlap_warning(rows)
    assert line.startswith("warning: 1 student(s)") and "random/static seed 1 (190)" in line
    assert bq.overlap_warning([r for r in rows if r["method"] == "infer"]) is None


def test_ufc_cosines_tell_one_shared_compensator_from_one_per_set():
    import torch

    g = torch.Generator().manual_seed(0)
    own = torch.randn(4, 2, 3, 16, 16, generator=g)  # every (set, teacher) its own u: near-orthogonal
    c = bq.ufc_cosines(own)
    assert abs(c["cos_sets"]) < 0.1 and abs(c["cos_teachers"]) < 0.1
    shared = own[:1].expand(4, 2, 3, 16, 16) * torch.tensor([1.0, 2.0, 0.5, 3.0]).view(4, 1, 1, 1, 1)
    c = bq.ufc_cosines(shared)  # one u per teacher, scaled per set: across sets 1, across teachers as drawn
    assert c["cos_sets"] == pytest.approx(1.0, abs=1e-5) and abs(c["cos_teachers"]) < 0.1
    flipped = torch.stack([own[:, 0], -own[:, 0]], dim=1)
    assert bq.ufc_cosines(flipped)["cos_teachers"] == pytest.approx(-1.0, abs=1e-5)
    assert bq.ufc_cosines(own[:1, :1]) == {"cos_sets": None, "cos_teachers": None}


def test_a_root_without_an_evaluation_split_is_refused_before_any_work(tmp_path):
    (tmp_path / "out" / "train" / "a").mkdir(parents=True)  # a data holdout OUT: train/ and holdout/, no val/
    (tmp_path / "out" / "holdout" / "a").mkdir(parents=True)
    with pytest.raises(SystemExit, match=r"--data: .*no val/test split folder.*--val OUT/holdout"):
        bq.main(["--workload", "tiny200", "--data", str(tmp_path / "out"), "--cache", str(tmp_path / "c")])
    with pytest.raises(SystemExit, match=r"--val: .*no val/test split folder"):
        bq.main(["--workload", "tiny200", "--data", str(tmp_path / "out"), "--val", str(tmp_path / "out"),
                 "--cache", str(tmp_path / "c")])
    assert not (tmp_path / "c").exists()
