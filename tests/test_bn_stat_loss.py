"""bn_stat_loss: forward/backward vs the float64 reference, layouts, dtypes, registration, errors, BNStatMatcher."""

from __future__ import annotations

import pytest
import torch
import torchvision
from conftest import HAS_CUDA, assert_close, max_rel_err, requires_cuda
from torch import nn

from infer_fast import reference
from infer_fast.ops.bn_stat_loss import BNStatMatcher, bn_stat_loss

OP = torch.ops.infer_fast.bn_stat_loss.default
BWD = torch.ops.infer_fast._bn_stat_loss_backward.default


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    if layout == "channels_last_1d":  # [N, C, L] stored as [N, L, C]
        return x.transpose(1, 2).contiguous().transpose(1, 2)
    if layout == "noncontiguous":  # spatial dims swapped: neither contiguous nor channels-last
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)
    return x.contiguous()


# (shape, groups, layout): odd sizes, N=1, C=3, H*W not a multiple of the vector width, every supported rank.
CASES = [
    ((1, 3, 5, 7), 1, "contiguous"),
    ((6, 3, 5, 7), 3, "contiguous"),
    ((6, 3, 5, 7), 2, "channels_last"),
    ((4, 5, 9, 11), 4, "noncontiguous"),
    ((9, 64, 4, 4), 3, "contiguous"),
    ((4, 40, 6, 6), 2, "channels_last"),
    ((8, 6), 4, "contiguous"),
    ((6, 4, 17), 3, "contiguous"),
    ((6, 4, 17), 2, "channels_last_1d"),
    ((4, 3, 3, 4, 5), 2, "contiguous"),
    ((4, 3, 3, 4, 5), 2, "channels_last"),
    ((4, 16, 1, 1), 2, "contiguous"),
    ((2, 7, 40, 41), 1, "contiguous"),
]


def _inputs(shape, layout, dtype=torch.float64, stat_dtype=torch.float64):
    c = shape[1]
    x = _layout(torch.randn(shape, dtype=torch.float64) * 1.7 + 0.4, layout).to(dtype)
    rm = (torch.randn(c, dtype=torch.float64) * 0.3).to(stat_dtype)
    rv = (torch.rand(c, dtype=torch.float64) + 0.5).to(stat_dtype)
    return x, rm, rv


def _weighted(out, gl, gm, gv):
    loss, mean, var = out
    return (loss * gl).sum() + (mean * gm).sum() + (var * gv).sum()


@pytest.mark.parametrize("shape,groups,layout", CASES)
def test_forward_backward_match_reference_float64(shape, groups, layout):
    x, rm, rv = _inputs(shape, layout)
    x.requires_grad_(True)
    out = bn_stat_loss(x, rm, rv, groups)
    ref = reference.bn_stat_loss(x, rm, rv, groups)
    for name, a, e in zip(("loss", "mean", "var"), out, ref, strict=True):
        assert a.dtype == torch.float64
        assert_close(a, e, atol=1e-12, rtol=1e-10, what=name)
    c = shape[1]
    gl, gm, gv = (
        torch.randn(groups, dtype=torch.float64),
        torch.randn(groups, c, dtype=torch.float64),
        torch.randn(groups, c, dtype=torch.float64),
    )
    (dx,) = torch.autograd.grad(_weighted(out, gl, gm, gv), x)
    (dx_ref,) = torch.autograd.grad(_weighted(ref, gl, gm, gv), x)
    assert_close(dx, dx_ref, atol=1e-12, rtol=1e-9, what="dx")
    if x.is_contiguous() or x.movedim(1, -1).is_contiguous():
        assert dx.stride() == x.stride(), "dx must keep x's memory format"


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_float32_matches_float64_reference(layout):
    x, rm, rv = _inputs((10, 32, 15, 13), layout, dtype=torch.float32, stat_dtype=torch.float32)
    x = (x * 3 + 20).detach().requires_grad_(True)  # mean far from 0: the accumulation must not cancel
    loss, mean, var = bn_stat_loss(x, rm, rv, 5)
    assert loss.dtype == mean.dtype == var.dtype == torch.float32
    x64 = x.detach().double().requires_grad_(True)
    ref = reference.bn_stat_loss(x64, rm.double(), rv.double(), 5)
    assert_close(mean, ref[1], atol=1e-5, rtol=1e-6, what="mean")
    assert_close(var, ref[2], atol=1e-5, rtol=1e-5, what="var")
    assert_close(loss, ref[0], atol=1e-4, rtol=1e-5, what="loss")
    (dx,) = torch.autograd.grad(loss.sum(), x)
    (dx_ref,) = torch.autograd.grad(ref[0].sum(), x64)
    assert dx.dtype == torch.float32
    assert_close(dx, dx_ref, atol=1e-7, rtol=1e-4, what="dx")


def test_float64_input_with_float32_running_stats():
    x, rm, rv = _inputs((4, 5, 3, 3), "contiguous", stat_dtype=torch.float32)
    out = bn_stat_loss(x, rm, rv, 2)
    ref = reference.bn_stat_loss(x, rm, rv, 2)
    assert out[0].dtype == torch.float64
    assert_close(out[0], ref[0], atol=1e-12, rtol=1e-10, what="loss")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_half_precision_within_twice_pytorch_error(dtype, layout):
    x64, rm, rv = _inputs((8, 24, 9, 10), layout, stat_dtype=torch.float32)
    x = x64.to(dtype).requires_grad_(True)
    xe = x64.to(dtype).double().requires_grad_(True)  # exact value of the low-precision input
    ref = reference.bn_stat_loss(xe, rm.double(), rv.double(), 4)
    (dx_ref,) = torch.autograd.grad(ref[0].sum(), xe)

    # PyTorch's own: the same math with plain ops in the low-precision dtype.
    xt = x.detach().clone().requires_grad_(True)
    xg = xt.reshape(4, 2, 24, -1)
    m_t = xg.mean(dim=(1, 3))
    v_t = (xg - m_t[:, None, :, None]).square().mean(dim=(1, 3))
    l_t = torch.linalg.vector_norm(v_t - rv.to(dtype), dim=1) + torch.linalg.vector_norm(m_t - rm.to(dtype), dim=1)
    (dx_t,) = torch.autograd.grad(l_t.sum(), xt)

    out = bn_stat_loss(x, rm, rv, 4)
    (dx,) = torch.autograd.grad(out[0].sum(), x)
    assert dx.dtype == dtype and dx.stride() == x.stride()
    for name, ours, theirs, exp in (
        ("loss", out[0], l_t, ref[0]),
        ("mean", out[1], m_t, ref[1]),
        ("var", out[2], v_t, ref[2]),
        ("dx", dx, dx_t, dx_ref),
    ):
        e_ours, e_torch = max_rel_err(ours, exp), max_rel_err(theirs, exp)
        assert e_ours <= 2 * e_torch + 1e-7, f"{name}: our error {e_ours:.3g} > 2x PyTorch's {e_torch:.3g}"


def test_gradcheck_float64():
    x, rm, rv = _inputs((4, 3, 3, 5), "contiguous")
    x.requires_grad_(True)
    rm.requires_grad_(True)
    rv.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda *a: bn_stat_loss(*a, 2), (x, rm, rv))
    xc = _layout(x.detach(), "channels_last").requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: bn_stat_loss(a, rm.detach(), rv.detach(), 4), (xc,))


def test_zero_norm_gives_zero_gradient_like_vector_norm():
    # mean == running_mean and var == running_var exactly: both norms are 0, as is vector_norm's gradient.
    x = torch.full((4, 3, 2, 2), 1.5, dtype=torch.float64, requires_grad=True)
    rm, rv = torch.full((3,), 1.5, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    loss, _, _ = bn_stat_loss(x, rm, rv, 2)
    assert torch.equal(loss, torch.zeros(2, dtype=torch.float64))
    (dx,) = torch.autograd.grad(loss.sum(), x)
    (dx_ref,) = torch.autograd.grad(reference.bn_stat_loss(x, rm, rv, 2)[0].sum(), x)
    assert torch.equal(dx, dx_ref) and not dx.isnan().any()


def test_gradient_through_mean_and_var_only():
    # Outputs not used downstream get no gradient; the backward must treat them as zero.
    x, rm, rv = _inputs((4, 3, 5, 5), "contiguous")
    x.requires_grad_(True)
    _, mean, _ = bn_stat_loss(x, rm, rv, 2)
    (dx,) = torch.autograd.grad(mean.sum(), x)
    (dx_ref,) = torch.autograd.grad(reference.bn_stat_loss(x, rm, rv, 2)[1].sum(), x)
    assert_close(dx, dx_ref, atol=1e-14, rtol=1e-10, what="dx")


def test_double_backward_is_refused():
    x, rm, rv = _inputs((4, 3, 2, 2), "contiguous")
    x.requires_grad_(True)
    (dx,) = torch.autograd.grad(bn_stat_loss(x, rm, rv, 2)[0].sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="not differentiable"):
        torch.autograd.grad(dx.sum(), x)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_opcheck_forward_and_backward(layout):
    x, rm, rv = _inputs((4, 6, 5, 3), layout, dtype=torch.float32, stat_dtype=torch.float32)
    torch.library.opcheck(OP, (x.requires_grad_(True), rm, rv, 2))
    loss, mean, var = OP(x.detach(), rm, rv, 2)
    grads = (torch.randn(2), torch.randn(2, 6), torch.randn(2, 6))
    torch.library.opcheck(BWD, (*grads, x.detach(), rm, rv, mean, var, 2))


def test_torch_compile_fullgraph():
    x, rm, rv = _inputs((6, 5, 7, 3), "contiguous", dtype=torch.float32, stat_dtype=torch.float32)
    x.requires_grad_(True)

    def f(x, rm, rv):
        loss, mean, var = bn_stat_loss(x, rm, rv, 3)
        return loss.sum() + 0.1 * var.sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = compiled(x, rm, rv)
    want = f(x, rm, rv)
    assert_close(got, want, atol=1e-6, rtol=1e-6, what="loss")
    (dx,) = torch.autograd.grad(got, x)
    (dx_want,) = torch.autograd.grad(want, x)
    assert_close(dx, dx_want, atol=1e-7, rtol=1e-6, what="dx")


@requires_cuda
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_cpu_cuda_agree(layout, dtype):
    x, rm, rv = _inputs((12, 33, 7, 9), layout, dtype=dtype, stat_dtype=torch.float32)
    xc = x.cuda().requires_grad_(True)
    x.requires_grad_(True)
    out = bn_stat_loss(x, rm, rv, 3)
    outc = bn_stat_loss(xc, rm.cuda(), rv.cuda(), 3)
    tol = 1e-3 if dtype == torch.float16 else 1e-5
    for name, a, b in zip(("loss", "mean", "var"), out, outc, strict=True):
        assert_close(b, a, atol=tol, rtol=tol, what=name)
    (dx,) = torch.autograd.grad(out[0].sum() + out[2].sum(), x)
    (dxc,) = torch.autograd.grad(outc[0].sum() + outc[2].sum(), xc)
    assert dxc.stride() == xc.stride()
    assert_close(dxc, dx, atol=_dx_atol(dx, tol), rtol=tol, what="dx")


def test_bad_inputs_name_the_op_and_expectation():
    x, rm, rv = _inputs((4, 3, 2, 2), "contiguous", dtype=torch.float32, stat_dtype=torch.float32)
    with pytest.raises(RuntimeError, match=r"bn_stat_loss: x must have rank 2 to 5.*got rank 1"):
        OP(torch.randn(4), rm, rv, 1)
    with pytest.raises(RuntimeError, match=r"bn_stat_loss: x must have rank 2 to 5.*got rank 6"):
        OP(torch.randn(4, 3, 1, 1, 1, 1), rm, rv, 1)
    with pytest.raises(RuntimeError, match=r"bn_stat_loss: x must be float32.*got Int"):
        OP(x.int(), rm, rv, 1)
    with pytest.raises(RuntimeError, match=r"bn_stat_loss: x must not be empty"):
        OP(torch.empty(0, 3, 2, 2), rm, rv, 1)
    with pytest.raises(RuntimeError, match=r"bn_stat_loss: running_mean must have shape \[C\] = \[3\], got \[4\]"):
        OP(x, torch.zeros(4), rv, 1)
    with pytest.raises(RuntimeError, match=r"bn_stat_loss: running_var must be float32 or float64, got Half"):
        OP(x, rm, rv.half(), 1)
    with pytest.raises(RuntimeError, match=r"bn_stat_loss: groups must be >= 1, got 0"):
        OP(x, rm, rv, 0)
    with pytest.raises(RuntimeError, match=r"bn_stat_loss: groups must divide the batch size N = 4, got groups = 3"):
        OP(x, rm, rv, 3)
    if HAS_CUDA:
        with pytest.raises(RuntimeError, match=r"bn_stat_loss: running_mean must be on x's device"):
            OP(x.cuda(), rm, rv.cuda(), 1)
    loss, mean, var = OP(x, rm, rv, 2)
    g, gc = torch.zeros(2), torch.zeros(2, 3)
    with pytest.raises(RuntimeError, match=r"_bn_stat_loss_backward: grad_mean must have shape \[2, 3\], got \[3\]"):
        BWD(g, torch.zeros(3), gc, x, rm, rv, mean, var, 2)
    with pytest.raises(RuntimeError, match=r"_bn_stat_loss_backward: var must be Float .*got Double"):
        BWD(g, gc, gc, x, rm, rv, mean, var.double(), 2)
    with pytest.raises(RuntimeError, match=r"_bn_stat_loss_backward: grad_loss must have shape \[2\], got \[1\]"):
        BWD(torch.zeros(1), gc, gc, x, rm, rv, mean, var, 2)
    with pytest.raises(RuntimeError, match=r"_bn_stat_loss_backward: groups must divide the batch size N = 4"):
        BWD(g, gc, gc, x, rm, rv, mean, var, 3)


# ---- BNStatMatcher ------------------------------------------------------------------------------------------


def _resnet18() -> nn.Module:
    torch.manual_seed(1)
    model = torchvision.models.resnet18(num_classes=10).double().eval()
    with torch.no_grad():  # non-trivial running statistics, as in a trained teacher
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _hook_reference(model: nn.Module, x: torch.Tensor, groups: int, first: float) -> torch.Tensor:
    """Plain PyTorch forward hooks: per BN input mean/var per group and the two norms."""
    losses: list[torch.Tensor] = []

    def hook(module, inputs, output):
        a = inputs[0]
        ag = a.reshape(groups, a.shape[0] // groups, a.shape[1], -1)
        mean = ag.mean(dim=(1, 3))
        var = ag.var(dim=(1, 3), unbiased=False)
        losses.append(
            torch.linalg.vector_norm(var - module.running_var, dim=1)
            + torch.linalg.vector_norm(mean - module.running_mean, dim=1)
        )

    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    handles = [m.register_forward_hook(hook) for m in bns]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return first * losses[0] + sum(losses[1:])


@pytest.mark.parametrize("groups", [1, 2])
def test_matcher_matches_forward_hook_reference_on_resnet18(groups):
    model = _resnet18()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    with BNStatMatcher(model, groups=groups, first_bn_multiplier=10.0) as bn:
        assert len(bn.layers) == 20
        model(x)
        got = bn.loss()
    want = _hook_reference(model, x, groups, 10.0)
    assert got.shape == (groups,)
    assert_close(got, want, atol=1e-10, rtol=1e-10, what="matcher loss")
    w = torch.arange(1.0, groups + 1, dtype=torch.float64)
    (dx,) = torch.autograd.grad((got * w).sum(), x)
    (dx_ref,) = torch.autograd.grad((want * w).sum(), x)
    assert_close(dx, dx_ref, atol=1e-10, rtol=1e-8, what="d loss / d input")


def test_matcher_groups_per_forward_reset_and_remove():
    model = _resnet18()
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    bn = BNStatMatcher(model, groups=4, first_bn_multiplier=3.0)
    with pytest.raises(RuntimeError, match="no forward pass"):
        bn.loss()
    model(x)
    assert bn.loss().shape == (4,)
    bn.groups = 1
    model(x)  # a new forward starts a new sum
    assert_close(bn.loss(), _hook_reference(model, x, 1, 3.0), atol=1e-10, rtol=1e-10, what="groups=1")
    ref_backend = BNStatMatcher(model, groups=1, first_bn_multiplier=3.0, backend="reference")
    model(x)
    assert_close(ref_backend.loss(), bn.loss(), atol=1e-10, rtol=1e-10, what="reference backend")
    ref_backend.remove()
    bn.remove()
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_matcher_bad_models():
    with pytest.raises(ValueError, match="has no BatchNorm layer"):
        BNStatMatcher(nn.Sequential(nn.Linear(3, 3)))
    with pytest.raises(ValueError, match=r"BatchNorm layer '1' has no running statistics"):
        BNStatMatcher(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3, track_running_stats=False)))
    with pytest.raises(ValueError, match="backend must be"):
        BNStatMatcher(nn.BatchNorm1d(3), backend="cuda")


def test_more_groups_than_a_cuda_grid_dimension():
    """groups = N = 65,540 (> 65,535, the CUDA grid's y limit the channels-last stats kernel strides over)."""
    x, rm, rv = _inputs((65540, 3, 2, 2), "channels_last", dtype=torch.float32, stat_dtype=torch.float32)
    got = bn_stat_loss(x, rm, rv, 65540)
    want = reference.bn_stat_loss(x, rm, rv, 65540)
    for name, a, b in zip(("loss", "mean", "var"), got, want, strict=True):
        assert_close(a, b, atol=1e-5, rtol=1e-5, what=name)


def _dx_atol(dx: torch.Tensor, tol: float) -> float:
    """dx is ~1e-3 at 10^4 elements per (group, channel): an absolute tolerance relative to its largest value, so that
    a wrong element (a vector reading another channel's statistics) cannot hide under a fixed 1e-3 or 1e-2."""
    return tol * float(dx.detach().abs().max())


def _cuda_agree(shape, groups, layout, dtype, use=(0, 1, 2), tol=1e-5):
    x, rm, rv = _inputs(shape, layout, dtype=dtype, stat_dtype=torch.float32)
    xc = x.cuda().requires_grad_(True)
    x.requires_grad_(True)
    out, outc = bn_stat_loss(x, rm, rv, groups), bn_stat_loss(xc, rm.cuda(), rv.cuda(), groups)
    for name, a, b in zip(("loss", "mean", "var"), out, outc, strict=True):
        assert_close(b, a, atol=tol, rtol=tol, what=name)
    (dx,) = torch.autograd.grad(sum(out[i].sum() for i in use), x)
    (dxc,) = torch.autograd.grad(sum(outc[i].sum() for i in use), xc)
    assert dxc.stride() == xc.stride()
    assert_close(dxc, dx, atol=_dx_atol(dx, tol), rtol=tol, what="dx")


@requires_cuda
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_many_elements_per_group_and_channel(layout):
    """> 4,096 elements per (group, channel): the NCHW stats split one (g, c) over several blocks."""
    _cuda_agree((8, 5, 48, 50), 2, layout, torch.float32)


@requires_cuda
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_bfloat16(layout):
    _cuda_agree((12, 33, 7, 9), 3, layout, torch.bfloat16, tol=2e-2)


@requires_cuda
@pytest.mark.parametrize("use", [(1,), (2,), (1, 2)])
def test_cuda_gradient_through_mean_and_var_only(use):
    _cuda_agree((6, 7, 5, 5), 2, "contiguous", torch.float64, use=use, tol=1e-10)


@requires_cuda
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_groups_equal_n(layout):
    _cuda_agree((9, 16, 6, 6), 9, layout, torch.float32)


def _misaligned(x: torch.Tensor) -> torch.Tensor:
    """x's values and strides in storage that starts one element past a 16-byte boundary (vector loads refused)."""
    buf = torch.empty(x.numel() + 1, dtype=x.dtype, device=x.device)[1:]
    out = buf.as_strided(x.size(), x.stride())
    out.copy_(x)
    assert out.data_ptr() % 16 != 0 and out.stride() == x.stride()
    return out


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize(
    "shape,groups,layout",
    [
        ((6, 8, 8, 8), 3, "contiguous"),  # S % 16-byte vector == 0: vector statistics and dx
        ((6, 8, 7, 7), 3, "contiguous"),  # S = 49: scalar
        ((3, 3, 68, 66), 1, "contiguous"),  # several splits whose length is rounded up to whole vectors
        ((6, 16, 5, 5), 2, "channels_last"),  # C % V == 0: vector channels-last statistics and dx
        ((6, 12, 5, 5), 2, "channels_last"),  # C = 12: vector statistics for V = 4, scalar dx for 8 halves
        ((6, 6, 5, 5), 3, "channels_last"),  # C = 6: scalar except fp64 (V = 2)
    ],
)
@pytest.mark.parametrize("offset", [False, True], ids=["aligned", "misaligned"])
def test_cuda_vector_and_scalar_paths_agree_with_cpu(shape, groups, layout, dtype, offset):
    """The 16-byte vector loads and stores of the statistics and dx kernels, and their scalar fallbacks."""
    x, rm, rv = _inputs(shape, layout, dtype=dtype, stat_dtype=torch.float32)
    xc = x.cuda()
    if offset:
        xc = _misaligned(xc)
    xc.requires_grad_(True)
    x.requires_grad_(True)
    tol = {torch.float16: 1e-3, torch.bfloat16: 1e-2}.get(dtype, 1e-5)
    out, outc = bn_stat_loss(x, rm, rv, groups), bn_stat_loss(xc, rm.cuda(), rv.cuda(), groups)
    for name, a, b in zip(("loss", "mean", "var"), out, outc, strict=True):
        assert_close(b, a, atol=tol, rtol=tol, what=f"{name} {dtype} {shape} {layout}")
    (dx,) = torch.autograd.grad(out[0].sum() + out[1].sum(), x)
    (dxc,) = torch.autograd.grad(outc[0].sum() + outc[1].sum(), xc)
    assert dxc.stride() == xc.stride()
    assert_close(dxc, dx, atol=_dx_atol(dx, tol), rtol=tol, what=f"dx {dtype} {shape} {layout}")


@requires_cuda
def test_cuda_more_groups_than_a_grid_dimension():
    _cuda_agree((65540, 3, 2, 2), 65540, "channels_last", torch.float32)


@requires_cuda
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_forward_backward_do_not_synchronise(layout):
    x, rm, rv = (t.cuda() for t in _inputs((8, 16, 9, 9), layout, dtype=torch.float32, stat_dtype=torch.float32))
    x.requires_grad_(True)
    bn_stat_loss(x, rm, rv, 2)[0].sum().backward()  # warm-up outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss, mean, var = bn_stat_loss(x, rm, rv, 2)
        (loss.sum() + mean.sum()).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert x.grad.isfinite().all()
