"""The frozen teacher of UFC optimisation, prepared for speed: BatchNorm folded into its convolution, the
BN-input statistics recovered from the folded output, channels-last layout, optional torch.compile.

In eval mode a BatchNorm after a convolution is the per-channel affine map ``y = a * x + b`` of the conv output
``x`` (``a = gamma / sqrt(running_var + eps)``, ``b = beta - a * running_mean``), so the conv can produce ``y``
directly (weights times ``a``, bias ``a * bias + b``): the BN pass disappears forward and backward. The matching
loss needs the statistics of the BN *input* x; they follow exactly from those of y:

    mean_x - running_mean = (mean_y - beta) / a,    var_x = var_y / a**2,

so ``R_l = ||var_y / a**2 - running_var|| + ||(mean_y - beta) / a||`` with ``mean_y, var_y`` from the fused
``bn_stat_loss`` pass over y (its [G, C] outputs are differentiable). A BN whose input is not the output of a
convolution called once (or with some ``|a|`` below ``1e-4``, where y no longer carries x) keeps its module and
gets the fused loss on its input instead. Every fold is verified on a probe batch (logits and BN loss against the
unfolded teacher); a teacher that fails verification is used unfolded and the report says why.

:class:`SynthesisTeacher` returns ``(logits, bn_loss [G])`` from one call, without hooks or host syncs, so that
torch.compile sees one graph.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import signal
import subprocess
import sys
from collections.abc import Callable

import torch
import torch.nn as nn

from infer_fast.ops.backend import check_backend
from infer_fast.ops.backend import get as get_op

_BatchNorm = nn.modules.batchnorm._BatchNorm
_Conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
MIN_SCALE = 1e-4  # |gamma / sigma| below this: y no longer carries x in float32; keep the BN


class _Sum:
    """The per-forward accumulator of the weighted BN losses (shared by the taps of one teacher)."""

    def __init__(self) -> None:
        self.groups = 1
        self.total: torch.Tensor | None = None

    def add(self, term: torch.Tensor) -> None:
        self.total = term if self.total is None else self.total + term


class FoldedTap(nn.Module):
    """Identity on a folded conv's output y; adds ``weight * R_l`` recovered from the statistics of y."""

    def __init__(self, bn: _BatchNorm, weight: float, sink: _Sum, stat_fn: Callable) -> None:
        super().__init__()
        scale, beta = bn_affine(bn)
        dt = torch.float64 if bn.running_var.dtype == torch.float64 else torch.float32  # the op's statistics dtype
        self.register_buffer("inv_scale", (1.0 / scale).to(dt))
        self.register_buffer("inv_scale2", (1.0 / scale.square()).to(dt))
        self.register_buffer("beta", beta.to(dt))
        self.register_buffer("running_var", bn.running_var.detach().to(dt).clone())
        self.register_buffer("zero", torch.zeros_like(scale, dtype=dt))
        self.weight = float(weight)
        self.sink = sink
        self.stat_fn = stat_fn
        # The statistics' backward needs y unmodified; set when the network modifies this output in place
        # (torchvision's ``out += identity``), which the probe forward detects.
        self.copy_out = False

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        # The op's own loss output (against zero/zero) is unused; its mean/var outputs carry the gradient.
        _, mean, var = self.stat_fn(y, self.zero, self.zero, self.sink.groups)
        dm = (mean - self.beta) * self.inv_scale
        dv = var * self.inv_scale2 - self.running_var
        term = torch.linalg.vector_norm(dv, dim=1) + torch.linalg.vector_norm(dm, dim=1)
        self.sink.add(term * self.weight if self.weight != 1.0 else term)
        return y.clone() if self.copy_out else y


class InputTap(nn.Module):
    """A BN that could not be folded: the fused loss on its input, then the BN itself."""

    def __init__(self, bn: _BatchNorm, weight: float, sink: _Sum, stat_fn: Callable) -> None:
        super().__init__()
        self.bn = bn
        self.weight = float(weight)
        self.sink = sink
        self.stat_fn = stat_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        loss, _, _ = self.stat_fn(x, self.bn.running_mean, self.bn.running_var, self.sink.groups)
        self.sink.add(loss * self.weight if self.weight != 1.0 else loss)
        return self.bn(x)


def bn_affine(bn: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, beta) of the eval-mode BN ``y = a * (x - running_mean) + beta`` (float64)."""
    rv = bn.running_var.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(rv)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(rv)
    return gamma / torch.sqrt(rv + bn.eps), beta


def _fold_conv(conv: nn.Module, bn: _BatchNorm) -> None:
    a, beta = bn_affine(bn)
    b = beta - a * bn.running_mean.detach().double()
    w = conv.weight.detach().double()
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(a)
    shape = (-1,) + (1,) * (w.dim() - 1)
    conv.weight = nn.Parameter((w * a.view(shape)).to(conv.weight.dtype), requires_grad=False)
    conv.bias = nn.Parameter((bias * a + b).to(conv.weight.dtype), requires_grad=False)


def _producers(model: nn.Module, probe: torch.Tensor) -> tuple[dict[str, str], dict[str, int]]:
    """{bn name: conv name} where the BN's input is the output tensor of that conv in a probe forward, and the
    number of calls of every conv/BN module."""
    outputs: dict[int, tuple[str, torch.Tensor]] = {}
    pairs: dict[str, str] = {}
    calls: dict[str, int] = {}
    handles = []

    def conv_hook(name):
        def hook(module, args, out):
            calls[name] = calls.get(name, 0) + 1
            outputs[id(out)] = (name, out)  # keep the tensor alive so that its id stays unique

        return hook

    def bn_hook(name):
        def hook(module, args):
            calls[name] = calls.get(name, 0) + 1
            hit = outputs.get(id(args[0]))
            if hit is not None and hit[1] is args[0]:
                pairs[name] = hit[0]

        return hook

    for name, m in model.named_modules():
        if isinstance(m, _Conv):
            handles.append(m.register_forward_hook(conv_hook(name)))
        elif isinstance(m, _BatchNorm):
            handles.append(m.register_forward_pre_hook(bn_hook(name)))
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for h in handles:
            h.remove()
    return pairs, calls


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, attr, new)


class SynthesisTeacher(nn.Module):
    """A frozen eval-mode teacher returning ``(logits, bn_loss [groups])``: ``bn_loss`` is ``sum_l w_l R_l`` per
    group of ``groups`` equal contiguous groups of the batch (``w_1 = first_bn_multiplier`` for the first BN in
    ``model.modules()`` order), the synthesis loss of INFER §3.

    The original ``model`` is not modified (a copy is prepared). ``fold_bn`` folds every BN fed by a conv (see
    the module docstring); ``channels_last`` converts the copy (and each input) to channels-last, the layout in
    which oneDNN's convolutions run fastest on CPU; ``probe_size`` is the input side for the fold discovery and
    verification. ``compile`` makes :meth:`runner` return ``torch.compile(self)``. ``report`` says what was folded;
    ``first_bn_multiplier`` and ``backend`` are kept so that callers can check they optimise what they meant to.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        first_bn_multiplier: float = 10.0,
        backend: str = "fused",
        fold_bn: bool = True,
        channels_last: bool = False,
        compile: bool = False,
        probe_size: int = 32,
    ) -> None:
        super().__init__()
        stat_fn = get_op("bn_stat_loss", check_backend(backend, "SynthesisTeacher"))
        bns = [(n, m) for n, m in model.named_modules() if isinstance(m, _BatchNorm)]
        if not bns:
            raise ValueError(f"SynthesisTeacher: {type(model).__name__} has no BatchNorm layer to match")
        for n, m in bns:
            if m.running_mean is None or m.running_var is None:
                raise ValueError(f"SynthesisTeacher: BatchNorm layer {n!r} has no running statistics "
                                 "(track_running_stats=False)")
        self.sink = _Sum()
        self.channels_last = bool(channels_last)
        device = next(iter(model.parameters())).device
        dtype = next(iter(model.parameters())).dtype
        probe = torch.randn(2, 3, probe_size, probe_size, generator=torch.Generator().manual_seed(0)).to(device, dtype)
        self.report = {"bn_layers": len(bns), "folded": 0, "fold_error": None}
        net = None
        if fold_bn:
            net, err = self._folded(model, bns, first_bn_multiplier, stat_fn, probe)
            self.report["fold_error"] = err
        if net is None:
            net = self._unfolded(model, bns, first_bn_multiplier, stat_fn)
        self.report["folded"] = sum(isinstance(m, FoldedTap) for m in net.modules())
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.net = net
        self.first_bn_multiplier = float(first_bn_multiplier)
        self.backend = backend
        self.use_compile = bool(compile)  # not ``self.compile``: that is nn.Module's own method
        self._compiled: nn.Module | None = None

    def runner(self) -> nn.Module:
        """What to call per iteration: this module, or its torch.compile'd form (compiled once, on first use)."""
        if not self.use_compile:
            return self
        if self._compiled is None:  # kept out of the module tree: it wraps this very module
            object.__setattr__(self, "_compiled", torch.compile(self, dynamic=False))
        return self._compiled

    @property
    def groups(self) -> int:
        return self.sink.groups

    @groups.setter
    def groups(self, g: int) -> None:
        self.sink.groups = int(g)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        self.sink.total = None
        logits = self.net(x)
        total = self.sink.total
        self.sink.total = None
        return logits, total

    # ---- construction ------------------------------------------------------------------------------

    def _unfolded(self, model, bns, fbm, stat_fn) -> nn.Module:
        net = copy.deepcopy(model)
        for i, (name, _) in enumerate(bns):
            _set_module(net, name, InputTap(net.get_submodule(name), fbm if i == 0 else 1.0, self.sink, stat_fn))
        return net

    def _folded(self, model, bns, fbm, stat_fn, probe) -> tuple[nn.Module | None, str | None]:
        net = copy.deepcopy(model).eval()
        pairs, calls = _producers(net, probe)
        folded = 0
        for i, (name, _) in enumerate(bns):
            bn = net.get_submodule(name)
            weight = fbm if i == 0 else 1.0
            conv_name = pairs.get(name)
            ok = (conv_name is not None and calls.get(name) == 1 and calls.get(conv_name) == 1
                  and bool((bn_affine(bn)[0].abs() >= MIN_SCALE).all()))
            if ok:
                tap = FoldedTap(bn, weight, self.sink, stat_fn)
                _fold_conv(net.get_submodule(conv_name), bn)
                folded += 1
            else:
                tap = InputTap(bn, weight, self.sink, stat_fn)
            _set_module(net, name, tap)
        if folded == 0:
            return None, "no BatchNorm is fed by a convolution called once"
        for m in net.modules():  # a folded tap returns the tensor its statistics saved: no in-place op after it
            if hasattr(m, "inplace") and isinstance(m.inplace, bool):
                m.inplace = False
        self._mark_inplace_outputs(net, probe)
        err = self._verify(model, net, bns, fbm, stat_fn, probe)
        return (None, err) if err else (net, None)

    def _mark_inplace_outputs(self, net: nn.Module, probe: torch.Tensor) -> None:
        taps = [m for m in net.modules() if isinstance(m, FoldedTap)]
        outs: dict[FoldedTap, torch.Tensor] = {}
        hooks = [t.register_forward_hook(lambda mod, args, out: outs.__setitem__(mod, out)) for t in taps]
        try:
            with torch.no_grad():
                net(probe)
        finally:
            for h in hooks:
                h.remove()
            self.sink.total = None
        for t, out in outs.items():
            t.copy_out = out._version > 0

    def _verify(self, model, net, bns, fbm, stat_fn, probe) -> str | None:
        """None if the folded ``net`` matches the unfolded model on the probe (logits and BN loss), else why not."""
        ref_net = self._unfolded(model, bns, fbm, stat_fn).eval()
        x = probe.clone().requires_grad_(True)
        outs = []
        for candidate in (ref_net, net):
            self.sink.total = None
            logits = candidate(x)
            total = self.sink.total
            (gx,) = torch.autograd.grad(logits.sum() + total.sum(), x)
            outs.append((logits.detach(), total.detach(), gx))
        self.sink.total = None
        for what, a, b in zip(("logits", "BN loss", "input gradient"), outs[0], outs[1], strict=True):
            tol = 1e-3 * max(1.0, float(a.abs().max()))
            if not torch.allclose(a, b, rtol=1e-3, atol=tol):
                return f"folded teacher's {what} differ from the unfolded teacher's by {float((a - b).abs().max()):.3g}"
        return None


# ---- bf16 guard -------------------------------------------------------------------------------------

_PROBE = """
import torch
conv = torch.nn.Conv2d(16, 16, 3, padding=1).eval()
x = torch.randn(4, 16, 16, 16, requires_grad=True)
with torch.autocast("cpu", dtype=torch.bfloat16):
    y = torch.nn.functional.batch_norm(conv(x), torch.zeros(16), torch.ones(16)).relu()
y.float().sum().backward()
"""


@functools.cache
def cpu_bf16_error() -> str | None:
    """None if bf16 autocast runs on this CPU, else why not. Probed in a child process: on CPUs where oneDNN picks
    an instruction path the machine does not enable (AMX on some virtual machines) bf16 kills the process with
    SIGILL, which no exception handler could catch."""
    try:
        r = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as e:
        return f"the bf16 probe process could not run ({e})"
    if r.returncode == 0:
        return None
    if r.returncode < 0:
        return f"a bf16 convolution kills the process with {signal.Signals(-r.returncode).name} on this CPU"
    last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit status {r.returncode}"
    return f"a bf16 convolution fails on this CPU: {last}"


def autocast(device: torch.device, precision: str, cache: bool = True) -> contextlib.AbstractContextManager:
    """The teacher's autocast context: ``"fp32"`` (none) or ``"bf16"``. bf16 is a GPU lever; on CPU it is refused
    with a clear error where it would crash (see :func:`cpu_bf16_error`), and even where it runs it is slower than
    fp32 on CPUs without AMX. ``cache=False`` turns autocast's cast cache off (required inside a CUDA graph
    capture)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    if device.type == "cuda":
        if not torch.cuda.is_bf16_supported():
            raise RuntimeError(f"--precision bf16: {torch.cuda.get_device_name(device)} does not support bfloat16")
    elif device.type == "cpu":
        err = cpu_bf16_error()
        if err:
            raise RuntimeError(f"--precision bf16 refused: {err}; use --precision fp32 (the CPU default)")
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache)
