"""The fused-op benchmark suite: every op x shape x mode (forward, full = forward + backward) x provider.

    pytest bench/suites --benchmark-only                      # time everything (make bench), table at the end
    pytest bench/suites --benchmark-disable                   # test-only mode: tiny shapes, checks only (CI)

Providers: ``eager`` (the reference in infer_fast/reference.py), ``compile`` (torch.compile of it) and ``infer_fast``,
plus ``memcpy`` of the bytes the mode must move (the bandwidth roofline for GB/s; timed runs only). Before it is
timed, the compile and infer_fast providers' forward value and gradients (a fixed random cotangent) are checked
against the eager reference's, so a broken provider fails here instead of being timed. The timer synchronises CUDA
(torch.utils.benchmark's clock) and every figure rests on at least MIN_SAMPLES rounds.
"""

from __future__ import annotations

import bench_bn_stat_loss
import bench_compensator_broadcast
import bench_mixed_soft_xent
import pytest
import torch
from common import MIN_SAMPLES, git_commit, make_modes, synced_clock
from conftest import suite_device, suite_size

MODULES = {m.OP: m for m in (bench_bn_stat_loss, bench_compensator_broadcast, bench_mixed_soft_xent)}
PROVIDERS = ("eager", "compile", "infer_fast")
MODES = ("forward", "full")
# against the reference in the same dtype, relative to each tensor's largest reference value
RTOL = 1e-4

# A round lasts at least 0.2 ms (several calls of a small op): the CUDA synchronisation that ends each round is then
# a small part of it, as in torch.utils.benchmark's blocks.
pytestmark = pytest.mark.benchmark(timer=synced_clock, min_rounds=MIN_SAMPLES, min_time=2e-4)


def suite_items(size: str, timed: bool, only: str | None = None) -> list[tuple]:
    """(op, spec, mode, provider) in case order, so that one case's tensors serve all its tests in a row."""
    providers = (*PROVIDERS, "memcpy") if timed else PROVIDERS
    if only:
        unknown = set(only.split(",")) - {*PROVIDERS, "memcpy"}
        if unknown:
            raise pytest.UsageError(f"--bench-providers: unknown {sorted(unknown)}; known: {[*PROVIDERS, 'memcpy']}")
        providers = tuple(p for p in providers if p in only.split(","))
    return [(op, spec, mode, p) for op, m in MODULES.items() for spec in m.SHAPES[size] for mode in MODES
            for p in providers]


def pytest_generate_tests(metafunc):
    if "item" in metafunc.fixturenames:
        cfg = metafunc.config
        items = suite_items(suite_size(cfg), not cfg.getoption("benchmark_disable"), cfg.getoption("bench_providers"))
        metafunc.parametrize("item", items, ids=[f"{op}-{MODULES[op].shape_id(s)}-{mode}-{p}"
                                                 for op, s, mode, p in items])


def _evaluate(fn, inputs, grad_inputs, cotangent):
    out = fn(*inputs)
    grads = torch.autograd.grad(out, grad_inputs, cotangent)
    return out.detach(), [g.detach() for g in grads]


class _Slot:
    """The current case with its reference result and cotangent (one case held at a time: the big ones are hundreds
    of MB)."""

    key: tuple | None = None

    @classmethod
    def get(cls, op, spec, device):
        if cls.key != (op, spec, device):
            cls.key = cls.case = cls.reference = None
            torch.manual_seed(0)
            case = MODULES[op].case(spec, device)
            with torch.no_grad():
                shape = case.providers["eager"](*case.inputs).shape
            cotangent = torch.randn(shape, device=device)
            cls.reference = (*_evaluate(case.providers["eager"], case.inputs, case.grad_inputs, cotangent), cotangent)
            cls.key, cls.case = (op, spec, device), case
        return cls.case, cls.reference


def check_provider(case, reference, provider: str, mode: str) -> None:
    """The provider's forward value (and for ``full`` its gradients) against the eager reference's.

    As in tests/, the reference runs in the inputs' dtype (it accumulates in float32 or float64 itself): a float64
    evaluation would put some pixels on the other side of compensator_broadcast's clamp bounds than any float32
    evaluation, and their gradients would differ by a whole cotangent value.
    """
    ref_out, ref_grads, cotangent = reference
    fn = case.providers[provider]
    what = f"{case.op} {case.shape} {provider} {mode}"
    if mode == "forward":
        with torch.no_grad():
            _assert_matches(fn(*case.inputs), ref_out, f"{what}: value")
        return
    out, grads = _evaluate(fn, case.inputs, case.grad_inputs, cotangent)
    _assert_matches(out, ref_out, f"{what}: value")
    for i, (g, rg) in enumerate(zip(grads, ref_grads, strict=True)):
        _assert_matches(g, rg, f"{what}: gradient {i}", allowed=case.grad_ties)


def _assert_matches(actual: torch.Tensor, expected: torch.Tensor, what: str, allowed: int = 0) -> None:
    """Close to the reference everywhere but at most ``allowed`` elements (the case's exact ties)."""
    atol = RTOL * max(float(expected.abs().max()) if expected.numel() else 0.0, 1e-12)
    if allowed and int((~torch.isclose(actual, expected, rtol=RTOL, atol=atol)).sum()) <= allowed:
        return
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=atol, msg=lambda m: f"{what}: {m}")


def _memcpy(nbytes: int, device: str):
    """Copying nbytes / 2 bytes (nbytes read + written): what a bandwidth-bound kernel moving nbytes cannot beat."""
    src = torch.randn(max(1, nbytes // 8), device=device)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def test_op(item, benchmark, request):
    op, spec, mode, provider = item
    device = suite_device(request.config)
    case, reference = _Slot.get(op, spec, device)
    benchmark.group = f"{op} {case.shape} {mode}"
    benchmark.extra_info.update(kernel=op, provider=provider, mode=mode, shape=case.shape, nbytes=case.nbytes[mode],
                                device=device, threads=torch.get_num_threads(), torch_version=torch.__version__,
                                commit=git_commit())
    if provider == "memcpy":
        fn = _memcpy(case.nbytes[mode], device)
    else:
        if provider != "eager":  # the eager reference is the yardstick
            check_provider(case, reference, provider, mode)  # also compiles torch.compile's graph for this mode
        fn = make_modes(case.providers[provider], case.inputs, case.grad_inputs)[mode]
    if benchmark.enabled:
        for _ in range(2):  # warm-up: allocator, caches; calibration then sees steady-state calls
            fn()
    benchmark(fn)
