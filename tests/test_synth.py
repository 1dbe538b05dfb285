"""Synthesis internals: budget accounting, the batched UFC optimiser, the UFC bound rules, config/CLI."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import pytest
import torch
from synth_helpers import NORM, run_batch, setup_naturals, tiny_teacher

from infer_fast.ops.backend import get as get_op
from infer_fast.synth import budget, methods
from infer_fast.synth.augment import AugSettings, apply_aug, draw_aug
from infer_fast.synth.commands import add_config_arguments, config_from_args
from infer_fast.synth.config import DistillConfig
from infer_fast.synth.methods.infer import infer_problems
from infer_fast.synth.methods.sre2l import mean_image, sre2l_problems
from infer_fast.synth.problem import pinned_fraction, ufc_bounds
from infer_fast.synth.runner import resolve
from infer_fast.synth.ufc import NonFiniteLossError

BACKENDS = ["reference", "fused"]


def _fused_available() -> bool:
    try:
        import infer_fast.ops.compensator_broadcast  # noqa: F401
    except ImportError:
        return False
    return True


def _backend_param(name):
    return pytest.param(name, marks=pytest.mark.skipif(name == "fused" and not _fused_available(),
                                                       reason="compensator_broadcast op not built in this tree"))


BACKEND_PARAMS = [_backend_param(b) for b in BACKENDS]


# ---- budget -----------------------------------------------------------------------------------


def test_budget_spec_examples():
    st = methods.get("infer").storage(ipc=10, num_classes=100, num_teachers=4, image_size=32)
    assert st.num_natural_sets == 9
    assert (st.stored_naturals, st.stored_ufcs, st.num_synthetic) == (900, 36, 4500)
    assert st.stored_images <= st.budget_images == 1000
    assert st.stored_bytes == 900 * 3 * 32 * 32 + 36 * 3 * 32 * 32 * 2
    assert st.label_bytes == 4500 * 100 * 2
    st = methods.get("infer").storage(ipc=10, num_classes=1000, num_teachers=3, image_size=224)
    assert (st.num_natural_sets, st.stored_naturals, st.stored_ufcs, st.num_synthetic) == (9, 9000, 27, 36000)
    d = st.as_dict(full_train_bytes=10 ** 12)
    assert d["compression_ratio"] == pytest.approx(st.stored_bytes / 10 ** 12)


def test_budget_formula_exact():
    for c in (2, 3, 10, 100, 200, 1000):
        for m in (1, 3, 4, 7):
            for ipc in range(1, 60):
                expect = math.floor(Fraction(ipc) / (Fraction(m, c) + 1))
                if expect < 1:
                    with pytest.raises(ValueError, match=f"--ipc: expected >= {budget.min_ipc(c, m)}, the minimum"):
                        budget.num_natural_sets(ipc, c, m)
                    assert ipc < budget.min_ipc(c, m)
                else:
                    k = budget.num_natural_sets(ipc, c, m)
                    assert k == expect and k * c + k * m <= ipc * c


def test_budget_too_small_message():
    with pytest.raises(ValueError, match=r"--ipc: expected >= 2, the minimum .*C=10.*M=4.*got 1"):
        budget.num_natural_sets(1, 10, 4)


def test_baseline_storage():
    st = methods.get("sre2l").storage(ipc=5, num_classes=10, num_teachers=3, image_size=8)
    assert (st.stored_naturals, st.stored_ufcs, st.num_synthetic) == (50, 0, 50)


# ---- the optimiser on a tiny teacher ----------------------------------------------------------


def _run(problems, model, base, mean, std, lo, hi, backend, iterations=40, lr=0.25, small=True, **kw):
    return run_batch(problems, model, base, mean, std, lo, hi, iterations=iterations, lr=lr,
                     aug=AugSettings(small=small, jitter=2), backend=backend, log_every=10, **kw)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_ufc_changes_and_composed_images_stay_in_range(backend):
    """(CE falling is tested end to end on digits with trained teachers, tests/test_synth_run.py.)"""
    naturals, mean, std, lo, hi = setup_naturals()
    model = tiny_teacher()
    problems = infer_problems(naturals, 1, NORM)
    res = _run(problems, model, naturals.reshape(-1, 3, 8, 8), mean, std, lo, hi, backend, iterations=20)
    assert res.ce.shape == (20, 2) and res.bn.shape == (20, 2)
    compose = get_op("compensator_broadcast", backend)
    for j, p in enumerate(problems):
        u = res.params[j]
        assert u.abs().max() > 1e-2, "the UFC did not change"
        assert (u >= p.lower - 1e-6).all() and (u <= p.upper + 1e-6).all(), "u left its loose box"
        # every composed image is clamped into the valid range, per image
        x = compose(naturals[p.key[0]], u, torch.arange(5), torch.zeros(5, dtype=torch.int64), mean, std, lo, hi)
        assert (x >= lo.view(1, 3, 1, 1) - 1e-6).all() and (x <= hi.view(1, 3, 1, 1) + 1e-6).all()
        # the extreme pixels (image 0 black, image 1 white in channel 0) did not pin u there (the old rule did)
        assert (u[0, 0, 0].abs() * std[0] > 1 / 255).float().mean() > 0.5


def test_ufc_bound_rules():
    naturals, mean, std, lo, hi = setup_naturals()
    loose = infer_problems(naturals, 1, NORM)[0]
    span = (hi - lo).view(1, 3, 1, 1).expand(1, 3, 8, 8)
    assert torch.equal(loose.upper, span) and torch.equal(loose.lower, -span), "loose: [lo - hi, hi - lo]"
    # the withdrawn rule, kept for ablations: exactly the no-clamp condition, 0 where one image is black and one white
    p = infer_problems(naturals, 1, NORM, bound="set")[0]
    x = NORM.normalise(naturals[0])
    assert torch.allclose(p.lower[0, 0], torch.zeros(8, 8), atol=1e-6)
    assert torch.allclose(p.upper[0, 0], torch.zeros(8, 8), atol=1e-6)
    assert (p.lower <= 0).all() and (p.upper >= 0).all()
    assert torch.allclose((x + p.upper).amax(0), hi.view(3, 1, 1).expand(3, 8, 8))
    with pytest.raises(ValueError, match="rule must be one of"):
        ufc_bounds(x, lo, hi, "tight")
    assert pinned_fraction(torch.zeros(1, 3, 4, 4), std) == 1.0
    assert pinned_fraction(torch.full((1, 3, 4, 4), 2 / 255) / std.view(3, 1, 1), std) == 0.0


@pytest.mark.parametrize("backend", BACKEND_PARAMS[1:])
def test_batching_and_chunking(backend):
    """Two problems in one forward equal two separate runs (own BN groups, own RNG); class chunks run too."""
    naturals, mean, std, lo, hi = setup_naturals()
    model = tiny_teacher()
    base = naturals.reshape(-1, 3, 8, 8)
    problems = infer_problems(naturals, 1, NORM)
    together = _run(problems, model, base, mean, std, lo, hi, backend, iterations=10)
    for j, p in enumerate(problems):
        alone = _run([p], model, base, mean, std, lo, hi, backend, iterations=10)
        torch.testing.assert_close(alone.params[0], together.params[j], atol=1e-4, rtol=1e-4)
    chunked = _run(problems, model, base, mean, std, lo, hi, backend, iterations=10, class_chunk=2)
    assert chunked.ce.shape == (10, 2) and torch.isfinite(chunked.ce).all()
    again = _run(problems, model, base, mean, std, lo, hi, backend, iterations=10)
    for a, b in zip(together.params, again.params, strict=True):
        assert torch.equal(a, b), "the optimiser is not deterministic"


def test_imagenet_style_augmentation_runs():
    naturals, mean, std, lo, hi = setup_naturals(s=16)
    model = tiny_teacher()
    problems = infer_problems(naturals, 1, NORM)
    res = _run(problems[:1], model, naturals.reshape(-1, 3, 16, 16), mean, std, lo, hi, "reference",
               iterations=5, small=False)
    assert torch.isfinite(res.ce).all()
    g = torch.Generator().manual_seed(0)
    s = AugSettings(small=False, jitter=4, per_image_crop=True)
    p = draw_aug(g, s, 5, 16)
    assert len(p["crops"]) == 5
    x = torch.randn(5, 3, 16, 16)
    assert apply_aug(x, p, range(5)).shape == x.shape


def test_sre2l_problems_and_nonfinite_error():
    naturals, mean, std, lo, hi = setup_naturals()
    model = tiny_teacher()
    probs = sre2l_problems(2, 5, 1, 8, 0, NORM)
    assert [p.key for p in probs] == [(0, 0), (1, 0)] and probs[0].init.shape == (5, 3, 8, 8)
    base = mean_image(NORM, 8)
    res = _run(probs, model, base, mean, std, lo, hi, "reference", iterations=10)
    for u in res.params:
        assert (u >= lo.view(1, 3, 1, 1) - 1e-6).all() and (u <= hi.view(1, 3, 1, 1) + 1e-6).all()
    nat_init = sre2l_problems(2, 5, 1, 8, 0, NORM, naturals=naturals)
    assert torch.equal(nat_init[1].init, NORM.normalise(naturals[1]))
    q = NORM.quantise(nat_init[1].init)
    assert torch.equal(q, naturals[1]), "quantise(normalise(x)) must give x back"
    model[0].weight.data[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"problem \(k=0, m=0\) at iteration 0"):
        _run(probs, model, base, mean, std, lo, hi, "reference", iterations=10)


# ---- config / CLI -----------------------------------------------------------------------------


def test_config_file_and_flags(tmp_path):
    import argparse

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("data: digits\nipc: 3\nlr: 0.1\nproblems-per-batch: 2\n")
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_config_arguments(parser)
    cfg = config_from_args(parser.parse_args(["--config", str(cfg_file), "--ipc", "4", "--resume"]))
    assert (cfg.data, cfg.ipc, cfg.lr, cfg.problems_per_batch, cfg.resume) == ("digits", 4, 0.1, 2, True)
    assert cfg.beta1 == 0.5 and cfg.beta2 == 0.9 and cfg.first_bn_multiplier == 10.0
    assert cfg.jitter is None and cfg.ufc_bound == "loose", "per-dataset defaults are resolved per run"
    small, large = resolve(cfg, small=True, num_classes=10), resolve(cfg, small=False, num_classes=10)
    assert (small.jitter, small.iterations, small.r_bn) == (4, 1000, 1.0), "CIFAR-style defaults (INFER §3.2)"
    assert (large.jitter, large.iterations, large.r_bn) == (32, 2000, 0.01), "ImageNet-style defaults (INFER §3.2)"
    assert resolve(dataclasses.replace(cfg, jitter=7), small=False, num_classes=10).jitter == 7
    cfg_file.write_text("dataset: digits\nbogus: 1\n")  # the old key still reads
    with pytest.raises(ValueError, match="unknown field"):
        config_from_args(parser.parse_args(["--config", str(cfg_file)]))
    with pytest.raises(ValueError, match="--data: expected digits or a dataset folder, got None"):
        DistillConfig().validate()


def test_cli_registers_distill_and_export():
    from infer_fast.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["distill", "--data", "digits", "--method", "sre2l", "--ipc", "2", "--class-chunk", "5",
                              "--teachers", "a.safetensors", "b.safetensors", "--no-per-image-crop"])
    cfg = config_from_args(args)
    assert (cfg.method, cfg.ipc, cfg.class_chunk, cfg.teachers) == ("sre2l", 2, 5, ["a.safetensors", "b.safetensors"])
    assert cfg.per_image_crop is False and cfg.lr == 0.25 and cfg.r_bn is None and cfg.iterations is None
    args = parser.parse_args(["export", "some/dir", "--out", "out", "--format", "ddranking"])
    assert (args.distilled, args.out, args.format) == ("some/dir", "out", "ddranking")
    with pytest.raises(SystemExit):
        parser.parse_args(["distill", "--method", "bogus"])


# ---- methods ----------------------------------------------------------------------------------


def test_registry_and_a_content_control_is_one_subclass(monkeypatch):
    from infer_fast.synth.methods import Inputs, base
    from infer_fast.synth.methods.infer import Infer

    assert methods.names(controls=False) == ("infer", "sre2l", "random")
    assert methods.names() == ("infer", "sre2l", "random", "infer-noise", "infer-swap", "infer-views")
    with pytest.raises(ValueError, match="unknown synthesis method 'bogus'"):
        methods.get("bogus")
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))

    @methods.register
    class ZeroU(Infer):  # INFER's problems and budget, u stored as 0: the naturals' share of INFER's gain
        name = "zero-u"
        control = True

        def assemble(self, inputs, solved):
            tensors = super().assemble(inputs, solved)
            tensors["ufcs"] = torch.zeros_like(tensors["ufcs"])
            return tensors

    assert methods.names()[-1] == "zero-u" and "zero-u" not in methods.names(controls=False)
    with pytest.raises(ValueError, match="registered twice"):
        methods.register(ZeroU)
    control = methods.get("zero-u")
    naturals, *_ = setup_naturals()
    cfg = DistillConfig(data="digits", method="infer", ipc=3)
    storage = control.storage(3, 5, 1, 8)
    assert storage == dataclasses.replace(methods.get("infer").storage(3, 5, 1, 8), method="zero-u")
    inputs = Inputs(cfg, storage, NORM, 8, naturals)
    problems = control.problems(inputs)
    out = control.assemble(inputs, [(p, torch.ones(1, 3, 8, 8)) for p in problems])
    assert torch.equal(out["naturals"], naturals) and not out["ufcs"].any()


def test_initial_gradients_scale_with_r_bn_and_leave_the_optimisation_alone():
    from synth_helpers import NORM, run_batch, setup_naturals, tiny_teacher

    from infer_fast.synth.augment import AugSettings
    from infer_fast.synth.methods.infer import infer_problems

    naturals, mean, std, lo, hi = setup_naturals()
    problems = infer_problems(naturals, 1, NORM)
    base = naturals.reshape(-1, 3, 8, 8)
    aug = AugSettings(small=True, jitter=1)
    a = run_batch(problems, tiny_teacher(), base, mean, std, lo, hi, aug=aug, iterations=3, r_bn=1.0)
    b = run_batch(problems, tiny_teacher(), base, mean, std, lo, hi, aug=aug, iterations=3, r_bn=2.0)
    z = run_batch(problems, tiny_teacher(), base, mean, std, lo, hi, aug=aug, iterations=3, r_bn=0.0)
    assert a.gradients.shape == (len(problems), 3) and (a.gradients[:, 0] > 0).all()
    torch.testing.assert_close(b.gradients[:, 0], a.gradients[:, 0])  # |dCE| does not depend on r_bn
    torch.testing.assert_close(b.gradients[:, 1], 2 * a.gradients[:, 1])  # |r_bn dBN| scales with it
    torch.testing.assert_close(b.gradients[:, 2], a.gradients[:, 2])  # the cosine does not
    assert (z.gradients[:, 1] == 0).all()
    again = run_batch(problems, tiny_teacher(), base, mean, std, lo, hi, aug=aug, iterations=3, r_bn=1.0)
    assert all(torch.equal(p, q) for p, q in zip(a.params, again.params, strict=True))


def test_content_controls_keep_infers_naturals_and_transform_its_compensators():
    from infer_fast.synth.methods import Inputs

    naturals, *_ = setup_naturals(k_sets=3)
    cfg = DistillConfig(data="digits", method="infer", ipc=4, seed=4)
    infer = methods.get("infer")
    storage = infer.storage(4, 5, 1, 8)  # K = 4 * 5 // (5 + 1) = 3 sets
    inputs = Inputs(cfg, storage, NORM, 8, naturals)
    g = torch.Generator().manual_seed(0)
    solved = [(p, torch.randn(1, 3, 8, 8, generator=g)) for p in infer.problems(inputs)]
    base = infer.assemble(inputs, solved)
    u = base["ufcs"].float()
    noise = methods.get("infer-noise").assemble(inputs, solved)
    swap = methods.get("infer-swap").assemble(inputs, solved)
    for out in (noise, swap):
        assert torch.equal(out["naturals"], naturals) and out["ufcs"].dtype == torch.float16
    v = noise["ufcs"].float()
    torch.testing.assert_close(v.flatten(3).norm(dim=3), u.flatten(3).norm(dim=3), rtol=2e-3, atol=1e-3)
    assert abs(float(torch.nn.functional.cosine_similarity(u.flatten(), v.flatten(), dim=0))) < 0.2  # not u
    again = methods.get("infer-noise").assemble(inputs, solved)["ufcs"]
    assert torch.equal(again, noise["ufcs"])  # seeded by the run's seed
    assert torch.equal(swap["ufcs"][0], base["ufcs"][1]) and torch.equal(swap["ufcs"][2], base["ufcs"][0])
    assert methods.get("infer-noise").control and "infer-noise" not in methods.names(controls=False)
    with pytest.raises(ValueError, match="infer-swap: needs at least 2 natural sets"):
        methods.get("infer-swap").storage(2, 5, 1, 8)  # K = 1


def test_r_bn_0_runs_no_bn_statistic_backward_and_optimises_the_same_u():
    from synth_helpers import NORM, run_batch, setup_naturals, tiny_teacher
    from torch.utils._python_dispatch import TorchDispatchMode

    from infer_fast.synth.augment import AugSettings
    from infer_fast.synth.methods.infer import infer_problems

    class Calls(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += "bn_stat_loss_backward" in str(func)
            return func(*args, **(kwargs or {}))

    naturals, mean, std, lo, hi = setup_naturals()
    problems = infer_problems(naturals, 1, NORM)
    base = naturals.reshape(-1, 3, 8, 8)
    aug = AugSettings(small=True, jitter=1)
    runs = {}
    for r_bn in (0.0, 1e-30):  # 1e-30: the BN backward runs and adds nothing a float32 CE gradient can hold
        with Calls() as calls:
            res = run_batch(problems, tiny_teacher(), base, mean, std, lo, hi, aug=aug, iterations=4, r_bn=r_bn)
        runs[r_bn] = (res, calls.n)
    (zero, n_zero), (tiny, n_tiny) = runs[0.0], runs[1e-30]
    assert n_zero == 0 and n_tiny >= 4 + 1, (n_zero, n_tiny)  # every iteration's backward, and the diagnostic's
    for p, q in zip(zero.params, tiny.params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(zero.ce, tiny.ce)
    torch.testing.assert_close(zero.bn, tiny.bn)  # the BN term is still measured at r_bn 0
    assert (zero.bn > 0).all() and (zero.gradients[:, 1] == 0).all() and (zero.gradients[:, 0] > 0).all()
