"""mixed_soft_xent: fused kernels vs the float64 reference, autograd, opcheck, compile, low precision, errors."""

from __future__ import annotations

import pytest
import torch
from conftest import HAS_CUDA, assert_close, max_rel_err, requires_cuda

import infer_fast
from infer_fast import reference
from infer_fast.ops.mixed_soft_xent import mixed_soft_xent

OP = torch.ops.infer_fast.mixed_soft_xent
BWD = torch.ops.infer_fast._mixed_soft_xent_backward


def _inputs(b, k, hard=False, target_dtype=torch.float32, mix=True, dtype=torch.float32, device="cpu", scale=4.0):
    logits = (torch.randn(b, k, dtype=torch.float64) * scale).to(device=device, dtype=dtype)
    if hard:
        target = torch.randint(0, k, (b,), device=device).to(target_dtype)
    else:
        target = (torch.randn(b, k, dtype=torch.float64) * scale).to(device=device, dtype=target_dtype)
    perm = torch.randperm(b, device=device) if mix else None
    return logits, target, perm


def _reference(logits, target, perm, lam, temperature):
    """Loss and dL/dz of the float64 reference on the same input values."""
    z = logits.detach().double().requires_grad_()
    y = target.double() if target.dtype.is_floating_point else target
    loss = reference.mixed_soft_xent(z, y, perm, lam, temperature)
    (grad,) = torch.autograd.grad(loss, z)
    return loss.detach(), grad


def _ours(logits, target, perm, lam, temperature):
    z = logits.detach().clone().requires_grad_()
    loss = mixed_soft_xent(z, target, perm, lam, temperature)
    (grad,) = torch.autograd.grad(loss, z)
    return loss.detach(), grad


# (B, K, hard, target dtype, perm, lam, T): N=1, K=1 and 3, K not a multiple of the vector width, K=1000,
# lam at both ends (p with zeros: 0 log 0), the research code's T=30.
CASES = [
    (1, 3, False, torch.float32, True, 0.7, 1.0),
    (1, 1, False, torch.float32, True, 0.3, 2.0),
    (5, 17, False, torch.float32, True, 0.7, 30.0),
    (5, 17, False, torch.float16, False, 0.7, 4.0),
    (7, 1000, False, torch.float32, True, 0.37, 30.0),
    (64, 10, False, torch.bfloat16, True, 0.0, 3.0),
    (33, 100, False, torch.float64, True, 1.0, 0.5),
    (1, 3, True, torch.int64, True, 0.7, 1.0),
    (5, 17, True, torch.int64, True, 0.7, 30.0),
    (6, 33, True, torch.int32, False, 0.4, 2.0),
    (7, 1000, True, torch.int64, True, 0.25, 30.0),
    (64, 10, True, torch.uint8, True, 0.0, 3.0),
    (9, 13, True, torch.int64, True, 1.0, 1.5),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("b,k,hard,tdtype,mix,lam,t", CASES)
def test_matches_reference(b, k, hard, tdtype, mix, lam, t, dtype):
    logits, target, perm = _inputs(b, k, hard, tdtype, mix, dtype)
    loss, grad = _ours(logits, target, perm, lam, t)
    ref_loss, ref_grad = _reference(logits, target, perm, lam, t)
    assert loss.dtype == dtype and loss.dim() == 0
    assert grad.dtype == dtype and grad.shape == logits.shape
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    assert_close(loss, ref_loss, atol=tol, rtol=tol, what="loss")
    # grad = (q - p) / (T B) cancels: its rounding scale is that of q / (T B), not of the difference
    assert_close(grad, ref_grad, atol=tol / (t * b), rtol=tol, what="grad_logits")


def test_hard_labels_equal_onehot_soft_limit():
    """Hard labels are the T -> 0 limit of nothing, but with lam=1 and no mixing they are cross-entropy at T=1."""
    logits, target, _ = _inputs(8, 21, hard=True, target_dtype=torch.int64)
    loss = mixed_soft_xent(logits, target, None, 1.0, 1.0)
    assert_close(loss, torch.nn.functional.cross_entropy(logits, target), atol=1e-6, rtol=1e-6, what="loss vs CE")


def test_non_contiguous_inputs():
    base = torch.randn(40, 24) * 3
    logits = base.t()[:, ::2]  # [24, 20], strided both ways
    target = (torch.randn(20, 48) * 3).t()[::2].t()  # [20, 24] transposed view
    target = target.t()  # [24, 20] non-contiguous
    perm = torch.randperm(48)[::2].argsort()  # non-contiguous source, a valid permutation of 24
    assert not logits.is_contiguous() and not target.is_contiguous()
    loss, grad = _ours(logits, target, perm, 0.6, 2.0)
    ref_loss, ref_grad = _reference(logits, target, perm, 0.6, 2.0)
    assert_close(loss, ref_loss, atol=2e-6, rtol=2e-6, what="loss")
    assert_close(grad, ref_grad, atol=2e-6 / (2.0 * 24), rtol=2e-6, what="grad_logits")


def test_forward_returns_unscaled_gradient_and_backward_scales_it():
    logits, target, perm = _inputs(6, 11)
    loss, grad_logits = OP(logits, target, perm, 0.7, 3.0)
    _, ref_grad = _reference(logits, target, perm, 0.7, 3.0)
    assert_close(grad_logits, ref_grad, atol=1e-7, rtol=1e-5, what="forward grad_logits")
    scaled = BWD(torch.tensor(2.5), grad_logits)
    assert_close(scaled, 2.5 * ref_grad, atol=1e-7, rtol=1e-5, what="backward")
    z = logits.clone().requires_grad_()
    (g,) = torch.autograd.grad(mixed_soft_xent(z, target, perm, 0.7, 3.0) * -3.0, z)
    assert_close(g, -3.0 * ref_grad, atol=1e-7, rtol=1e-5, what="grad through a scaled loss")


def test_deterministic_across_thread_counts():
    logits, target, perm = _inputs(256, 1000)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = OP(logits, target, perm, 0.7, 30.0)
        torch.set_num_threads(max(2, threads))
        many = OP(logits, target, perm, 0.7, 30.0)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])


@pytest.mark.parametrize("hard", [False, True])
def test_non_finite_logits_give_nan(hard):
    logits, target, perm = _inputs(4, 9, hard=hard, target_dtype=torch.int64 if hard else torch.float32)
    logits[1, 3] = float("nan")
    logits[2, 0] = float("inf")
    loss, grad = OP(logits, target, perm, 0.5, 2.0)
    assert torch.isnan(loss)
    assert grad[1].isnan().all() and grad[2].isnan().all()
    assert grad[0].isfinite().all() and grad[3].isfinite().all()


@pytest.mark.parametrize("hard", [False, True])
def test_gradcheck(hard):
    logits, target, perm = _inputs(
        4, 7, hard=hard, target_dtype=torch.int64 if hard else torch.float64, dtype=torch.float64, scale=1.0
    )
    z = logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: mixed_soft_xent(x, target, perm, 0.7, 1.7), (z,))


def test_target_gets_no_gradient_and_double_backward_is_refused():
    logits, target, perm = _inputs(3, 5, dtype=torch.float64)
    z = logits.requires_grad_()
    y = target.double().requires_grad_()
    loss = mixed_soft_xent(z, y, perm, 0.7, 2.0)
    gz, gy = torch.autograd.grad(loss, (z, y), allow_unused=True, materialize_grads=True)
    assert gy.abs().max() == 0 and gz.abs().max() > 0
    with pytest.raises(RuntimeError, match="mixed_soft_xent: double backward"):
        torch.autograd.grad(mixed_soft_xent(z, y, perm, 0.7, 2.0), z, create_graph=True)
    _, grad_logits = OP(z.detach(), y.detach(), perm, 0.7, 2.0)
    w = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    scaled = BWD(w, grad_logits)
    with pytest.raises(RuntimeError, match="_mixed_soft_xent_backward is not differentiable"):
        scaled.sum().backward()


@pytest.mark.parametrize("hard", [False, True])
def test_opcheck(hard):
    logits, target, perm = _inputs(5, 13, hard=hard, target_dtype=torch.int64 if hard else torch.float16)
    torch.library.opcheck(OP, (logits.requires_grad_(), target, perm, 0.7, 3.0))
    torch.library.opcheck(OP, (logits.detach(), target, None, 1.0, 1.0))
    _, grad_logits = OP(logits.detach(), target, perm, 0.7, 3.0)
    torch.library.opcheck(BWD, (torch.tensor(0.5), grad_logits))
    torch.library.opcheck(BWD, (torch.tensor(2.0, dtype=torch.float64), grad_logits.to(torch.bfloat16)))


def test_torch_compile_fullgraph():
    logits, target, perm = _inputs(6, 19)

    def loss_fn(z, y, p):
        return mixed_soft_xent(z, y, p, 0.7, 30.0) + z.square().mean()

    z = logits.clone().requires_grad_()
    out = torch.compile(loss_fn, fullgraph=True)(z, target, perm)
    (g,) = torch.autograd.grad(out, z)
    eager_out = loss_fn(z, target, perm)
    (eager_g,) = torch.autograd.grad(eager_out, z)
    assert_close(out, eager_out, atol=1e-6, rtol=1e-5, what="compiled loss")
    assert_close(g, eager_g, atol=1e-8, rtol=1e-5, what="compiled grad")


def _plain_torch_in_dtype(logits, target, perm, lam, temperature):
    """The reference math done by plain PyTorch ops in the inputs' own (low) dtype: PyTorch's own error."""
    z = logits.detach().clone().requires_grad_()
    if target.dtype.is_floating_point:
        y = target.to(z.dtype)
        ym = (lam * y + (1.0 - lam) * y.index_select(0, perm)) / temperature
        p = torch.softmax(ym, dim=1)
        plogp = p * torch.log_softmax(ym, dim=1)
    else:
        onehot = torch.nn.functional.one_hot(target.long(), z.shape[1]).to(z.dtype)
        p = lam * onehot + (1.0 - lam) * onehot.index_select(0, perm)
        plogp = torch.xlogy(p, p)
    loss = (plogp - p * torch.log_softmax(z / temperature, dim=1)).sum() / z.shape[0]
    (grad,) = torch.autograd.grad(loss, z)
    return loss.detach(), grad


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("b,k", [(64, 10), (32, 1000)])
def test_low_precision_within_twice_pytorch_error(dtype, hard, b, k):
    logits, target, perm = _inputs(b, k, hard=hard, target_dtype=torch.int64 if hard else dtype, dtype=dtype)
    loss, grad = _ours(logits, target, perm, 0.7, 3.0)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    ref_loss, ref_grad = _reference(logits, target, perm, 0.7, 3.0)
    pt_loss, pt_grad = _plain_torch_in_dtype(logits, target, perm, 0.7, 3.0)
    ours_l, torch_l = max_rel_err(loss, ref_loss), max_rel_err(pt_loss, ref_loss)
    ours_g, torch_g = max_rel_err(grad, ref_grad), max_rel_err(pt_grad, ref_grad)
    assert ours_l <= 2 * torch_l + 1e-6, f"loss error {ours_l:.3g} vs PyTorch's {torch_l:.3g}"
    assert ours_g <= 2 * torch_g + 1e-6, f"grad error {ours_g:.3g} vs PyTorch's {torch_g:.3g}"


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("b,k,hard,tdtype,mix,lam,t", CASES)
def test_cpu_matches_cuda(b, k, hard, tdtype, mix, lam, t, dtype):
    logits, target, perm = _inputs(b, k, hard, tdtype, mix, dtype)
    cpu = OP(logits, target, perm, lam, t)
    gpu = OP(logits.cuda(), target.cuda(), perm.cuda() if perm is not None else None, lam, t)
    tol = 1e-12 if dtype == torch.float64 else (1e-2 if dtype == torch.bfloat16 else 2e-6)
    assert_close(gpu[0].cpu(), cpu[0], atol=tol, rtol=tol, what="loss")
    assert_close(gpu[1].cpu(), cpu[1], atol=tol * float(cpu[1].abs().max()), rtol=tol, what="grad_logits")
    g = torch.tensor(1.5)
    assert_close(BWD(g.cuda(), gpu[1]).cpu(), BWD(g, cpu[1]), atol=tol * float(cpu[1].abs().max()) * 1.5, rtol=tol)


def test_cuda_kernel_registered_when_built():
    has = torch._C._dispatch_has_kernel_for_dispatch_key("infer_fast::mixed_soft_xent", "CUDA")
    has_bwd = torch._C._dispatch_has_kernel_for_dispatch_key("infer_fast::_mixed_soft_xent_backward", "CUDA")
    assert has == infer_fast.cuda_enabled() and has_bwd == infer_fast.cuda_enabled()
    assert torch._C._dispatch_has_kernel_for_dispatch_key("infer_fast::mixed_soft_xent", "CPU")


BAD = [
    (lambda z, y, p: (z[0], y, p, 0.5, 1.0), "logits must be 2-D"),
    (lambda z, y, p: (z.long(), y, p, 0.5, 1.0), "logits must be float32, float64, float16 or bfloat16"),
    (lambda z, y, p: (z[:0], y[:0], None, 0.5, 1.0), "empty batch"),
    (lambda z, y, p: (z[:, :0], y[:, :0], p, 0.5, 1.0), "at least one class"),
    (lambda z, y, p: (z, y[:3], p, 0.5, 1.0), "target batch size 3 does not match logits batch size 4"),
    (lambda z, y, p: (z, y[:, :5], p, 0.5, 1.0), "target has 5 classes, logits have 6"),
    (lambda z, y, p: (z, y[0], p, 0.5, 1.0), r"soft target must be 2-D \[B, K\] = \[4, 6\]"),
    (lambda z, y, p: (z, y.bool(), p, 0.5, 1.0), "floating .* or integer .* got Bool"),
    (lambda z, y, p: (z, torch.zeros(4, 6, dtype=torch.long), p, 0.5, 1.0), r"integer target must have shape \[4\]"),
    (lambda z, y, p: (z, torch.tensor([0, 1, 6, 2]), p, 0.5, 1.0), r"target\[2\] = 6 is not a class index.*\[0, 6\)"),
    (lambda z, y, p: (z, torch.tensor([0, -1, 5, 2]), p, 0.5, 1.0), r"target\[1\] = -1 is not a class index"),
    (lambda z, y, p: (z, y, p.int(), 0.5, 1.0), "perm must be int64, got Int"),
    (lambda z, y, p: (z, y, p[:3], 0.5, 1.0), r"perm must have shape \[4\].*\[3\]"),
    (lambda z, y, p: (z, y, torch.tensor([0, 1, 4, 2]), 0.5, 1.0), r"perm\[2\] = 4 is out of range.*\[0, 4\)"),
    (lambda z, y, p: (z, y, p, 0.5, 0.0), "temperature must be finite and > 0, got 0"),
    (lambda z, y, p: (z, y, p, 0.5, float("nan")), "temperature must be finite and > 0, got nan"),
    (lambda z, y, p: (z, y, p, 1.5, 1.0), r"lam must be in \[0, 1\], got 1.5"),
    (lambda z, y, p: (z, y, p, -0.1, 1.0), r"lam must be in \[0, 1\], got -0.1"),
]


@pytest.mark.parametrize("make,match", BAD)
def test_bad_inputs(make, match):
    z, y, p = _inputs(4, 6)
    with pytest.raises(RuntimeError, match="mixed_soft_xent: .*" + match):
        OP(*make(z, y, p))


def test_bad_backward_inputs():
    g = torch.randn(3, 4)
    with pytest.raises(RuntimeError, match=r"grad_loss must be a scalar, got shape \[2\]"):
        BWD(torch.ones(2), g)
    with pytest.raises(RuntimeError, match="grad_logits must be 2-D"):
        BWD(torch.ones(()), g[0])


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (none visible on this machine)")
def test_device_mismatch():
    z, y, p = _inputs(4, 6)
    with pytest.raises(RuntimeError, match="target must be on logits' device"):
        OP(z.cuda(), y, p.cuda(), 0.5, 1.0)
    with pytest.raises(RuntimeError, match="perm must be on logits' device"):
        OP(z.cuda(), y.cuda(), p, 0.5, 1.0)


@pytest.mark.parametrize("hard", [False, True])
def test_infinite_logits_give_nan_rows_like_softmax(hard):
    """+inf and -inf logits (and an inf in a soft target) make that row's loss and gradient NaN, on every backend."""
    logits, target, perm = _inputs(5, 9, hard=hard, target_dtype=torch.int64 if hard else torch.float32, mix=False)
    logits[1, 3] = float("inf")
    logits[2, 0] = float("-inf")
    if not hard:
        target[3, 4] = float("-inf")
    _, grad = OP(logits, target, perm, 1.0, 2.0)
    nan_rows = [1, 2] if hard else [1, 2, 3]
    for r in range(5):
        assert grad[r].isnan().all() if r in nan_rows else grad[r].isfinite().all(), f"row {r}: {grad[r]}"


def test_host_index_check_messages_are_the_cpu_kernels():
    """The once-per-tensor host check used on CUDA raises exactly the CPU kernel's message."""
    from infer_fast.ops.mixed_soft_xent import _perm_error, _target_error

    z, y, p = _inputs(4, 6)
    bad_perm, bad_target = torch.tensor([0, 1, 4, 2]), torch.tensor([0, -1, 5, 2])
    for perm, target, want in ((bad_perm, y, _perm_error(bad_perm, 4)), (p, bad_target, _target_error(bad_target, 6))):
        with pytest.raises(RuntimeError) as err:
            OP(z, target, perm, 0.5, 1.0)
        assert want == str(err.value).splitlines()[0]
    assert _perm_error(p, 4) is None and _target_error(torch.tensor([0, 5, 3, 1]), 6) is None


@requires_cuda
@pytest.mark.parametrize("hard", [False, True])
def test_cuda_infinite_and_nan_logits_give_nan_rows_like_cpu(hard):
    logits, target, perm = _inputs(5, 9, hard=hard, target_dtype=torch.int64 if hard else torch.float32)
    logits[1, 3] = float("inf")
    logits[2, 0] = float("-inf")
    logits[4, 2] = float("nan")
    cpu = OP(logits, target, perm, 0.5, 2.0)
    gpu = OP(logits.cuda(), target.cuda(), perm.cuda(), 0.5, 2.0)
    assert torch.isnan(gpu[0]).item() and torch.isnan(cpu[0])
    assert torch.equal(gpu[1].isnan().cpu(), cpu[1].isnan()), "NaN rows differ between CPU and CUDA"
    assert_close(gpu[1][[0, 3]].cpu(), cpu[1][[0, 3]], atol=1e-6, rtol=1e-5, what="finite rows")


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("k", [1025, 3000])
def test_cpu_matches_cuda_wide_rows_and_half(k, hard, dtype):
    """K > 1024 takes the 256-thread blocks; fp16 logits were not covered by the CUDA tests."""
    logits, target, perm = _inputs(6, k, hard, torch.int64 if hard else torch.float16, True, dtype)
    cpu = OP(logits, target, perm, 0.3, 4.0)
    gpu = OP(logits.cuda(), target.cuda(), perm.cuda(), 0.3, 4.0)
    tol = 2e-3 if dtype == torch.float16 else 2e-6
    assert_close(gpu[0].cpu(), cpu[0], atol=tol, rtol=tol, what="loss")
    assert_close(gpu[1].cpu(), cpu[1], atol=tol * float(cpu[1].abs().max()), rtol=tol, what="grad_logits")


@requires_cuda
@pytest.mark.parametrize("hard", [False, True])
def test_cuda_out_of_range_indices_raise_the_cpu_error(hard):
    z, y, p = _inputs(4, 6, hard=hard, target_dtype=torch.int64 if hard else torch.float32)
    bad = [(torch.tensor([0, 1, 4, 2]), y)] + ([(p, torch.tensor([0, -1, 5, 2]))] if hard else [])
    for perm, target in bad:
        with pytest.raises(RuntimeError) as cpu_err:
            mixed_soft_xent(z, target, perm, 0.5, 1.0)
        with pytest.raises(RuntimeError) as cuda_err:
            mixed_soft_xent(z.cuda(), target.cuda(), perm.cuda(), 0.5, 1.0)
        assert str(cuda_err.value).splitlines()[0] == str(cpu_err.value).splitlines()[0]
    mixed_soft_xent(z.cuda(), y.cuda(), p.cuda(), 0.5, 1.0).item()  # the context is still usable


@requires_cuda
def test_cuda_call_does_not_synchronise_once_indices_are_checked():
    z, y, p = (t.cuda() for t in _inputs(8, 10, hard=True, target_dtype=torch.int64))
    z.requires_grad_(True)
    mixed_soft_xent(z, y, p, 0.5, 2.0).backward()  # first call: perm and targets checked (one copy each)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        mixed_soft_xent(z, y, p, 0.5, 2.0).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert z.grad.isfinite().all()
