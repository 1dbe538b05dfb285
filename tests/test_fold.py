"""The prepared synthesis teacher (infer_fast.synth.fold): BN folding with statistics recovery, channels-last,
torch.compile, the bf16 guard; and optimise_batch with a prepared teacher against a plain one."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import assert_close, requires_cuda
from synth_helpers import NORM, run_batch

from infer_fast.models.archs import build_model
from infer_fast.ops.bn_stat_loss import BNStatMatcher
from infer_fast.synth import fold as fold_mod
from infer_fast.synth.augment import AugSettings
from infer_fast.synth.config import DistillConfig, auto_problems_per_batch
from infer_fast.synth.fold import FoldedTap, InputTap, SynthesisTeacher, autocast
from infer_fast.synth.methods.infer import infer_problems


def _calibrated(model: nn.Module, size: int, dtype=torch.float32) -> nn.Module:
    """Random weights, running statistics from train-mode passes, affine BN parameters away from 1/0."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 1.5 + 0.25)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.3)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, size, size, generator=g))
    model.eval().to(dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _hooked(model, x, groups, fbm=10.0):
    """(logits, BN loss, dL/dx) of the unprepared model through BNStatMatcher (the definition)."""
    x = x.clone().requires_grad_(True)
    with BNStatMatcher(model, groups=groups, first_bn_multiplier=fbm) as bn:
        logits = model(x)
        loss = bn.loss()
    (gx,) = torch.autograd.grad(logits.square().sum() + loss.sum(), x)
    return logits.detach(), loss.detach(), gx


def _prepared(teacher, x, groups):
    teacher.groups = groups
    x = x.clone().requires_grad_(True)
    logits, loss = teacher(x)
    (gx,) = torch.autograd.grad(logits.square().sum() + loss.sum(), x)
    return logits.detach(), loss.detach(), gx


@pytest.mark.parametrize("arch,size", [("resnet18_cifar", 16), ("resnet18", 32), ("convnet", 16),
                                       ("cifar_resnet20", 16), ("mobilenet_v2", 32)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_folded_teacher_equals_bn_hooks_float64(arch, size, channels_last):
    """Folding is exact: logits, per-group BN loss and input gradient match the hooked model in float64."""
    model = _calibrated(build_model(arch, 7, size, width=0.25), size, torch.float64)
    teacher = SynthesisTeacher(model, fold_bn=True, channels_last=channels_last, probe_size=size)
    assert teacher.report["fold_error"] is None
    assert teacher.report["folded"] == teacher.report["bn_layers"] > 0
    x = torch.randn(6, 3, size, size, dtype=torch.float64)
    want = _hooked(model, x, groups=3)
    got = _prepared(teacher, x, groups=3)
    for what, a, b in zip(("logits", "bn loss", "input gradient"), got, want, strict=True):
        assert_close(a, b, atol=1e-9 * max(1.0, float(b.abs().max())), rtol=1e-8, what=f"{arch} {what}")


def test_unfolded_teacher_and_float32():
    model = _calibrated(build_model("resnet18_cifar", 5, 16, width=0.25), 16)
    x = torch.randn(4, 3, 16, 16)
    want = _hooked(model, x, groups=2)
    for fold in (False, True):
        teacher = SynthesisTeacher(model, fold_bn=fold, channels_last=True, probe_size=16)
        assert teacher.report["folded"] == (20 if fold else 0)
        got = _prepared(teacher, x, groups=2)
        for what, a, b in zip(("logits", "bn loss", "input gradient"), got, want, strict=True):
            assert_close(a, b, atol=1e-4 * float(b.abs().max()), rtol=1e-3, what=f"fold={fold} {what}")


def test_model_is_not_modified_and_inplace_add_is_detected():
    """torchvision's BasicBlock adds the identity in place onto bn2's output: that tap must hand out a copy."""
    model = _calibrated(build_model("resnet18", 4, 32, width=0.25), 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    teacher = SynthesisTeacher(model, fold_bn=True, probe_size=32)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"SynthesisTeacher modified the original model's {k}"
    taps = {n: m for n, m in teacher.net.named_modules() if isinstance(m, FoldedTap)}
    assert taps["layer1.0.bn2"].copy_out and not taps["layer1.0.bn1"].copy_out
    assert isinstance(model.layer1[0].bn1, nn.BatchNorm2d)  # the original keeps its BatchNorms


class _SharedConvOutput(nn.Module):
    """A conv output feeding its BN and also another branch: folding it would change the other branch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        y = self.conv(x)
        z = F.relu(self.bn(y)) + y
        return self.head(z.mean((2, 3)))


class _BnFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn2 = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.bn2(self.conv(self.bn(x))).mean((2, 3)))


def test_unsafe_fold_is_refused_by_verification():
    model = _calibrated(_SharedConvOutput(), 8, torch.float64)
    teacher = SynthesisTeacher(model, fold_bn=True, probe_size=8)
    assert teacher.report["folded"] == 0 and "differ" in teacher.report["fold_error"]
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    for a, b in zip(_prepared(teacher, x, 2), _hooked(model, x, 2), strict=True):
        assert_close(a, b, atol=1e-10, rtol=1e-9, what="unfolded fallback")


def test_bn_without_conv_and_zero_gamma_stay_unfolded():
    model = _calibrated(_BnFirst(), 8, torch.float64)
    with torch.no_grad():
        model.bn2.weight[1] = 0.0  # y no longer carries x in that channel: bn2 must keep its module
    teacher = SynthesisTeacher(model, fold_bn=True, probe_size=8)
    kinds = {n: type(m) for n, m in teacher.net.named_modules() if isinstance(m, FoldedTap | InputTap)}
    assert kinds == {"bn": InputTap, "bn2": InputTap}
    assert teacher.report["fold_error"].startswith("no BatchNorm")
    model2 = _calibrated(_BnFirst(), 8, torch.float64)
    teacher2 = SynthesisTeacher(model2, fold_bn=True, probe_size=8)
    assert {type(m) for n, m in teacher2.net.named_modules() if n in ("bn", "bn2")} == {InputTap, FoldedTap}
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    for a, b in zip(_prepared(teacher2, x, 4), _hooked(model2, x, 4), strict=True):
        assert_close(a, b, atol=1e-9, rtol=1e-8, what="partly folded")


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="no BatchNorm"):
        SynthesisTeacher(nn.Sequential(nn.Conv2d(3, 3, 1)))
    with pytest.raises(ValueError, match="track_running_stats"):
        SynthesisTeacher(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3, track_running_stats=False)))
    with pytest.raises(ValueError, match="backend"):
        SynthesisTeacher(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)), backend="cuda")


def test_compiled_teacher_matches_eager():
    model = _calibrated(build_model("convnet", 5, 16, width=0.125), 16)
    eager = SynthesisTeacher(model, fold_bn=True, channels_last=True, probe_size=16)
    compiled = SynthesisTeacher(model, fold_bn=True, channels_last=True, compile=True, probe_size=16)
    assert eager.runner() is eager and compiled.runner() is compiled.runner() is not compiled
    assert len(list(compiled.modules())) == len(list(eager.modules()))  # the compiled wrapper is no submodule
    x = torch.randn(4, 3, 16, 16)
    for groups in (2, 4):
        want = _prepared(eager, x, groups)
        compiled.groups = groups
        xg = x.clone().requires_grad_(True)
        logits, loss = compiled.runner()(xg)
        assert loss.shape == (groups,)
        (gx,) = torch.autograd.grad(logits.square().sum() + loss.sum(), xg)
        for what, a, b in zip(("logits", "bn loss", "grad"), (logits, loss, gx), want, strict=True):
            assert_close(a, b, atol=1e-4 * float(b.abs().max()), rtol=1e-4, what=f"compiled {what}")


def test_bf16_guard(monkeypatch):
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="precision"):
        autocast(cpu, "fp16")
    assert isinstance(autocast(cpu, "fp32"), type(autocast(cpu, "fp32")))
    monkeypatch.setattr(fold_mod, "cpu_bf16_error", lambda: "a bf16 convolution kills the process with SIGILL")
    with pytest.raises(RuntimeError, match="SIGILL.*--precision fp32"):
        autocast(cpu, "bf16")
    monkeypatch.setattr(fold_mod, "cpu_bf16_error", lambda: None)
    ctx = autocast(cpu, "bf16")
    with ctx:
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="precision"):
        DistillConfig(data="digits", precision="fp16").validate()
    assert DistillConfig().precision == "fp32"


def test_bf16_probe_reports_a_crash(monkeypatch):
    """The probe runs in a child process: a child killed by a signal is reported, not inherited."""
    fold_mod.cpu_bf16_error.cache_clear()
    monkeypatch.setattr(fold_mod, "_PROBE", "import os, signal; os.kill(os.getpid(), signal.SIGILL)")
    try:
        assert "SIGILL" in fold_mod.cpu_bf16_error()
    finally:
        fold_mod.cpu_bf16_error.cache_clear()


def test_auto_problems_per_batch():
    assert auto_problems_per_batch(10, 0, 32) == 4  # CIFAR-10: 40 images per forward
    assert auto_problems_per_batch(100, 0, 32) == 1
    assert auto_problems_per_batch(1000, 16, 224) == 1  # ImageNet in chunks of 16: the chunk is batch enough
    assert auto_problems_per_batch(10, 0, 8) == 16  # capped
    with pytest.raises(ValueError, match="problems-per-batch"):
        DistillConfig(data="digits", problems_per_batch=-1).validate()


def test_optimise_batch_prepared_equals_plain():
    """The levers change nothing but float32 rounding: the same losses over 10 iterations as the plain teacher."""
    g = torch.Generator().manual_seed(0)
    c, s = 5, 16
    naturals = torch.randint(0, 256, (3, c, 3, s, s), generator=g, dtype=torch.uint8)
    model = _calibrated(build_model("resnet18_cifar", c, s, width=0.25), s)
    problems = infer_problems(naturals, 1, NORM)
    base = naturals.reshape(-1, 3, s, s)
    kw = dict(iterations=10, aug=AugSettings(small=True, jitter=2), log_every=5)
    plain = run_batch(problems, model, base, *NORM.tensors(), **kw)
    prepared = SynthesisTeacher(model, fold_bn=True, channels_last=True, probe_size=s)
    fast = run_batch(problems, prepared, base, *NORM.tensors(), **kw)
    assert prepared.groups == len(problems)
    # iteration 0 sees the same inputs: what differs is the levers' float32 rounding alone
    assert_close(fast.ce[0], plain.ce[0], atol=1e-6, rtol=1e-4, what="CE at iteration 0")
    assert_close(fast.bn[0], plain.bn[0], atol=1e-6, rtol=1e-4, what="BN loss at iteration 0")
    # (2-4e-7 on the AMD EPYC host of this change). Later iterations follow compensators that this rounding,
    # amplified by Adam's normalised steps, can move apart, and how far varies from run to run: of five runs there,
    # two stayed within 1.2e-4 and three reached ~1.4e-3 at single iterations (BN at iteration 7 58.37 vs 58.45, at 9
    # 53.07 vs 53.04: both directions; mean over the iterations 3e-4). So the trajectory is judged as bench_synthesis
    # judges fp32 synthesis: the mean over the iterations of each problem, and every iteration inside a looser bound
    # that a systematic offset still breaks
    for key in ("ce", "bn"):
        a, b = getattr(fast, key), getattr(plain, key)
        assert_close(a.mean(0), b.mean(0), atol=1e-5, rtol=3e-3, what=f"{key} mean over the iterations")
        assert_close(a, b, atol=1e-5, rtol=1e-2, what=f"{key} per iteration")
    assert not torch.equal(fast.params[0], problems[0].init), "the UFC did not move"


def test_lever_flags_map_onto_the_config():
    import argparse

    from infer_fast.synth.commands import add_config_arguments, config_from_args

    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_config_arguments(parser)
    cfg = config_from_args(parser.parse_args(["--data", "digits"]))
    assert (cfg.fold_bn, cfg.channels_last, cfg.compile, cfg.precision, cfg.problems_per_batch) == (
        True, True, False, "fp32", 0)
    cfg = config_from_args(parser.parse_args(["--data", "digits", "--no-fold-bn", "--no-channels-last",
                                              "--compile", "--precision", "bf16", "--problems-per-batch", "3"]))
    assert (cfg.fold_bn, cfg.channels_last, cfg.compile, cfg.precision, cfg.problems_per_batch) == (
        False, False, True, "bf16", 3)


@requires_cuda
def test_cuda_bf16_channels_last_synthesis_matches_fp32():
    """The GPU levers: bf16 autocast of a folded channels-last teacher tracks the fp32 losses."""
    dev = torch.device("cuda")
    model = _calibrated(build_model("resnet18_cifar", 5, 16, width=0.25), 16).to(dev)
    g = torch.Generator().manual_seed(0)
    naturals = torch.randint(0, 256, (2, 5, 3, 16, 16), generator=g, dtype=torch.uint8)
    problems = infer_problems(naturals, 1, NORM)
    kw = dict(iterations=5, aug=AugSettings(small=True, jitter=2), log_every=5)
    d = [t.to(dev) for t in (naturals.reshape(-1, 3, 16, 16), *NORM.tensors())]
    teacher = SynthesisTeacher(model, fold_bn=True, channels_last=True, probe_size=16)
    fp32 = run_batch(problems, teacher, *d, **kw)
    bf16 = run_batch(problems, teacher, *d, precision="bf16", **kw)
    assert_close(bf16.ce[0], fp32.ce[0], atol=0.05, rtol=0.05, what="bf16 CE at iteration 0")
    assert_close(bf16.bn[0], fp32.bn[0], atol=0.05, rtol=0.05, what="bf16 BN loss at iteration 0")


def test_optimise_batch_refuses_a_teacher_prepared_for_other_settings():
    model = _calibrated(build_model("convnet", 5, 16, width=0.125), 16)
    teacher = SynthesisTeacher(model, first_bn_multiplier=3.0, probe_size=16)
    naturals = torch.randint(0, 256, (1, 5, 3, 16, 16), dtype=torch.uint8)
    problems = infer_problems(naturals, 1, NORM)
    with pytest.raises(ValueError, match="first_bn_multiplier=3.0"):
        run_batch(problems, teacher, naturals.reshape(-1, 3, 16, 16), *NORM.tensors(), iterations=1,
                  aug=AugSettings(small=True, jitter=0))
