"""`infer-fast distill` end to end on the embedded digits: INFER, resume, torchrun, baselines, export, errors.

Tiny runs at 16 px (T = 12 iterations, ipc 3 -> K = 2 natural sets with M = 2 small ConvNet teachers), a few
seconds each; the teachers are trained once (a few seconds) and cached under infer_fast's cache folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from synth_helpers import ITER, SIZE
from synth_helpers import distill_config as _cfg

from infer_fast.distilled import load_distilled
from infer_fast.synth.runner import PROGRESS_DIR, run_distill
from infer_fast.synth.ufc import NonFiniteLossError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def full_run(teachers, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "d"
    assert run_distill(_cfg(out, teachers), progress=False) == str(out)
    return out


def _tensors(out):
    return load_distilled(str(out)).tensors


def test_infer_end_to_end(full_run, teachers):
    ds = load_distilled(str(full_run))
    m = len(teachers)
    k = (3 * 10) // (10 + m)
    man = ds.manifest
    assert (man.method, man.num_natural_sets, man.num_teachers, man.ipc) == ("infer", k, m, 3)
    assert len(ds) == k * 10 * (m + 1) == man.num_synthetic
    st = man.storage
    assert st["stored_images"] == k * 10 + k * m <= st["budget_images"] == 30
    assert st["stored_bytes"] == os.path.getsize(full_run / "naturals.safetensors") - _header(
        full_run / "naturals.safetensors") + os.path.getsize(full_run / "ufcs.safetensors") - _header(
        full_run / "ufcs.safetensors")
    assert st["label_bytes"] == len(ds) * 10 * 2 and 0 < st["compression_ratio"] < 1
    assert [t["fingerprint"] for t in man.teachers] == ds.teacher_fingerprints and len(man.teachers) == m
    assert man.config["iterations"] == ITER and man.config["r_bn"] == 0.05 and man.git_commit
    assert man.defaults is None, "every per-dataset default was set by the run"
    nat, ufcs, labels = ds.tensors["naturals"], ds.tensors["ufcs"], ds.tensors["labels"]
    s = ds.image_size
    assert nat.dtype == torch.uint8 and nat.shape == (k, 10, 3, s, s)
    assert ufcs.dtype == torch.float16 and ufcs.shape == (k, m, 3, s, s)
    assert labels.dtype == torch.float16 and labels.shape == (len(ds), 10) and torch.isfinite(labels).all()
    assert (ufcs.float().abs().amax(dim=(2, 3, 4)) > 1e-2).all(), "some UFC did not change"
    # CE falls for every problem; the losses were finite
    rows = [json.loads(line) for line in (full_run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == k * m
    for r in rows:
        assert r["ce_last"] < r["ce_first"], f"CE did not fall: {r}"
    # INFER §3.5: the stored u is bounded only loosely, [lo - hi, hi - lo]; every composed image is clamped
    mean, std = torch.tensor(ds.mean).view(1, 3, 1, 1), torch.tensor(ds.std).view(1, 3, 1, 1)
    lo, hi = -mean / std, (1 - mean) / std
    u = ufcs.float()
    assert (u.abs() <= (hi - lo) * (1 + 2 ** -10)).all()
    composed = ds.compose(torch.arange(len(ds))).float()
    assert (composed >= lo - 1e-6).all() and (composed <= hi + 1e-6).all()
    assert man.config["ufc_bound"] == "loose" and man.config["jitter"] == 1
    # the labels are the mean teacher logits on the composed images
    from infer_fast import models

    idx = torch.tensor([0, 7, len(ds) - 1])
    imgs = ds.compose(idx)
    with torch.no_grad():
        logits = torch.stack([models.load_teacher(p)[0](imgs) for p in teachers]).mean(0)
    torch.testing.assert_close(ds.soft_labels[idx], logits, atol=2e-2, rtol=2e-3)
    assert (full_run / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (full_run / PROGRESS_DIR).exists()


def test_class_evidence_is_measured_from_the_labelling_pass(full_run, teachers):
    ds = load_distilled(str(full_run))
    m, n = len(teachers), len(ds)
    ev = ds.manifest.evidence
    k = ds.num_sets
    assert ev["natural"]["images"] == k * 10 and ev["composed"]["images"] == k * 10 * m
    assert len(ev["natural"]["teachers"]) == len(ev["composed"]["teachers"]) == m
    # the ensemble's figures are those of the stored static labels (fp16) on the same images
    probs = ds.soft_labels.softmax(1)
    true = probs[torch.arange(n), ds.hard_labels]
    hit = (probs.argmax(1) == ds.hard_labels).float()
    for group, mask in (("natural", ~ds.composed_mask), ("composed", ds.composed_mask)):
        assert ev[group]["ensemble"]["true_prob"] == pytest.approx(float(true[mask].mean()), abs=2e-3)
        assert ev[group]["ensemble"]["top1"] == pytest.approx(float(hit[mask].mean()), abs=1.5 / mask.sum().item())
    diff = ev["composed_minus_natural"]["true_prob"]
    assert diff == pytest.approx(ev["composed"]["ensemble"]["true_prob"] - ev["natural"]["ensemble"]["true_prob"])
    by = ev["composed_by_ufc"]  # each u_{k,m} judged by its own teacher m and by the other one
    assert [grp["images"] for grp in by["groups"]] == [k * 10] * m
    own = sum(by["groups"][j]["teachers"][j]["true_prob"] for j in range(m)) / m
    assert by["own"]["true_prob"] == pytest.approx(own)
    assert by["natural_own"]["true_prob"] == pytest.approx(sum(t["true_prob"] for t in ev["natural"]["teachers"]) / m)
    rows = [json.loads(line) for line in (full_run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:  # the initial gradients: both terms pull, r_bn included, their ratio and cosine recorded
        assert r["grad_ce"] > 0 and r["grad_bn"] > 0 and -1 <= r["grad_cos"] <= 1
        assert r["grad_ratio_bn_ce"] == pytest.approx(r["grad_bn"] / r["grad_ce"])
    losses = ev["losses"]
    assert losses["problems"] == len(rows) and losses["ce_first"] == pytest.approx(
        sum(r["ce_first"] for r in rows) / len(rows))
    from infer_fast.train import EvalConfig, train_student

    summary = train_student(EvalConfig(epochs=1, batch_size=64, out=str(full_run.parent / "student"), progress=False,
                                       val="digits", workers=0, student="convnet", width=0.125, device="cpu"), ds)
    assert summary["evidence"] == ev, "evaluate copies the set's evidence beside its accuracy"


def test_judges_measure_a_set_as_distill_does_and_mark_the_held_out_ones(full_run, teachers, tmp_path, capsys):
    """`infer-fast evidence DIR --judges ...`: under the set's own teachers the figures are the ones distill recorded;
    a judge that is not one of them (here teacher 1 stored again in fp16, another file) is marked held out and gives
    its own network's figures; bad input is one line."""
    from infer_fast import models
    from infer_fast.cli import main
    from infer_fast.synth.evidence import judge

    ev = load_distilled(str(full_run)).manifest.evidence
    own = judge(str(full_run), teachers, progress=False)
    assert [j["held_out"] for j in own["judges"]] == [False, False] and "composed_by_ufc" not in own
    for group in ("natural", "composed"):
        assert own[group]["images"] == ev[group]["images"]
        for got, want in zip([own[group]["ensemble"], *own[group]["teachers"]],
                             [ev[group]["ensemble"], *ev[group]["teachers"]], strict=True):
            assert got == pytest.approx(want, abs=1e-6)
    assert own["teachers_evidence"] == {g: ev[g]["ensemble"] for g in ("natural", "composed")}
    model, meta = models.load_teacher(teachers[1])
    copy = str(tmp_path / "judge-fp16.safetensors")
    models.save_teacher(model, meta, copy, dtype=torch.float16)
    out = tmp_path / "judged.json"
    assert main(["evidence", str(full_run), "--judges", copy, teachers[0], "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"judge {copy} (convnet, held out)" in text and f"judge {teachers[0]} (convnet, one of the set's" in text
    held = json.loads(out.read_text())
    assert [j["held_out"] for j in held["judges"]] == [True, False]
    for group in ("natural", "composed"):  # the fp16 copy judges as teacher 1 did, to its storage's rounding
        assert held[group]["teachers"][0]["true_prob"] == pytest.approx(ev[group]["teachers"][1]["true_prob"],
                                                                        abs=5e-3)
        assert held[group]["teachers"][1] == pytest.approx(ev[group]["teachers"][0], abs=1e-6)
    assert main(["evidence", str(tmp_path), "--judges", copy]) == 2
    assert main(["evidence", str(full_run), "--judges", str(tmp_path / "missing.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "DIR" in err[0] and "manifest.json" in err[0] and "missing.safetensors" in err[1]


def test_bench_quality_judges_each_set_once_and_caches_by_judge_and_set(full_run, teachers, monkeypatch):
    """bench_quality --judges: each set's judged evidence is measured once per (judges, set) and read back after."""
    import bench_quality as bq

    from infer_fast.synth import evidence

    assert bq.judged_fields(str(full_run), [], "cpu") == dict.fromkeys(bq.JUDGED_KEYS)
    first = bq.judged_fields(str(full_run), teachers[:1], "cpu")
    want = evidence.judge(str(full_run), teachers[:1], progress=False)
    assert first == {"evidence_judged_natural": want["natural"]["ensemble"]["true_prob"],
                     "evidence_judged_composed": want["composed"]["ensemble"]["true_prob"]}

    def refuse(*args, **kwargs):
        raise AssertionError("judged again")

    monkeypatch.setattr(evidence, "judge", refuse)
    assert bq.judged_fields(str(full_run), teachers[:1], "cpu") == first  # from the cache beside the set
    with pytest.raises(AssertionError, match="judged again"):  # other judges: another key
        bq.judged_fields(str(full_run), teachers, "cpu")
    with pytest.raises(SystemExit):
        bq.parse_args(["--workload", "tiny200", "--judges", str(full_run / "missing.safetensors")])
    # a judge by name (torchvision:NAME, no file to hash) keys the cache by its name
    monkeypatch.setattr(evidence, "judge", lambda *a, **k: {"natural": {"ensemble": {"true_prob": 0.5}}})
    assert bq.judged_fields(str(full_run), ["torchvision:resnet18"], "cpu") == {
        "evidence_judged_natural": 0.5, "evidence_judged_composed": None}


def _header(path) -> int:
    with open(path, "rb") as f:
        return 8 + int.from_bytes(f.read(8), "little")


def test_resume_equals_uninterrupted(full_run, teachers, tmp_path):
    out = tmp_path / "r"
    assert run_distill(_cfg(out, teachers, stop_after=1), progress=False) is None
    done = sorted(os.listdir(out / PROGRESS_DIR))
    assert done == ["batch_00000.safetensors", "state.json"]
    with pytest.raises(FileExistsError, match="pass --resume"):
        run_distill(_cfg(out, teachers), progress=False)
    with pytest.raises(ValueError, match="different config"):
        run_distill(_cfg(out, teachers, resume=True, lr=0.1), progress=False)
    assert run_distill(_cfg(out, teachers, resume=True), progress=False) == str(out)
    a, b = _tensors(full_run), _tensors(out)
    assert set(a) == set(b) == {"naturals", "ufcs", "labels"}
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after resume"


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(full_run, teachers, tmp_path):
    """Same threads per process as this one (the full run's), so the float reductions match exactly."""
    out = tmp_path / "t"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "infer_fast",
           "distill", "--data", "digits", "--image-size", str(SIZE), "--teachers", *teachers, "--ipc", "3",
           "--iterations", str(ITER), "--out", str(out), "--log-every", "4", "--problems-per-batch", "2", "--seed", "3",
           "--r-bn", "0.05", "--jitter", "1", "--device", "cpu", "--threads", str(torch.get_num_threads())]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    a, b = _tensors(full_run), _tensors(out)
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs between torchrun and one process"


@pytest.mark.parametrize("method", ["sre2l", "random"])
def test_baselines(method, teachers, tmp_path):
    out = tmp_path / method
    # random optimises nothing: it leaves r_bn and the jitter to the per-dataset defaults, which its manifest records
    unset = {"r_bn": None, "jitter": None} if method == "random" else {}
    assert run_distill(_cfg(out, teachers, method=method, ipc=2, problems_per_batch=4, **unset), progress=False)
    ds = load_distilled(str(out))
    if unset:
        assert set(ds.manifest.defaults) == set(unset) and ds.manifest.config["r_bn"] == 1.0
        assert ds.manifest.defaults["r_bn"] == "1: INFER §3.2, small images"
    assert ds.method == method and len(ds) == 20 and "ufcs" not in ds.tensors
    assert ds.tensors["naturals"].shape == (2, 10, 3, ds.image_size, ds.image_size)
    assert ds.hard_labels.tolist() == [i % 10 for i in range(20)]
    assert ds.soft_labels.shape == (20, 10) and torch.isfinite(ds.soft_labels).all()
    assert ds.manifest.stored_images == 20
    ev = ds.manifest.evidence
    if method == "sre2l":
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert len(rows) == 2 and all(r["ce_last"] < r["ce_first"] for r in rows), rows
        # every stored image is synthesised: measured against a fresh natural sample (min(ipc, 10) per class)
        assert ev["composed"]["images"] == 20 and ev["natural"]["images"] == 20 and "composed_minus_natural" in ev
        from infer_fast.synth.evidence import judge

        judged = judge(str(out), teachers, progress=False)  # the same fresh sample, seeded as the run was
        for group in ("natural", "composed"):
            assert judged[group]["ensemble"] == pytest.approx(ev[group]["ensemble"], abs=1e-6)
    else:
        assert ev["natural"]["images"] == 20 and "composed" not in ev and ev["losses"] is None
        # random = the sampled naturals themselves, and the teacher labels mostly agree with the classes
        assert (ds.soft_labels.argmax(1) == ds.hard_labels).float().mean() > 0.5


def test_controls_take_the_infer_runs_compensators_with_the_same_result(full_run, teachers, tmp_path):
    """--compensators-from: a content control transforms a finished infer run's u instead of optimising it again,
    with the result of its own optimisation; a run that differs in a result-changing setting is refused."""
    own, reused = tmp_path / "own", tmp_path / "reused"
    assert run_distill(_cfg(own, teachers, method="infer-noise"), progress=False)
    assert run_distill(_cfg(reused, teachers, method="infer-noise", compensators_from=str(full_run)), progress=False)
    a, b, src = _tensors(own), _tensors(reused), _tensors(full_run)
    assert set(a) == set(b) == {"naturals", "ufcs", "labels"}
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs between optimised and reused compensators"
    assert torch.equal(b["naturals"], src["naturals"]) and not torch.equal(b["ufcs"], src["ufcs"])
    ev_a, ev_b = (load_distilled(str(d)).manifest.evidence for d in (own, reused))
    assert ev_a == ev_b, "the reused run carries the source's per-problem losses"
    assert not (reused / PROGRESS_DIR).exists()
    with pytest.raises(ValueError, match="other settings: r_bn 0.05 there, 0.1 here"):
        run_distill(_cfg(tmp_path / "x", teachers, method="infer-swap", r_bn=0.1, compensators_from=str(full_run)),
                    progress=False)
    with pytest.raises(ValueError, match="--compensators-from: expected --method of a content control"):
        run_distill(_cfg(tmp_path / "y", teachers, method="infer", compensators_from=str(full_run)), progress=False)
    with pytest.raises(ValueError, match="the folder of a finished --method infer run"):
        run_distill(_cfg(tmp_path / "z", teachers, method="infer-swap", compensators_from=str(tmp_path)),
                    progress=False)


def test_views_control_stores_fixed_augmentations_of_each_natural(full_run, teachers, tmp_path):
    out = tmp_path / "views"
    assert run_distill(_cfg(out, teachers, method="infer-views"), progress=False)
    ds, infer = load_distilled(str(out)), load_distilled(str(full_run))
    k, m, s = infer.num_sets, len(teachers), infer.image_size
    nat = ds.tensors["naturals"]
    assert "ufcs" not in ds.tensors and nat.shape == (k * (m + 1), 10, 3, s, s)
    assert torch.equal(nat[:k], infer.tensors["naturals"]), "INFER's natural sets (same seed)"
    assert len(ds) == len(infer) and torch.equal(ds.hard_labels, infer.hard_labels)
    assert ds.manifest.num_natural_sets == k and ds.manifest.stored_images == k * 10 * (m + 1)
    views = nat[k:].view(k, m, 10, 3, s, s)
    for j in range(m):  # each view differs from its natural, and the M views of a natural differ
        assert (views[:, j].float() - nat[:k].float()).abs().mean() > 1
    assert (views[:, 0].float() - views[:, 1].float()).abs().mean() > 1
    ev = ds.manifest.evidence  # naturals vs their views, measured as INFER's naturals vs compositions
    assert ev["natural"]["images"] == k * 10 and ev["composed"]["images"] == k * 10 * m
    assert ev["natural"] == infer.manifest.evidence["natural"]
    again = tmp_path / "again"
    assert run_distill(_cfg(again, teachers, method="infer-views"), progress=False)
    assert torch.equal(_tensors(again)["naturals"], nat), "the views are fixed by the run's seed"


def test_export(full_run, tmp_path):
    from safetensors.torch import load_file
    from torchvision.datasets import ImageFolder

    from infer_fast.distilled.export import export_imagefolder

    ds = load_distilled(str(full_run))
    out = tmp_path / "exp"
    assert export_imagefolder(str(full_run), str(out), progress=False) == len(ds)
    folder = ImageFolder(str(out))
    assert len(folder) == len(ds) and folder.classes == sorted(ds.classes)
    labels = load_file(str(out / "labels.safetensors"))
    assert labels["hard_labels"].tolist() == folder.targets
    soft = torch.load(out / "labels.pt", weights_only=True)
    assert soft.shape == (len(ds), 10) and torch.equal(soft, labels["soft_labels"])
    i = int(os.path.basename(folder.samples[5][0]).split(".")[0])
    torch.testing.assert_close(soft[5], ds.soft_labels[i])
    img = torch.from_numpy(__import__("numpy").array(folder[5][0])).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(img, ds.denormalise(ds.compose([i]))[0], atol=1 / 255 + 1e-6, rtol=0)
    with pytest.raises(ValueError, match="--out: expected a new or empty folder"):
        export_imagefolder(str(full_run), str(out), progress=False)


def test_bad_teachers_are_refused(teachers, tmp_path):
    from infer_fast import models

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(Exception, match="junk.safetensors"):
        run_distill(_cfg(tmp_path / "a", [junk]), progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_distill(_cfg(tmp_path / "b", [tmp_path / "missing.safetensors"]), progress=False)
    model, meta = models.load_teacher(teachers[0])
    five = models.build_model(meta.arch, 5, image_size=meta.image_size, width=meta.width).eval()
    meta5 = type(meta)(**{**meta.__dict__, "num_classes": 5, "classes": [str(i) for i in range(5)]})
    models.save_teacher(five, meta5, str(tmp_path / "five.safetensors"))
    with pytest.raises(ValueError, match=r"five.safetensors: its 5 classes do not cover the data's 10: 5 missing"):
        run_distill(_cfg(tmp_path / "c", [teachers[0], tmp_path / "five.safetensors"]), progress=False)
    with pytest.raises(ValueError, match="--ipc: expected >= 2, the minimum"):
        run_distill(_cfg(tmp_path / "d", teachers, ipc=1), progress=False)


def test_nonfinite_loss_stops_and_names_problem(teachers, tmp_path):
    from infer_fast import models

    model, meta = models.load_teacher(teachers[1])
    with torch.no_grad():  # finite weights (NaN ones are refused at load) whose activations overflow to inf
        next(p for p in model.parameters() if p.dim() == 4).fill_(3e38)
    models.save_teacher(model, meta, str(tmp_path / "nan.safetensors"))
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match=r"problem \(k=0, m=1\) at iteration 0"):
        run_distill(_cfg(out, [teachers[0], tmp_path / "nan.safetensors"]), progress=False)
    # the first teacher's batch finished and stays saved for --resume
    assert (out / PROGRESS_DIR / "batch_00000.safetensors").exists()


def test_rerunning_into_a_finished_out_without_resume_is_one_line(full_run, teachers, tmp_path, capsys):
    from infer_fast.cli import main

    out = tmp_path / "again"
    args = ["--data", "digits", "--image-size", str(SIZE), "--teachers", *teachers, "--ipc", "3", "--iterations",
            "2", "--device", "cpu", "--out", str(out)]
    assert main(["distill", *args]) == 0
    capsys.readouterr()
    assert main(["distill", *args]) == 2  # a finished set: one line, nothing touched
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out) in err and "--resume" in err, err
    assert main(["distill", *args, "--resume"]) == 0, "the same settings: already complete"
    assert "already complete" in capsys.readouterr().err
    # a finished folder of other settings is not passed off as this run's result
    assert main(["distill", *args, "--resume", "--r-bn", "0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fingerprint differs" in err and str(out) in err, err
    assert load_distilled(str(out)).manifest.config["r_bn"] == 1.0, "nothing touched"
    ev = ["evaluate", str(out), "--val", "digits", "--student", "convnet", "--width", "0.125", "--epochs", "1",
          "--device", "cpu", "--workers", "0", "--out", str(tmp_path / "ev"), "--no-progress"]
    assert main(ev) == 0
    capsys.readouterr()
    assert main(ev) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds a run" in err, err


def test_log_dir_gives_tensorboard_scalars_and_the_preview_for_distill_and_evaluate(teachers, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from infer_fast.train import EvalConfig, train_student

    out = tmp_path / "d"
    assert run_distill(_cfg(out, teachers, log_dir=str(tmp_path / "tb-distill")), progress=False)
    events = EventAccumulator(str(tmp_path / "tb-distill"))
    events.Reload()
    assert {"distill/ce", "distill/bn", "distill/evidence_natural/true_prob",
            "distill/evidence_composed/top1"} <= set(events.Tags()["scalars"])
    assert events.Tags()["images"] == ["distill/preview"]
    train_student(EvalConfig(epochs=2, batch_size=64, out=str(tmp_path / "s"), progress=False, val="digits",
                             workers=0, student="convnet", width=0.125, device="cpu", eval_every=1,
                             log_dir=str(tmp_path / "tb-eval")), load_distilled(str(out)))
    events = EventAccumulator(str(tmp_path / "tb-eval"))
    events.Reload()
    assert {"student/loss", "student/top1", "student/lr", "student/images_per_s"} <= set(events.Tags()["scalars"])
    assert len(events.Scalars("student/top1")) == 2
