"""`infer-fast distill --plan`: the budget, FLOPs counted on the real teachers, a timed probe, a labelled projection
and a torchrun command that parses back to the same config; nothing optimised, no output folder."""

from __future__ import annotations

import json
import os
import shlex

import pytest
import torch

from infer_fast.cli import build_parser, main
from infer_fast.config_cli import config_from_args
from infer_fast.models import build_model, save_teacher
from infer_fast.models.checkpoint import TeacherMeta
from infer_fast.synth.config import DistillConfig
from infer_fast.synth.plan import teacher_flops


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> list[str]:
    from infer_fast.data import digits

    mean, std = digits.mean_std(16)
    paths = []
    for arch, width in (("convnet", 0.25), ("resnet18_cifar", 0.125)):
        torch.manual_seed(0)
        path = str(tmp_path_factory.mktemp("t") / f"{arch}.safetensors")
        meta = TeacherMeta(arch=arch, num_classes=10, classes=list(digits.CLASSES), mean=mean, std=std,
                           image_size=16, width=width)
        save_teacher(build_model(arch, 10, 16, width).eval(), meta, path)
        paths.append(path)
    return paths


def test_plan_reports_budget_flops_probe_projection_and_command(tmp_path, teachers, capsys):
    out, js = str(tmp_path / "run"), str(tmp_path / "plan.json")
    argv = ["distill", "--data", "digits", "--teachers", *teachers, "--ipc", "10", "--image-size", "16",
            "--iterations", "50", "--class-chunk", "4", "--out", out, "--device", "cpu"]
    assert main([*argv, "--plan", "--plan-json", js, "--plan-gpus", "16", "--plan-nodes", "2",
                 "--plan-probe-iterations", "1"]) == 0
    printed = capsys.readouterr().out
    assert not os.path.exists(out)  # nothing optimised, nothing written but the plan
    plan = json.load(open(js))
    # K = floor(10 * 10 / (10 + 2)) = 8 sets, 16 UFCs, 8 * 10 * 3 = 240 synthetic images
    assert plan["budget"]["K"] == 8 and plan["budget"]["ufcs"] == 16 and plan["budget"]["synthetic_images"] == 240
    assert plan["work"]["problems"] == 16 and plan["work"]["class_chunks"] == 3 and plan["work"]["iterations"] == 50
    from infer_fast.models import load_teacher

    total = 0
    for row, path in zip(plan["teachers"], teachers, strict=True):
        model, _ = load_teacher(path)
        model.requires_grad_(False)
        fwd, both = teacher_flops(model, 16, torch.device("cpu"))
        assert row["synthesis_flops_per_image_iteration"] == both > fwd == row["forward_flops_per_image"] > 0
        assert row["flops_per_problem"] == both * 10 * 50
        assert row["seconds_per_iteration"] > 0 and row["probe_images_per_problem"] == 4
        total += row["flops_per_problem"] * row["problems"]
    assert plan["flops"]["synthesis"] == total
    assert plan["projection"]["label"].startswith("PROJECTION") and plan["projection"]["gpus"] == 16
    assert "PROJECTION, not a measurement" in printed
    # the command runs this very config on 2 nodes x 8 GPUs
    cmd = shlex.split(plan["torchrun"])
    assert cmd[:3] == ["torchrun", "--nnodes=2", "--nproc-per-node=8"] and "--rdzv-backend=c10d" in cmd
    rebuilt = config_from_args(build_parser().parse_args(cmd[cmd.index("infer_fast") + 1:]), DistillConfig)
    saved = {k: v for k, v in plan["config"].items() if k not in ("device", "teacher_cache")}
    assert {k: v for k, v in rebuilt.to_dict().items() if k in saved} == saved
