"""infer_fast.train.teacher: teacher training (``infer-fast train-teacher``) and the cached default ensemble."""

from __future__ import annotations

import argparse
import json
import os

import pytest

from infer_fast.models import load_teacher
from infer_fast.train import teacher
from infer_fast.train.commands import register_train_teacher
from infer_fast.train.commands import teacher_config_from_args as config_from_args
from infer_fast.train.teacher import TeacherConfig, default_teachers


# ------------------------------------------------------------------------------------------------ training
@pytest.mark.slow  # ~35 s on 2 shared cores: the one real training run (convnet w0.25, 3 epochs)
def test_train_teacher_cli_on_digits(tmp_path, capsys):
    out = str(tmp_path / "digits.safetensors")
    parser = argparse.ArgumentParser()
    register_train_teacher(parser.add_subparsers())
    args = parser.parse_args(["train-teacher", "--dataset", "digits", "--arch", "convnet", "--width", "0.25",
                              "--epochs", "3", "--batch-size", "64", "--lr", "0.05", "--image-size", "32",
                              "--out", out, "--loader", "torch", "--num-workers", "0", "--no-progress"])
    cfg = config_from_args(args)
    assert cfg == TeacherConfig(source="digits", arch="convnet", width=0.25, epochs=3, batch_size=64, lr=0.05,
                                image_size=32, out=out, loader="torch", num_workers=0, progress=False)
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model, meta = load_teacher(out)
    assert report["out"] == out and report["sha256"] == meta.fingerprint
    assert meta.val_acc > 0.9, f"digits val acc {meta.val_acc}"
    assert meta.num_classes == 10 and meta.image_size == 32 and meta.extra["config"]["epochs"] == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["train-teacher", "--dataset", "digits", "--arch", "resnet99", "--out", out])


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
