"""compensator_broadcast: forward and backward against the float64-safe reference, layouts, dtypes, errors."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close, max_rel_err, requires_cuda

from infer_fast import reference
from infer_fast.ops.compensator_broadcast import compensator_broadcast

OP = torch.ops.infer_fast.compensator_broadcast.default
BWD = torch.ops.infer_fast._compensator_broadcast_backward.default


def make_inputs(
    nb: int = 4,
    u: int = 3,
    b: int = 7,
    c: int = 3,
    h: int = 5,
    w: int = 7,
    base_dtype: torch.dtype = torch.uint8,
    ufc_dtype: torch.dtype = torch.float32,
    base_cl: bool = False,
    ufc_cl: bool = False,
    device: str = "cpu",
    no_ufc: bool = True,
):
    """Random inputs; ufc_index includes -1 (no compensator) when no_ufc; clamp bounds cut some values off."""
    if base_dtype == torch.uint8:
        base = torch.randint(0, 256, (nb, c, h, w), dtype=torch.uint8)
    else:
        base = torch.rand(nb, c, h, w, dtype=torch.float64).to(base_dtype)
    ufc = (0.7 * torch.randn(u, c, h, w, dtype=torch.float64)).to(ufc_dtype)
    if base_cl:
        base = base.to(memory_format=torch.channels_last)
    if ufc_cl:
        ufc = ufc.to(memory_format=torch.channels_last)
    base_index = torch.randint(0, nb, (b,))
    ufc_index = torch.randint(-1 if no_ufc else 0, max(u, 1), (b,)) if u > 0 else torch.full((b,), -1)
    mean = 0.3 + 0.4 * torch.rand(c, dtype=torch.float64)
    std = 0.2 + 0.1 * torch.rand(c, dtype=torch.float64)
    lo, hi = -mean / std + 0.3, (1 - mean) / std - 0.3
    chan = [t.to(torch.float64 if ufc_dtype == torch.float64 else torch.float32) for t in (mean, std, lo, hi)]
    return [t.to(device) for t in [base, ufc, base_index, ufc_index, *chan]]


CASES = {
    "N=1 1x1": dict(nb=1, u=1, b=1, h=1, w=1),
    "odd HW": dict(nb=4, u=3, b=7, h=5, w=7),
    "cifar": dict(nb=10, u=9, b=90, h=32, w=32, no_ufc=False),
    "C=1": dict(c=1, h=9, w=11),
    "float base": dict(base_dtype=torch.float32),
    "half base": dict(base_dtype=torch.float16),
    "float64": dict(base_dtype=torch.float64, ufc_dtype=torch.float64),
    "uint8 base float64 ufc": dict(ufc_dtype=torch.float64),
    "channels_last": dict(base_cl=True, ufc_cl=True, h=6, w=5),
    "base channels_last only": dict(base_cl=True, h=6, w=5),
    "ufc channels_last only": dict(ufc_cl=True, h=6, w=5),
    "no ufc (U=0)": dict(u=0),
    "large batch": dict(nb=5, u=2, b=40, h=40, w=37),  # crosses the parallel threshold and several chunks
}


def _ref_fwd_bwd(inputs, grad):
    ufc = inputs[1].detach().clone().requires_grad_()
    out = reference.compensator_broadcast(inputs[0], ufc, *inputs[2:])
    (g,) = torch.autograd.grad(out, ufc, grad)
    return out, g


def _tol(dtype):
    return dict(atol=1e-12, rtol=1e-12) if dtype == torch.float64 else dict(atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("case", list(CASES))
def test_forward_backward_match_reference(case):
    inputs = make_inputs(**CASES[case])
    base, ufc = inputs[0], inputs[1].detach().clone().requires_grad_()
    out = compensator_broadcast(base, ufc, *inputs[2:])
    grad = torch.randn(out.shape, dtype=torch.float64).to(out.dtype)
    (gu,) = torch.autograd.grad(out, ufc, grad)
    ref_out, ref_g = _ref_fwd_bwd(inputs, grad)
    assert out.dtype == ufc.dtype and gu.dtype == ufc.dtype
    assert_close(out, ref_out, what=f"{case} forward", **_tol(ufc.dtype))
    assert_close(gu, ref_g, what=f"{case} grad_ufc", **_tol(ufc.dtype))
    fmt = torch.channels_last if CASES[case].get("ufc_cl") else torch.contiguous_format
    assert out.is_contiguous(memory_format=fmt) and gu.is_contiguous(memory_format=fmt)


def test_expanded_grad_out_matches_reference():
    """autograd hands .sum()'s gradient over as an expanded scalar; the kernel reads it without materialising."""
    inputs = make_inputs(nb=3, u=2, b=9, h=8, w=9)
    ufc = inputs[1].clone().requires_grad_()
    (gu,) = torch.autograd.grad(compensator_broadcast(inputs[0], ufc, *inputs[2:]).sum(), ufc)
    _, ref_g = _ref_fwd_bwd(inputs, torch.ones(9, 3, 8, 9))
    assert_close(gu, ref_g, atol=1e-6, rtol=0, what="grad_ufc from expanded grad")
    per_image = torch.arange(9.0).view(9, 1, 1, 1).expand(9, 3, 8, 9)
    assert_close(BWD(per_image, *inputs), _ref_fwd_bwd(inputs, per_image)[1], atol=1e-5, rtol=1e-6, what="per image")


def test_non_contiguous_inputs():
    inputs = make_inputs(nb=6, u=4, b=5, h=10, w=12, base_dtype=torch.float32)
    base_sliced = inputs[0][::2]  # strided batch, dense images: read in place
    base_rows = torch.rand(6, 3, 10, 15)[..., :12]  # padded rows: gathered
    ufc = inputs[1].transpose(2, 3).contiguous().transpose(2, 3)  # W-major: neither layout
    grad = torch.randn(5, 3, 12, 10).transpose(2, 3)
    for base in (base_sliced, base_rows):
        args = [base, ufc, inputs[2] % base.shape[0], inputs[3], *inputs[4:]]
        ref_out, ref_g = _ref_fwd_bwd(args, grad)
        assert_close(OP(*args), ref_out, atol=2e-5, rtol=1e-5, what="forward")
        assert_close(BWD(grad, *args), ref_g, atol=2e-5, rtol=1e-5, what="backward")


def test_images_without_ufc_contribute_nothing_and_backward_is_deterministic():
    inputs = make_inputs(nb=3, u=2, b=12, h=16, w=16)
    inputs[3] = torch.tensor([0, -1, 1, -1, 0, 0, -1, 1, 1, 0, -1, -1])
    grad = torch.randn(12, 3, 16, 16)
    g1, g2 = BWD(grad, *inputs), BWD(grad, *inputs)
    assert torch.equal(g1, g2)
    grad_masked = grad.clone()
    grad_masked[inputs[3] == -1] = 1e6  # must not leak into any UFC's gradient
    assert torch.equal(BWD(grad_masked, *inputs), g1)
    # natural images alone are still normalised and clamped
    out = OP(*inputs)
    ref = reference.compensator_broadcast(*inputs)
    assert_close(out[inputs[3] == -1], ref[inputs[3] == -1], atol=2e-5, rtol=1e-5, what="no-ufc images")


def test_sequence_channel_arguments():
    inputs = make_inputs()
    mean, std, lo, hi = (t.tolist() for t in inputs[4:])
    out = compensator_broadcast(*inputs[:4], mean, std, lo, hi)
    assert_close(out, reference.compensator_broadcast(*inputs), atol=2e-5, rtol=1e-5, what="list arguments")


def test_gradcheck_float64():
    inputs = make_inputs(nb=3, u=2, b=5, h=3, w=4, base_dtype=torch.float64, ufc_dtype=torch.float64)
    ufc = inputs[1].clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda u: compensator_broadcast(inputs[0], u, *inputs[2:]), (ufc,), eps=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("ufc_cl", [False, True])
def test_opcheck_forward_and_backward(ufc_cl):
    inputs = make_inputs(nb=3, u=2, b=5, h=4, w=6, ufc_cl=ufc_cl, base_cl=ufc_cl)
    fwd_args = list(inputs)
    fwd_args[1] = fwd_args[1].clone().requires_grad_()
    torch.library.opcheck(OP, tuple(fwd_args))
    grad = torch.randn(5, 3, 4, 6)
    torch.library.opcheck(BWD, (grad, *inputs))


def test_torch_compile_fullgraph():
    inputs = make_inputs(nb=4, u=3, b=6, h=8, w=8)
    ufc = inputs[1].clone().requires_grad_()

    def f(base, u, *rest):
        return (compensator_broadcast(base, u, *rest) ** 2).sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    loss = compiled(inputs[0], ufc, *inputs[2:])
    (g,) = torch.autograd.grad(loss, ufc)
    ref_ufc = inputs[1].clone().requires_grad_()
    ref_loss = (reference.compensator_broadcast(inputs[0], ref_ufc, *inputs[2:]) ** 2).sum()
    (ref_g,) = torch.autograd.grad(ref_loss, ref_ufc)
    assert_close(loss, ref_loss, atol=1e-3, rtol=1e-5, what="compiled loss")
    assert_close(g, ref_g, atol=1e-4, rtol=1e-5, what="compiled grad")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_within_twice_pytorch_error(dtype):
    inputs = make_inputs(nb=6, u=4, b=24, h=16, w=16, ufc_dtype=dtype)
    base, ufc, bidx, uidx, mean, std, lo, hi = inputs
    exact = reference.compensator_broadcast(base, ufc.double(), bidx, uidx, *(t.double() for t in inputs[4:]))
    # PyTorch's own: the same math in plain ops at that dtype
    c = (1, -1, 1, 1)
    x = base.index_select(0, bidx).to(dtype) / 255
    x = (x - mean.to(dtype).view(c)) / std.to(dtype).view(c)
    x = x + ufc.index_select(0, uidx.clamp(min=0)) * (uidx >= 0).to(dtype).view(-1, 1, 1, 1)
    torch_out = torch.clamp(x, lo.to(dtype).view(c), hi.to(dtype).view(c))
    ours = OP(*inputs)
    assert ours.dtype == dtype
    assert max_rel_err(ours, exact) <= 2 * max_rel_err(torch_out, exact) + 1e-7

    grad = torch.randn(ours.shape, dtype=torch.float64)
    exact_g = _ref_fwd_bwd([base, ufc.double(), bidx, uidx, *(t.double() for t in inputs[4:])], grad)[1]
    ufc_t = ufc.clone().requires_grad_()
    xt = base.index_select(0, bidx).to(dtype) / 255
    xt = (xt - mean.to(dtype).view(c)) / std.to(dtype).view(c)
    yt = torch.clamp(
        xt + ufc_t.index_select(0, uidx.clamp(min=0)) * (uidx >= 0).to(dtype).view(-1, 1, 1, 1),
        lo.to(dtype).view(c),
        hi.to(dtype).view(c),
    )
    (torch_g,) = torch.autograd.grad(yt, ufc_t, grad.to(dtype))
    ours_g = BWD(grad.to(dtype), *inputs)
    assert max_rel_err(ours_g, exact_g) <= 2 * max_rel_err(torch_g, exact_g) + 1e-7


def test_double_backward_is_blocked():
    inputs = make_inputs(nb=2, u=1, b=3, h=4, w=4, ufc_dtype=torch.float64, base_dtype=torch.float64)
    ufc = inputs[1].clone().requires_grad_()
    out = compensator_broadcast(inputs[0], ufc, *inputs[2:])
    (g,) = torch.autograd.grad((out**2).sum(), ufc, create_graph=True)
    with pytest.raises(RuntimeError, match="_compensator_broadcast_backward is not differentiable"):
        g.sum().backward()


def _bad(**changes):
    args = dict(zip(["base", "ufc", "base_index", "ufc_index", "mean", "std", "lo", "hi"], make_inputs(), strict=True))
    args.update(changes)
    return list(args.values())


BAD_INPUTS = {
    "base rank": (dict(base=torch.zeros(4, 3, 35, dtype=torch.uint8)), r"base must be \[Nb, C, H, W\], got 3-D"),
    "ufc rank": (dict(ufc=torch.zeros(3, 5, 7)), r"ufc must be \[U, C, H, W\], got 3-D"),
    "base dtype": (dict(base=torch.zeros(4, 3, 5, 7, dtype=torch.int32)), "base must be uint8 or float.*got Int"),
    "ufc dtype": (dict(ufc=torch.zeros(3, 3, 5, 7, dtype=torch.uint8)), "ufc must be float.*got Byte"),
    "size mismatch": (dict(ufc=torch.zeros(3, 3, 5, 6)), "base and ufc must share"),
    "index dtype": (dict(base_index=torch.zeros(7, dtype=torch.int32)), "base_index must be a 1-D int64"),
    "index rank": (dict(ufc_index=torch.zeros(7, 1, dtype=torch.long)), "ufc_index must be a 1-D int64"),
    "length mismatch": (
        dict(ufc_index=torch.zeros(6, dtype=torch.long)),
        "base_index and ufc_index must have the same length, got 7 and 6",
    ),
    "empty batch": (
        dict(base_index=torch.zeros(0, dtype=torch.long), ufc_index=torch.zeros(0, dtype=torch.long)),
        "empty batch",
    ),
    "base_index range": (dict(base_index=torch.full((7,), 4)), r"base_index values must lie in \[0, 3\], got .*max 4"),
    "negative base_index": (dict(base_index=torch.full((7,), -1)), r"base_index values must lie in \[0, 3\]"),
    "ufc_index above": (dict(ufc_index=torch.full((7,), 3)), r"ufc_index values must lie in \[-1, 2\]"),
    "ufc_index below": (dict(ufc_index=torch.full((7,), -2)), r"ufc_index values must lie in \[-1, 2\], got min -2"),
    "mean size": (dict(mean=torch.zeros(4)), r"mean must be \[C\] = \[3\], got \[4\]"),
    "std dtype": (dict(std=torch.ones(3, dtype=torch.long)), "std must be floating"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_raise_clear_errors(case):
    changes, msg = BAD_INPUTS[case]
    args = _bad(**changes)
    with pytest.raises(RuntimeError, match="compensator_broadcast: " + msg):
        OP(*args)


def test_backward_bad_grad_out():
    inputs = make_inputs()
    with pytest.raises(RuntimeError, match=r"grad_out must be \[B, C, H, W\]"):
        BWD(torch.zeros(6, 3, 5, 7), *inputs)
    with pytest.raises(RuntimeError, match="grad_out must have ufc's dtype Float, got Double"):
        BWD(torch.zeros(7, 3, 5, 7, dtype=torch.float64), *inputs)


@requires_cuda
@pytest.mark.parametrize("case", ["odd HW", "cifar", "channels_last", "base channels_last only", "half base"])
def test_cpu_matches_cuda(case):
    cpu = make_inputs(**CASES[case])
    cuda = [t.cuda() for t in cpu]
    assert_close(OP(*cuda), OP(*cpu), atol=1e-5, rtol=1e-5, what=f"{case} forward")
    grad = torch.randn(OP(*cpu).shape)
    assert_close(BWD(grad.cuda(), *cuda), BWD(grad, *cpu), atol=1e-4, rtol=1e-5, what=f"{case} backward")
    assert torch.equal(BWD(grad.cuda(), *cuda), BWD(grad.cuda(), *cuda)), "CUDA backward is not deterministic"


@requires_cuda
def test_device_mismatch_raises():
    inputs = make_inputs(device="cuda")
    inputs[0] = inputs[0].cpu()
    with pytest.raises(RuntimeError, match="compensator_broadcast: base must be on ufc's device"):
        OP(*inputs)


def _bound_inputs(device: str = "cpu"):
    """Two images on one base image of black and white pixels (0, 1, 0, 1), with UFCs that put some pixels exactly
    on lo or hi and others just outside or inside (+-1e-3). float base: mean 0.5, std 0.25 give a = 4, b = -2 exactly,
    so lo = -2, hi = 2. uint8 base (ImageNet mean/std): lo and hi are the unclamped values the op computes on the CPU
    for a black and a white pixel, so the check is that both backends clamp and mask at exactly those values.
    """
    ufc = torch.tensor([[0.0, 0.0, -1e-3, 1e-3], [1e-3, -1e-3, 0.0, 0.0]]).view(2, 1, 2, 2).expand(2, 2, 2, 2)
    ufc = ufc.contiguous()
    idx = [torch.tensor([0, 0]), torch.tensor([0, 1])]
    fbase = torch.tensor([0.0, 1.0, 0.0, 1.0]).view(1, 1, 2, 2).expand(1, 2, 2, 2).contiguous()
    float_case = [
        fbase,
        ufc,
        *idx,
        torch.full((2,), 0.5),
        torch.full((2,), 0.25),
        torch.full((2,), -2.0),
        torch.full((2,), 2.0),
    ]
    ubase = torch.tensor([0, 255, 0, 255], dtype=torch.uint8).view(1, 1, 2, 2).expand(1, 2, 2, 2).contiguous()
    m8, s8 = torch.tensor([0.485, 0.456]), torch.tensor([0.229, 0.224])
    wide = torch.full((2,), 1e6)
    raw = OP(ubase, torch.zeros(1, 2, 2, 2), torch.tensor([0]), torch.tensor([0]), m8, s8, -wide, wide)
    uint8_case = [ubase, ufc, *idx, m8, s8, raw[0, :, 0, 0].clone(), raw[0, :, 0, 1].clone()]
    return [[t.to(device) for t in case] for case in (float_case, uint8_case)]


# Expected gradient mask: image 0 has pixels on lo, on hi, below lo, above hi; image 1 two inside, two on the bounds.
_BOUND_MASK = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]).view(2, 1, 2, 2).expand(2, 2, 2, 2)


@pytest.mark.parametrize("which", ["float base", "uint8 base"])
def test_pixels_exactly_on_clamp_bounds_keep_their_gradient(which):
    """torch.clamp's mask is inclusive: a pixel exactly on lo or hi passes its gradient, one ulp outside does not."""
    inputs = _bound_inputs()[0 if which == "float base" else 1]
    ufc = inputs[1].clone().requires_grad_()
    out = compensator_broadcast(inputs[0], ufc, *inputs[2:])
    lo, hi = inputs[6].view(1, 2, 1, 1), inputs[7].view(1, 2, 1, 1)
    on_bound = (out == lo) | (out == hi)
    assert on_bound.sum() >= 8, f"{which}: expected pixels exactly on the bounds, got {int(on_bound.sum())}"
    (g,) = torch.autograd.grad(out, ufc, torch.ones_like(out))
    assert torch.equal(g, _BOUND_MASK), f"{which}: gradient mask {g.flatten().tolist()}"


def test_many_channels_match_reference():
    """4,000 channels: the channel table no longer fits 48 KiB of shared memory on CUDA (read in place there)."""
    inputs = make_inputs(nb=2, u=2, b=3, c=4000, h=2, w=3)
    grad = torch.randn(3, 4000, 2, 3)
    out = OP(*inputs)
    ref_out, ref_g = _ref_fwd_bwd(inputs, grad)
    assert_close(out, ref_out, atol=2e-5, rtol=1e-5, what="forward")
    assert_close(BWD(grad, *inputs), ref_g, atol=2e-5, rtol=1e-5, what="backward")


def test_host_index_check_message_is_the_cpu_kernels():
    """The once-per-tensor host check used on CUDA raises exactly the CPU kernel's message."""
    from infer_fast.ops._index_check import range_message

    for changes, name, lo, hi in (
        (dict(base_index=torch.tensor([0, 1, 5, 2, 0, 1, 1])), "base_index", 0, 4),
        (dict(ufc_index=torch.tensor([0, -2, 1, 2, 0, 1, 1])), "ufc_index", -1, 3),
    ):
        args = _bad(**changes)
        with pytest.raises(RuntimeError) as err:
            OP(*args)
        idx = changes[name]
        assert range_message("compensator_broadcast", name, idx, lo, hi) == str(err.value).splitlines()[0]
        assert range_message("compensator_broadcast", name, idx.clamp(lo, hi - 1), lo, hi) is None


def test_index_check_runs_once_per_tensor_state():
    from infer_fast.ops import _index_check

    calls = []
    idx = torch.tensor([0, 1, 2])
    for _ in range(3):
        _index_check.check_cached(idx, ("k", 3), calls.append)
    assert len(calls) == 1, "an unchanged index tensor must be checked once"
    idx[0] = 1  # in-place write: version bump, checked again
    _index_check.check_cached(idx, ("k", 3), calls.append)
    _index_check.check_cached(idx, ("other", 4), calls.append)
    _index_check.check_cached(idx.clone(), ("k", 3), calls.append)
    assert len(calls) == 4
    assert isinstance(calls[0], torch.Tensor) and calls[0].device.type == "cpu"
    key = id(idx)
    del idx
    assert key not in _index_check._SEEN, "the record must go with the tensor"
    with pytest.raises(ValueError, match="bad"):
        _index_check.check_cached(torch.tensor([7]), ("k",), lambda t: (_ for _ in ()).throw(ValueError("bad")))


@requires_cuda
@pytest.mark.parametrize("ufc_dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("ufc_cl", [False, True])
def test_cpu_matches_cuda_ufc_dtypes(ufc_dtype, ufc_cl):
    cpu = make_inputs(nb=5, u=3, b=11, h=9, w=13, ufc_dtype=ufc_dtype, ufc_cl=ufc_cl)
    cuda = [t.cuda() for t in cpu]
    tol = dict(atol=1e-12, rtol=1e-12) if ufc_dtype == torch.float64 else dict(atol=1e-2, rtol=1e-2)
    assert_close(OP(*cuda), OP(*cpu), what=f"{ufc_dtype} forward", **tol)
    grad = torch.randn(OP(*cpu).shape, dtype=torch.float64).to(ufc_dtype)
    assert_close(BWD(grad.cuda(), *cuda), BWD(grad, *cpu), what=f"{ufc_dtype} backward", **tol)


@requires_cuda
def test_cuda_u0_and_broadcast_and_strided_grad_out():
    cpu = make_inputs(u=0, b=6)
    cuda = [t.cuda() for t in cpu]
    assert_close(OP(*cuda), OP(*cpu), atol=1e-5, rtol=1e-5, what="U=0 forward")
    assert BWD(torch.ones(6, 3, 5, 7).cuda(), *cuda).shape == (0, 3, 5, 7)
    cpu = make_inputs(nb=3, u=2, b=9, h=8, w=9)
    cuda = [t.cuda() for t in cpu]
    expanded = torch.arange(9.0).view(9, 1, 1, 1).expand(9, 3, 8, 9)
    assert_close(BWD(expanded.cuda(), *cuda), BWD(expanded, *cpu), atol=1e-4, rtol=1e-5, what="broadcast grad")
    strided = torch.randn(9, 3, 9, 8).transpose(2, 3)
    assert_close(BWD(strided.cuda(), *cuda), BWD(strided, *cpu), atol=1e-4, rtol=1e-5, what="strided grad")


@requires_cuda
@pytest.mark.parametrize("which", [0, 1])
def test_cuda_pixels_on_clamp_bounds_match_cpu_exactly(which):
    cpu, cuda = _bound_inputs()[which], _bound_inputs("cuda")[which]
    assert torch.equal(OP(*cuda).cpu(), OP(*cpu)), "forward differs on the clamp bounds"
    ones = torch.ones(2, 2, 2, 2)
    assert torch.equal(BWD(ones.cuda(), *cuda).cpu(), BWD(ones, *cpu)), "gradient mask differs on the clamp bounds"
    assert torch.equal(BWD(ones, *cpu), _BOUND_MASK)


@requires_cuda
def test_cuda_many_channels_match_cpu():
    cpu = make_inputs(nb=2, u=2, b=3, c=4000, h=2, w=3)
    cuda = [t.cuda() for t in cpu]
    assert_close(OP(*cuda), OP(*cpu), atol=1e-5, rtol=1e-5, what="forward, table in global memory")
    grad = torch.randn(3, 4000, 2, 3)
    assert_close(BWD(grad.cuda(), *cuda), BWD(grad, *cpu), atol=1e-4, rtol=1e-5, what="backward")


@requires_cuda
@pytest.mark.parametrize("name,bad", [("base_index", 4), ("ufc_index", 3), ("ufc_index", -2)])
def test_cuda_out_of_range_index_raises_the_cpu_error(name, bad):
    cpu = make_inputs()
    pos = 2 if name == "base_index" else 3
    cpu[pos] = cpu[pos].clone()
    cpu[pos][4] = bad
    with pytest.raises(RuntimeError) as cpu_err:
        compensator_broadcast(*cpu)
    with pytest.raises(RuntimeError) as cuda_err:
        compensator_broadcast(*[t.cuda() for t in cpu])
    assert str(cuda_err.value).splitlines()[0] == str(cpu_err.value).splitlines()[0]
    cpu[pos][4] = 0
    compensator_broadcast(*[t.cuda() for t in cpu]).sum().item()  # the context is still usable


@requires_cuda
def test_cuda_forward_backward_do_not_synchronise_once_indices_are_checked():
    cuda = make_inputs(nb=4, u=3, b=12, h=8, w=8, device="cuda")
    ufc = cuda[1].clone().requires_grad_()
    compensator_broadcast(cuda[0], ufc, *cuda[2:]).sum().backward()  # first call: indices checked (one copy)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = compensator_broadcast(cuda[0], ufc, *cuda[2:])
        out.backward(torch.ones_like(out))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert ufc.grad.isfinite().all()


@requires_cuda
def test_cuda_graph_captures_forward_and_backward():
    """Nothing in a call needs the host once the indices are checked, so forward + backward can be captured."""
    cuda = make_inputs(nb=4, u=3, b=12, h=8, w=8, device="cuda")
    ufc = cuda[1].clone().requires_grad_()
    grad = torch.randn(12, 3, 8, 8, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (and the one host check of the indices) outside the capture
        for _ in range(2):
            ufc.grad = None
            compensator_broadcast(cuda[0], ufc, *cuda[2:]).backward(grad)
    torch.cuda.current_stream().wait_stream(side)
    ufc.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = compensator_broadcast(cuda[0], ufc, *cuda[2:])
        out.backward(grad)
    with torch.no_grad():
        ufc.add_(0.5)  # replays read the parameter in place
    graph.replay()
    torch.cuda.synchronize()
    shifted = [cuda[0], ufc.detach(), *cuda[2:]]
    assert torch.equal(out, OP(*shifted)), "replayed forward differs from an eager call"
    assert torch.equal(ufc.grad, BWD(grad, *shifted)), "replayed backward differs from an eager call"


def _few_ufcs_many_images(ufc_dtype=torch.float32, device="cpu"):
    """2 UFCs, 700 images of 3x8x8 (a 2-block grid): the CUDA backward splits each UFC's images into runs. Uneven
    groups (UFC 1 gets 40 images, some none) so that runs differ in length and some are empty."""
    torch.manual_seed(7)
    inputs = make_inputs(nb=50, u=2, b=700, h=8, w=8, ufc_dtype=ufc_dtype, no_ufc=False)
    ufc_index = torch.zeros(700, dtype=torch.long)
    ufc_index[torch.randperm(700)[:40]] = 1
    ufc_index[torch.randperm(700)[:25]] = -1
    inputs[3] = ufc_index
    return [t.to(device) for t in inputs]


@requires_cuda
@pytest.mark.parametrize("ufc_dtype", [torch.float32, torch.float16, torch.float64])
def test_cuda_few_ufcs_many_images_match_cpu_and_are_deterministic(ufc_dtype):
    cpu = _few_ufcs_many_images(ufc_dtype)
    cuda = [t.cuda() for t in cpu]
    grad = torch.randn(700, 3, 8, 8, dtype=torch.float64).to(ufc_dtype)
    tol = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float16: dict(atol=5e-2, rtol=1e-2)}.get(
        ufc_dtype, dict(atol=1e-3, rtol=1e-5)
    )
    got = BWD(grad.cuda(), *cuda)
    assert_close(got, BWD(grad, *cpu), what=f"{ufc_dtype} backward, split runs", **tol)
    assert torch.equal(got, BWD(grad.cuda(), *cuda)), "split-run backward is not deterministic"
    ones = torch.ones(700, 1, 1, 1, dtype=ufc_dtype).expand(700, 3, 8, 8)
    assert_close(BWD(ones.cuda(), *cuda), BWD(ones, *cpu), what="broadcast grad, split runs", **tol)


@requires_cuda
def test_cuda_split_run_backward_neither_synchronises_nor_breaks_capture():
    cuda = _few_ufcs_many_images(device="cuda")
    ufc = cuda[1].clone().requires_grad_()
    grad = torch.randn(700, 3, 8, 8, device="cuda")
    compensator_broadcast(cuda[0], ufc, *cuda[2:]).backward(grad)  # the one host check of the indices
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ufc.grad = None
        compensator_broadcast(cuda[0], ufc, *cuda[2:]).backward(grad)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    eager = ufc.grad.clone()
    ufc.grad = None
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        compensator_broadcast(cuda[0], ufc, *cuda[2:]).backward(grad)
    torch.cuda.current_stream().wait_stream(side)
    ufc.grad = None
    with torch.cuda.graph(graph):
        compensator_broadcast(cuda[0], ufc, *cuda[2:]).backward(grad)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(ufc.grad, eager), "replayed split-run backward differs from an eager call"
