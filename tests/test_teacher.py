"""infer_fast.train.teacher: teacher training (``infer-fast train-teacher``) and the cached default ensemble."""

from __future__ import annotations

import argparse
import json
import os

import pytest
import torch

from infer_fast import config_cli
from infer_fast.models import load_teacher
from infer_fast.train import teacher
from infer_fast.train.commands import register_train_teacher
from infer_fast.train.teacher import TeacherConfig, default_teachers


# ------------------------------------------------------------------------------------------------ training
@pytest.mark.slow  # ~35 s on 2 shared cores: the one real training run (convnet w0.25, 3 epochs)
def test_train_teacher_cli_on_digits(tmp_path, capsys):
    out = str(tmp_path / "digits.safetensors")
    parser = argparse.ArgumentParser()
    register_train_teacher(parser.add_subparsers())
    args = parser.parse_args(["train-teacher", "--data", "digits", "--arch", "convnet", "--width", "0.25",
                              "--epochs", "3", "--batch-size", "64", "--lr", "0.05", "--image-size", "32",
                              "--out", out, "--loader", "torch", "--num-workers", "0", "--no-progress",
                              "--precise-bn", "4"])
    cfg = config_cli.config_from_args(args, TeacherConfig)
    assert cfg == TeacherConfig(source="digits", arch="convnet", width=0.25, epochs=3, batch_size=64, lr=0.05,
                                image_size=32, out=out, loader="torch", num_workers=0, progress=False, precise_bn=4)
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model, meta = load_teacher(out)
    assert report["out"] == out and report["sha256"] == meta.fingerprint
    assert meta.val_acc > 0.9, f"digits val acc {meta.val_acc}"
    assert meta.num_classes == 10 and meta.image_size == 32 and meta.extra["config"]["epochs"] == 3
    assert meta.extra["config"]["precise_bn"] == 4
    with pytest.raises(SystemExit):
        parser.parse_args(["train-teacher", "--data", "digits", "--arch", "resnet99", "--out", out])


def test_default_teachers_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(teacher, "DEFAULT_ENSEMBLE", (("convnet", 0.125, 1),))
    monkeypatch.setenv("INFER_FAST_CACHE", str(tmp_path))
    first = default_teachers(image_size=8, progress=False)
    assert len(first) == 1 and first[0].startswith(str(tmp_path / "teachers"))
    stamp = os.stat(first[0]).st_mtime_ns
    assert default_teachers(image_size=8, progress=False) == first and os.stat(first[0]).st_mtime_ns == stamp
    other = default_teachers(image_size=8, seed=1, cache_dir=str(tmp_path / "elsewhere"), progress=False)
    assert other[0].startswith(str(tmp_path / "elsewhere")) and os.path.dirname(other[0]) != os.path.dirname(first[0])
    assert load_teacher(other[0])[1].fingerprint != load_teacher(first[0])[1].fingerprint  # another seed


# ------------------------------------------------------------------------------------------------ resume
def _tiny(tmp_path, name: str, **kw) -> TeacherConfig:
    base = dict(source="digits", arch="convnet", width=0.125, epochs=3, image_size=8, batch_size=64, lr=0.05,
                num_workers=0, progress=False, loader="torch", out=str(tmp_path / name))
    return TeacherConfig(**{**base, **kw})


def test_resumed_teacher_equals_an_uninterrupted_one(tmp_path):
    from safetensors.torch import load_file

    whole = teacher.train_teacher(_tiny(tmp_path, "whole.safetensors", eval_every=1))[1]
    out, meta = teacher.train_teacher(_tiny(tmp_path, "parts.safetensors", eval_every=1, stop_after=2))
    state = out + teacher.STATE_SUFFIX
    assert meta is None and not os.path.exists(out)
    assert sorted(os.listdir(state)) == ["accuracy.png", "checkpoint.pt", "metrics.jsonl"]
    assert [json.loads(line)["epoch"] for line in open(os.path.join(state, "metrics.jsonl"))] == [1, 2]
    meta = teacher.train_teacher(_tiny(tmp_path, "parts.safetensors", eval_every=1, resume=True))[1]
    a, b = load_file(str(tmp_path / "whole.safetensors")), load_file(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert meta.val_acc == whole.val_acc and not os.path.exists(state)  # the state folder goes with success
    assert [h["epoch"] for h in meta.extra["history"]] == [1, 2, 3]
    assert [h["val_acc"] is not None for h in meta.extra["history"]] == [True, True, True]
    assert meta.extra["config"]["label_smoothing"] == 0.0 and meta.extra["config"]["schedule"] == "cosine"


def test_unfinished_runs_are_not_overwritten_and_resume_checks_the_settings(tmp_path, capsys):
    from infer_fast.cli import main

    out, _ = teacher.train_teacher(_tiny(tmp_path, "t.safetensors", stop_after=1))
    argv = ["train-teacher", "--data", "digits", "--arch", "convnet", "--width", "0.125", "--epochs", "3",
            "--image-size", "8", "--batch-size", "64", "--lr", "0.05", "--workers", "0", "--loader", "torch",
            "--no-progress", "--out", out]
    assert main(argv) == 2  # no --resume: one line, the state kept
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds an unfinished run" in err and "--resume" in err
    assert main([*argv[:-2], "--lr", "0.1", "--out", out, "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lr: checkpoint 0.05 vs now 0.1" in err
    assert os.path.exists(os.path.join(out + teacher.STATE_SUFFIX, "checkpoint.pt"))
    assert main([*argv, "--resume", "--eval-every", "1"]) == 0  # settings that do not change the result may
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["finished"] is True


def test_init_starts_from_a_teachers_weights_and_refuses_another_geometry(tmp_path, capsys):
    from safetensors.torch import load_file

    from infer_fast.cli import main

    geometry = dict(image_size=16, batch_size=32)  # 16 px: a teacher well above chance in 3 short epochs
    first = teacher.train_teacher(_tiny(tmp_path, "first.safetensors", **geometry))[1]
    # a vanishing learning rate: the warm-started weights are the first teacher's, so is its accuracy
    out, meta = teacher.train_teacher(_tiny(tmp_path, "warm.safetensors", epochs=1, lr=1e-12, **geometry,
                                            init=str(tmp_path / "first.safetensors")))
    a, b = load_file(str(tmp_path / "first.safetensors")), load_file(out)
    weights = [k for k in a if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in weights)
    assert meta.val_acc == pytest.approx(first.val_acc, abs=0.02) and first.val_acc > 0.5
    assert meta.extra["init"] == {"file": "first.safetensors", "sha256": first.fingerprint,
                                  "val_acc": first.val_acc, "epochs": 3}
    cold = teacher.train_teacher(_tiny(tmp_path, "cold.safetensors", epochs=1, lr=1e-12, **geometry))[1]
    assert cold.val_acc < first.val_acc - 0.2  # without --init the same run starts from random weights
    # the init file is a setting: a resume with another (or none) is refused like any changed setting
    assert teacher.RESUME_KEYS and "init" in teacher.RESUME_KEYS
    part = teacher.train_teacher(_tiny(tmp_path, "part.safetensors", epochs=2, stop_after=1, **geometry,
                                       init=str(tmp_path / "first.safetensors")))[0]
    assert main(["train-teacher", "--data", "digits", "--arch", "convnet", "--width", "0.125", "--image-size", "16",
                 "--epochs", "2", "--batch-size", "32", "--lr", "0.05", "--workers", "0", "--loader", "torch",
                 "--no-progress", "--out", part, "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "init: checkpoint" in err and "vs now None" in err
    argv = ["train-teacher", "--data", "digits", "--arch", "convnet", "--image-size", "16", "--epochs", "1",
            "--workers", "0", "--loader", "torch", "--no-progress", "--out", str(tmp_path / "x.safetensors"),
            "--init", str(tmp_path / "first.safetensors")]
    assert main([*argv, "--width", "0.25"]) == 2  # another width: one line naming the file and what was expected
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--init" in err and "width 0.125" in err and "expected width 0.25" in err
    assert main([*argv[:-1], str(tmp_path / "missing.safetensors")]) == 2
    assert "--init" in capsys.readouterr().err and not os.path.exists(tmp_path / "x.safetensors")


def test_distill_from_learns_from_the_teachers_alone_and_records_them(tmp_path, capsys):
    from infer_fast.cli import main

    geometry = dict(image_size=16, batch_size=32)
    first = teacher.train_teacher(_tiny(tmp_path, "first.safetensors", **geometry))[1]
    path = str(tmp_path / "first.safetensors")
    # --kd-weight 1: the true labels carry no weight, so all the student learns comes through the distillation term
    kd = _tiny(tmp_path, "kd.safetensors", **geometry, distill_from=[path], kd_weight=1.0, kd_temperature=2.0)
    out, meta = teacher.train_teacher(kd)
    blind = teacher.train_teacher(_tiny(tmp_path, "blind.safetensors", **geometry, distill_from=[path],
                                        kd_weight=1.0, kd_temperature=2.0, lr=1e-12))[1]
    assert blind.val_acc < 0.3 < 0.5 < meta.val_acc  # not the initialisation: learnt, and only from the teacher
    assert meta.extra["distill_from"] == {
        "teachers": [{"file": "first.safetensors", "sha256": first.fingerprint, "arch": "convnet", "width": 0.125,
                      "val_acc": first.val_acc}], "weight": 1.0, "temperature": 2.0}
    # the student agrees with its teacher on most validation images
    student, teach = load_teacher(out)[0].eval(), load_teacher(path)[0].eval()
    from infer_fast.data import make_loader

    val = make_loader("digits", "eval", batch_size=256, image_size=16, loader="torch", num_workers=0)
    with torch.no_grad():
        agree = [(student(x).argmax(1) == teach(x).argmax(1)).float().mean() for x, _ in val]
    assert float(torch.stack(agree).mean()) > 0.6
    # the distilling teachers are a setting: a resume with none is refused
    assert {"distill_from", "kd_weight", "kd_temperature"} <= set(teacher.RESUME_KEYS)
    part = teacher.train_teacher(_tiny(tmp_path, "part.safetensors", epochs=2, stop_after=1, **geometry,
                                       distill_from=[path]))[0]
    argv = ["train-teacher", "--data", "digits", "--arch", "convnet", "--width", "0.125", "--image-size", "16",
            "--batch-size", "32", "--lr", "0.05", "--workers", "0", "--loader", "torch", "--no-progress"]
    assert main([*argv, "--epochs", "2", "--out", part, "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "distill_from: checkpoint" in err
    for flags, expected in ((["--kd-weight", "1.5"], "--kd-weight"), (["--kd-temperature", "0"], "--kd-temperature"),
                            (["--distill-from", str(tmp_path / "missing.safetensors")], "--distill-from")):
        assert main([*argv, "--epochs", "1", "--out", str(tmp_path / "x.safetensors"), *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err
    assert not os.path.exists(tmp_path / "x.safetensors")


def test_fp16_storage_halves_the_file_and_loads_back_to_float32(tmp_path):
    import torch.nn.functional as F

    from infer_fast.data import make_loader

    teacher.train_teacher(_tiny(tmp_path, "fp32.safetensors", epochs=1))
    teacher.train_teacher(_tiny(tmp_path, "fp16.safetensors", epochs=1, storage="fp16"))
    full, half = (load_teacher(str(tmp_path / f))[0] for f in ("fp32.safetensors", "fp16.safetensors"))
    assert {p.dtype for p in half.parameters()} == {torch.float32}
    assert os.path.getsize(tmp_path / "fp16.safetensors") < 0.6 * os.path.getsize(tmp_path / "fp32.safetensors")
    x, _ = next(iter(make_loader("digits", "eval", batch_size=64, image_size=8, device="cpu", loader="torch")))
    with torch.no_grad():
        p, q = F.softmax(full.eval()(x), 1), F.softmax(half.eval()(x), 1)
    assert float((p - q).abs().max()) < 1e-2 and torch.equal(p.argmax(1), q.argmax(1))


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_schedules_start_peak_and_end_where_documented(schedule):
    cfg = TeacherConfig(epochs=4, lr=0.2, schedule=schedule, warmup_epochs=1.0 if schedule == "cosine" else 0.0)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr, momentum=0.9)
    sched = teacher.make_scheduler(cfg, opt, steps_per_epoch=10)
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.2 / 25) and max(lrs) == pytest.approx(0.2, rel=1e-3) and lrs[-1] < 0.2 * 0.01
    peak = lrs.index(max(lrs))
    assert peak == 10 if schedule == "cosine" else 9 <= peak <= 10  # end of the warm-up: epoch 1 / 25 % of 40
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:], strict=False))  # then annealed monotonically


def test_log_dir_writes_tensorboard_scalars_or_says_in_one_line_that_it_cannot(tmp_path, monkeypatch, capsys):
    import builtins

    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    teacher.train_teacher(_tiny(tmp_path, "t.safetensors", epochs=2, eval_every=1, log_dir=str(tmp_path / "tb")))
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"teacher/train_loss", "teacher/val_top1", "teacher/lr", "teacher/images_per_s"} <= tags
    assert [e.step for e in events.Scalars("teacher/val_top1")] == [1, 2]

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kw):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    _, meta = teacher.train_teacher(_tiny(tmp_path, "u.safetensors", epochs=1, log_dir=str(tmp_path / "tb2")))
    err = capsys.readouterr().err.strip().splitlines()
    assert meta is not None and len([e for e in err if "tensorboard package is not installed" in e]) == 1


def test_precise_bn_sets_the_exact_average_of_the_batches_it_sees():
    class Loader:
        def __init__(self, batches):
            self.batches, self.epochs = batches, []

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

        def __iter__(self):
            return iter(self.batches)

    torch.manual_seed(0)
    conv, bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, momentum=0.1)
    model = torch.nn.Sequential(conv, bn, torch.nn.ReLU()).eval()
    batches = [(torch.randn(8, 3, 6, 6) * (1 + i), None) for i in range(5)]
    loader = Loader(batches)
    assert teacher.precise_bn(model, loader, 3, epoch=7) == 3 and loader.epochs == [7]
    with torch.no_grad():
        feats = [conv(x) for x, _ in batches[:3]]
    mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.var((0, 2, 3), unbiased=True) for f in feats]).mean(0)
    torch.testing.assert_close(bn.running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, var, rtol=1e-5, atol=1e-6)
    assert bn.momentum == 0.1 and not model.training  # restored
    before = [p.clone() for p in model.parameters()]
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters(), strict=True))
    assert teacher.precise_bn(torch.nn.Linear(2, 2), loader, 3, epoch=0) == 0  # nothing to recompute
