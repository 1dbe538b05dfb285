"""The graph-ready synthesis iteration (``optimise_batch(iteration="static")``) against the default loop, the
``--cuda-graphs`` refusal off CUDA, and (on a GPU) the captured graph against the loop without it."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import assert_close, requires_cuda
from synth_helpers import NORM, run_batch, setup_naturals, tiny_teacher

from infer_fast.synth.augment import AugSettings, apply_aug, apply_aug_static, aug_row, aug_width, draw_aug
from infer_fast.synth.config import DistillConfig
from infer_fast.synth.methods.infer import infer_problems

# The static loop resamples the crop with a matrix product instead of interpolate and runs Adam's capturable
# arithmetic: the same maths, rounded differently. Over a few dozen Adam steps the parameters drift apart by a few
# float32 rounding steps, never by an Adam step (lr 0.25): the bounds below are ~10x the differences measured.
PARAM_ATOL = 2e-4
LOSS_RTOL = 1e-5


def _problems(size: int, k_sets: int = 2):
    naturals, mean, std, lo, hi = setup_naturals(k_sets=k_sets, s=size)
    problems = infer_problems(naturals, 1, NORM)
    return problems, naturals.reshape(-1, 3, size, size), mean, std, lo, hi


def _run(problems, base, mean, std, lo, hi, iteration: str, *, small: bool, iterations: int = 20, log_every: int = 10,
         model=None, **kw):
    return run_batch(problems, model if model is not None else tiny_teacher(), base, mean, std, lo, hi,
                     iterations=iterations, aug=AugSettings(small=small, jitter=2 if small else 8),
                     log_every=log_every, iteration=iteration, **kw)


def _compare(a, b, what: str) -> tuple[float, float]:
    dp = max(float((x - y).abs().max()) for x, y in zip(a.params, b.params, strict=True))
    for x, y in zip(a.params, b.params, strict=True):
        assert_close(y, x, atol=PARAM_ATOL, rtol=0, what=f"{what}: UFC")
    dl = 0.0
    for key in ("ce", "bn"):
        ref, got = getattr(a, key), getattr(b, key)
        assert_close(got, ref, atol=1e-7, rtol=LOSS_RTOL, what=f"{what}: {key} history")
        dl = max(dl, float(((got - ref).abs() / ref.abs().clamp_min(1e-12)).max()))
    print(f"{what}: max |dUFC| {dp:.2e}, max relative loss difference {dl:.2e}")
    return dp, dl


@pytest.mark.parametrize("small,size,kw", [
    (True, 8, {}),  # CIFAR-style: roll only
    (False, 64, {}),  # ImageNet-style: random resized crop + flip per problem, then roll
    (False, 32, {"class_chunk": 2, "log_every": 3}),  # chunks accumulate; windows of pre-drawn parameters
])
def test_static_iteration_equals_default(small, size, kw):
    """Pre-drawn parameters in static tensors, tensor lr, Adam's capturable arithmetic and the fixed-shape augment
    follow the default loop to float rounding (the roll-only augmentation exactly)."""
    problems, base, mean, std, lo, hi = _problems(size)
    runs = [_run(problems, base, mean, std, lo, hi, it, small=small, **kw) for it in ("eager", "static")]
    assert runs[1].ce.shape == (20, len(problems))
    _compare(*runs, f"{'small' if small else 'imagenet-style'} {size} px {kw}")


def test_static_augment_matches_apply_aug():
    """apply_aug_static over a batch of problems equals apply_aug per problem, forward and backward: the roll bit
    for bit, the crop (per problem and per image) to float rounding."""
    n, size, num_p = 4, 24, 3
    for s in (AugSettings(small=True, jitter=5), AugSettings(small=False, jitter=5),
              AugSettings(small=False, jitter=0, per_image_crop=True)):
        for seed in range(8):
            gens = [torch.Generator().manual_seed(100 * seed + j) for j in range(num_p)]
            drawn = [draw_aug(g, s, n, size) for g in gens]
            params = torch.tensor([aug_row(p) for p in drawn])
            assert params.shape == (num_p, aug_width(s, n))
            ids = range(1, 3)  # a class chunk: per-image crops are picked by image index
            x = torch.randn(num_p * len(ids), 3, size, size, dtype=torch.float64).float().requires_grad_(True)
            nj = len(ids)
            ref = torch.cat([apply_aug(x[j * nj:(j + 1) * nj], drawn[j], ids) for j in range(num_p)])
            got = apply_aug_static(x, params, ids)
            w = torch.randn_like(ref)
            (g_ref,) = torch.autograd.grad((ref * w).sum(), x)
            (g_got,) = torch.autograd.grad((got * w).sum(), x)
            if s.small:
                assert torch.equal(got, ref) and torch.equal(g_got, g_ref), "the roll must be exact"
            else:
                assert_close(got, ref, atol=2e-5, rtol=0, what=f"crop forward {s}")
                assert_close(g_got, g_ref, atol=2e-5, rtol=0, what=f"crop backward {s}")


def test_cuda_graphs_refused_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = DistillConfig(data="digits", cuda_graphs=True)
    for device in ("cpu", "auto"):
        with pytest.raises(ValueError, match=r"--cuda-graphs: expected a CUDA --device, got '--device \w+ \(cpu"):
            dataclasses.replace(cfg, device=device).validate()
    DistillConfig(data="digits").validate()  # the default stays valid on a CPU machine
    problems, base, mean, std, lo, hi = _problems(8)
    with pytest.raises(ValueError, match=r"--cuda-graphs .* needs a CUDA device, got device cpu"):
        _run(problems, base, mean, std, lo, hi, "graph", small=True, iterations=2)


def test_cli_flag():
    from infer_fast.cli import build_parser
    from infer_fast.synth.commands import config_from_args

    assert DistillConfig().cuda_graphs is False
    assert build_parser().parse_args(["distill", "--data", "digits", "--cuda-graphs"]).cuda_graphs is True
    with pytest.raises(ValueError, match="--cuda-graphs"):
        config_from_args(build_parser().parse_args(["distill", "--data", "digits", "--device", "cpu",
                                                    "--cuda-graphs"]))


# ---- on a GPU ---------------------------------------------------------------------------------------------


def _cuda_problems(size: int):
    problems, base, mean, std, lo, hi = _problems(size)
    moved = ("base_index", "ufc_index", "targets", "init", "lower", "upper")
    problems = [dataclasses.replace(p, **{k: getattr(p, k).cuda() for k in moved}) for p in problems]
    return problems, *(t.cuda() for t in (base, mean, std, lo, hi))


@requires_cuda
@pytest.mark.parametrize("small,size", [(True, 8), (False, 64)])
def test_cuda_graph_replay_equals_static_and_default(small, size, monkeypatch):
    """The captured iteration replays what the same iteration does eagerly (the same kernels in the same order),
    and follows the default CUDA loop to float rounding."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)  # as infer-fast distill runs on CUDA
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    problems, base, mean, std, lo, hi = _cuda_problems(size)
    runs = {it: _run(problems, base, mean, std, lo, hi, it, small=small, iterations=12, log_every=5,
                     model=tiny_teacher().cuda()) for it in ("eager", "static", "graph")}
    _compare(runs["static"], runs["graph"], f"CUDA graph vs static, {size} px")
    _compare(runs["eager"], runs["graph"], f"CUDA graph vs default, {size} px")


@requires_cuda
@pytest.mark.parametrize("iteration", ["eager", "graph"])
def test_cuda_iterations_do_not_synchronise(iteration):
    """Between the first iteration (index checks, lazy state, the capture) and the last (the host reads the losses),
    no iteration synchronises with the device."""
    problems, base, mean, std, lo, hi = _cuda_problems(64)
    iterations, done = 8, []

    def on_progress(n, ce, bn):
        done.append(n)
        # on from after the capture (iteration GRAPH_WARMUP) until before the last iteration, which logs
        torch.cuda.set_sync_debug_mode("error" if 3 <= len(done) < iterations - 1 else 0)

    try:
        res = _run(problems, base, mean, std, lo, hi, iteration, small=False, iterations=iterations,
                   log_every=iterations, on_progress=on_progress, model=tiny_teacher().cuda())
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert len(done) == iterations and torch.isfinite(res.ce).all()
