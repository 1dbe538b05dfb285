"""The batched UFC optimiser (INFER §3), also used for the sre2l baseline.

Problems (:mod:`infer_fast.synth.problem`) that share a teacher run in one forward pass, one BN group each (classes
chunked when ``class_chunk`` is set: each chunk its own group, gradients accumulated over chunks).

Per iteration t of T: ``X = clamp(norm(base) + u, lo, hi)`` per image (compensator broadcast: the teacher sees
exactly what a student will see, and the gradient is masked where an image is clamped), augment (per problem,
from the problem's own RNG, :mod:`infer_fast.synth.augment`), ``L = CE(f(X_aug), classes) + r_bn * sum_l w_l R_l``,
Adam step with cosine lr, then the stored parameter is clamped to the problem's bounds (``problem.ufc_bounds``).

Each problem draws its augmentations from a CPU generator seeded by (seed, key), and a batch's partition is
fixed by the config, so a problem's result does not depend on execution order, resumption or torchrun
sharding. Losses stay on the device; the host reads them every ``log_every`` iterations only: on CUDA an
iteration never waits for the device (the augmentation parameters are drawn on the host, the index tensors are
checked once, Adam's step count lives on the host).

``iteration="graph"`` (``--cuda-graphs``) captures one whole iteration (compose, augment, forward, backward,
Adam step, clamp) in a CUDA graph and replays it T times (:mod:`infer_fast.synth.graph`). Its graph-ready
formulation, ``iteration="static"`` (eager, any device, what the CPU tests check), reads every per-iteration input
from a static device tensor: the augmentation parameters, pre-drawn on the host from the same generators in the
same order and copied once per ``log_every`` window; the cosine lr as a tensor for Adam's capturable arithmetic.
Both loops run the same :meth:`_Optimisation.step`; only the augmentation and the optimiser's arithmetic differ.
The static augmentation equals the default's up to float rounding, and Adam's capturable arithmetic rounds
differently too, so a static or graph run follows the default run to float rounding, not bit for bit (which is why
``cuda_graphs`` is part of a run's resume fingerprint).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from infer_fast.ops.backend import get as get_op
from infer_fast.runtime import Normalisation, hashed_seed
from infer_fast.synth.augment import AugSettings, apply_aug, apply_aug_static, aug_row, aug_width, draw_aug
from infer_fast.synth.fold import SynthesisTeacher, autocast
from infer_fast.synth.graph import GraphRunner, capturable_adam
from infer_fast.synth.problem import BatchResult, Problem

if TYPE_CHECKING:
    from infer_fast.synth.config import DistillConfig

ITERATIONS = ("eager", "static", "graph")  # optimise_batch's loops, see the module docstring


class NonFiniteLossError(RuntimeError):
    """A loss became NaN/Inf; names the problem and the iteration."""


@dataclass(frozen=True)
class SynthesisSettings:
    """How every batch of a run is optimised (the config's synthesis fields, resolved)."""

    seed: int
    iterations: int
    lr: float
    betas: tuple[float, float]
    eps: float
    r_bn: float
    first_bn_multiplier: float
    aug: AugSettings
    class_chunk: int = 0
    backend: str = "fused"
    precision: str = "fp32"
    log_every: int = 50
    iteration: str = "eager"  # one of ITERATIONS

    def __post_init__(self) -> None:
        if self.iteration not in ITERATIONS:
            raise ValueError(f"optimise_batch: iteration must be one of {ITERATIONS}, got {self.iteration!r}")

    @classmethod
    def from_config(cls, cfg: DistillConfig, small: bool) -> SynthesisSettings:
        """The settings of a resolved config (``DistillConfig.resolved``) on data of the ``small`` regime."""
        aug = AugSettings(small=small, jitter=int(cfg.jitter), scale=(cfg.crop_scale_min, cfg.crop_scale_max),
                          per_image_crop=cfg.per_image_crop)
        return cls(seed=cfg.seed, iterations=int(cfg.iterations), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                   eps=cfg.eps, r_bn=float(cfg.r_bn), first_bn_multiplier=cfg.first_bn_multiplier, aug=aug,
                   class_chunk=cfg.class_chunk, backend=cfg.backend, precision=cfg.precision,
                   log_every=cfg.log_every, iteration="graph" if cfg.cuda_graphs else "eager")


@dataclass(frozen=True)
class PixelGeometry:
    """The images a batch composes from and how: ``base`` [Nb, 3, S, S] (uint8 images or float images in [0, 1])
    and the [3] tensors ``mean``, ``std``, ``lo``, ``hi`` of compensator_broadcast, all on one device."""

    base: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor

    @classmethod
    def of(cls, base: torch.Tensor, norm: Normalisation, device: torch.device | str = "cpu") -> PixelGeometry:
        return cls(*(t.to(device) for t in (base, *norm.tensors())))

    @property
    def device(self) -> torch.device:
        return self.base.device

    @property
    def size(self) -> int:
        return int(self.base.shape[-1])


def optimise_batch(problems: list[Problem], model: nn.Module | SynthesisTeacher, pixels: PixelGeometry,
                   settings: SynthesisSettings,
                   on_progress: Callable[[int, float | None, float | None], None] | None = None) -> BatchResult:
    """Optimise ``problems`` (all for ``model``, all with the same image count) together for ``settings.iterations``
    steps.

    ``model`` is a prepared :class:`~infer_fast.synth.fold.SynthesisTeacher` (prepare it once per teacher: BN
    folding, channels-last, compilation), or a plain eval-mode teacher, used as it is with the BN loss on every
    BN input. ``pixels`` live on the model's device. ``precision="bf16"`` runs the teacher under bf16 autocast (GPU
    lever; refused where it cannot run, see :func:`infer_fast.synth.fold.autocast`).
    ``on_progress(n_iterations_done, ce_mean, bn_mean)`` is called every iteration (losses None except every
    ``log_every`` iterations, when the host reads them). ``iteration``: ``"eager"`` (the default loop),
    ``"static"`` (its graph-ready formulation, run eagerly) or ``"graph"`` (that formulation captured in a CUDA
    graph and replayed; CUDA only), see the module docstring. Raises NonFiniteLossError naming the problem.
    """
    if settings.iteration == "graph" and pixels.device.type != "cuda":
        raise ValueError(f"optimise_batch: --cuda-graphs (iteration='graph') needs a CUDA device, got device "
                         f"{pixels.device}")
    opt = _Optimisation(problems, _prepared(model, settings, pixels.size), pixels, settings, on_progress)
    gradients = opt.initial_gradients()
    if settings.iteration == "eager":
        opt.run_eager()
    else:
        opt.run_static(graph=settings.iteration == "graph")
    return dataclasses.replace(opt.result(), gradients=gradients)


def _prepared(model: nn.Module | SynthesisTeacher, s: SynthesisSettings, size: int) -> SynthesisTeacher:
    if not isinstance(model, SynthesisTeacher):
        return SynthesisTeacher(model, first_bn_multiplier=s.first_bn_multiplier, backend=s.backend, fold_bn=False,
                                probe_size=size)
    if (model.first_bn_multiplier, model.backend) != (float(s.first_bn_multiplier), s.backend):
        raise ValueError(f"optimise_batch: the prepared teacher was built with first_bn_multiplier="
                         f"{model.first_bn_multiplier}, backend={model.backend!r} but this call asks for "
                         f"{s.first_bn_multiplier}, {s.backend!r}; prepare it with the settings of the run")
    return model


class _Optimisation:
    """One batch's state: the stacked parameters of its problems (problem j's rows start at ``offsets[j]``), their
    bounds, the chunks' index tensors, the per-problem generators and the loss history."""

    def __init__(self, problems: list[Problem], model: SynthesisTeacher, pixels: PixelGeometry,
                 settings: SynthesisSettings, on_progress: Callable | None) -> None:
        n = problems[0].num_images
        if any(p.num_images != n for p in problems):
            raise ValueError("optimise_batch: all problems of a batch must have the same number of images")
        self.problems, self.pixels, self.s, self.on_progress = problems, pixels, settings, on_progress
        self.n, self.num_p, device = n, len(problems), pixels.device
        self.compose = get_op("compensator_broadcast", settings.backend)
        self.teacher = model.runner()
        self.offsets = [sum(p.init.shape[0] for p in problems[:j]) for j in range(len(problems))]
        self.param = torch.cat([p.init for p in problems]).to(device=device, dtype=torch.float32).requires_grad_(True)
        self.lower = torch.cat([p.lower for p in problems]).to(device=device, dtype=torch.float32)
        self.upper = torch.cat([p.upper for p in problems]).to(device=device, dtype=torch.float32)
        with torch.no_grad():
            self.param.copy_(torch.clamp(self.param, self.lower, self.upper))
        chunk = settings.class_chunk if 0 < settings.class_chunk < n else n
        self.chunks = []
        for ids in [range(s, min(s + chunk, n)) for s in range(0, n, chunk)]:
            sl = slice(ids.start, ids.stop)
            bidx = torch.cat([p.base_index[sl] for p in problems]).to(device)
            uidx = torch.cat([p.ufc_index[sl] + off for p, off in zip(problems, self.offsets, strict=True)]).to(device)
            self.chunks.append((ids, bidx, uidx, torch.cat([p.targets[sl] for p in problems]).to(device)))
        self.gens = [torch.Generator().manual_seed(hashed_seed("aug", settings.seed, *p.key)) for p in problems]
        self.ce_hist = torch.zeros(settings.iterations, self.num_p, device=device)
        self.bn_hist = torch.zeros(settings.iterations, self.num_p, device=device)
        self.checked = 0
        # r_bn = 0 (the many-class small-image default): the BN term is measured, not optimised, so its backward
        # (one pass over every tapped activation) is not run at all; the gradient is the same, 0 * g_bn added.
        self.bn_in_loss = settings.r_bn != 0
        model.groups = self.num_p
        # The autocast cache would keep casts made during a capture in the graph's pool; caching is off under graphs.
        self.amp = autocast(device, settings.precision, cache=settings.iteration != "graph")

    def cosine(self, t: int) -> float:
        return 0.5 * self.s.lr * (1.0 + math.cos(math.pi * t / self.s.iterations))  # cosine to 0, no warm-up

    def step(self, opt: torch.optim.Optimizer, augment: Callable[[torch.Tensor, range], torch.Tensor],
             ce_out: torch.Tensor, bn_out: torch.Tensor) -> None:
        """One iteration: compose -> augment -> forward/backward per chunk (losses summed into ``ce_out``/``bn_out``)
        -> Adam step -> clamp to the bounds. Reads and writes the same tensors every time (graph-capturable)."""
        px, param = self.pixels, self.param
        if param.grad is not None:
            param.grad.zero_()
        ce_out.zero_()
        bn_out.zero_()
        for ids, bidx, uidx, tgt in self.chunks:
            x = augment(self.compose(px.base, param, bidx, uidx, px.mean, px.std, px.lo, px.hi), ids)
            with self.amp:
                logits, bn = self.teacher(x)
            ce = F.cross_entropy(logits.float(), tgt, reduction="none").view(self.num_p, len(ids)).mean(1)
            loss = (ce + self.s.r_bn * bn if self.bn_in_loss else ce) / len(self.chunks)
            loss.sum().backward()
            ce_out.add_(ce.detach() / len(self.chunks))
            bn_out.add_(bn.detach() / len(self.chunks))
        opt.step()
        with torch.no_grad():
            param.copy_(torch.clamp(param, self.lower, self.upper))

    def initial_gradients(self) -> torch.Tensor:
        """[P, 3]: per problem, the norms of the CE gradient and of the weighted BN gradient (``r_bn`` times the BN
        loss's) on its parameters at their initial values, un-augmented, and the cosine between the two: how the
        objective's two terms pull when it starts. A diagnostic pass before iteration 0 (one forward, two
        backwards, one at r_bn = 0; no RNG draw), so the optimisation itself is unchanged."""
        px, param = self.pixels, self.param
        g_ce, g_bn = torch.zeros_like(param), torch.zeros_like(param)
        for ids, bidx, uidx, tgt in self.chunks:
            x = self.compose(px.base, param, bidx, uidx, px.mean, px.std, px.lo, px.hi)
            with self.amp:
                logits, bn = self.teacher(x)
            ce = F.cross_entropy(logits.float(), tgt, reduction="none").view(self.num_p, len(ids)).mean(1)
            g_ce += torch.autograd.grad(ce.sum(), param, retain_graph=self.bn_in_loss)[0] / len(self.chunks)
            if self.bn_in_loss:  # else g_bn stays 0: r_bn times the BN gradient
                g_bn += torch.autograd.grad(bn.sum(), param)[0] * self.s.r_bn / len(self.chunks)
        out = torch.zeros(self.num_p, 3)
        for j, (p, off) in enumerate(zip(self.problems, self.offsets, strict=True)):
            rows = slice(off, off + p.init.shape[0])
            a, b = g_ce[rows].flatten().double(), g_bn[rows].flatten().double()
            na, nb = a.norm(), b.norm()
            out[j] = torch.stack([na, nb, (a @ b) / (na * nb).clamp_min(1e-30)]).float().cpu()
        return out

    def log(self, t: int) -> None:
        """The host's only reads of the device: every ``log_every`` iterations and after the last."""
        logged = (t + 1) % self.s.log_every == 0 or t + 1 == self.s.iterations
        ce_m = bn_m = None
        if logged:
            _check_finite(self.ce_hist, self.bn_hist, self.checked, t + 1, self.problems)
            self.checked = t + 1
            ce_m, bn_m = float(self.ce_hist[t].mean()), float(self.bn_hist[t].mean())
        if self.on_progress is not None:
            self.on_progress(1, ce_m, bn_m)

    def run_eager(self) -> None:
        s = self.s
        opt = torch.optim.Adam([self.param], lr=s.lr, betas=s.betas, eps=s.eps)
        for t in range(s.iterations):
            for group in opt.param_groups:
                group["lr"] = self.cosine(t)
            augs = [draw_aug(g, s.aug, self.n, self.pixels.size) for g in self.gens]

            def augment(x: torch.Tensor, ids: range, augs: list[dict] = augs) -> torch.Tensor:
                nj = len(ids)
                return torch.cat([apply_aug(x[j * nj:(j + 1) * nj], augs[j], ids) for j in range(self.num_p)])

            self.step(opt, augment, self.ce_hist[t], self.bn_hist[t])
            self.log(t)

    def run_static(self, graph: bool) -> None:
        """Every per-iteration input of the step lives in a static tensor, written before each run of it."""
        s, device = self.s, self.pixels.device
        lr_t = torch.tensor(s.lr, dtype=torch.float64, device=device)  # the host's double, as the eager loop's lr
        aug_t = torch.zeros(self.num_p, aug_width(s.aug, self.n), dtype=torch.int64, device=device)
        ce_step, bn_step = torch.zeros(self.num_p, device=device), torch.zeros(self.num_p, device=device)
        self.param.grad = torch.zeros_like(self.param)  # exists before any capture; backward accumulates into it
        opt = capturable_adam(self.param, lr_t, s.betas, s.eps)

        def body() -> None:
            self.step(opt, lambda x, ids: apply_aug_static(x, aug_t, ids), ce_step, bn_step)

        run = GraphRunner(body, device) if graph else body
        for t in range(s.iterations):
            if t % s.log_every == 0:
                window = self._draw_window(t)
            lr_t.fill_(self.cosine(t))
            aug_t.copy_(window[t % s.log_every])
            run()
            self.ce_hist[t].copy_(ce_step)
            self.bn_hist[t].copy_(bn_step)
            self.log(t)

    def _draw_window(self, t0: int) -> torch.Tensor:
        """[W, P, F] augmentation rows of iterations t0 .. t0 + W - 1, drawn per iteration and problem in the eager
        loop's order, on the device in one copy (pinned, non-blocking: the host does not wait)."""
        s, device = self.s, self.pixels.device
        rows = [[aug_row(draw_aug(g, s.aug, self.n, self.pixels.size)) for g in self.gens]
                for _ in range(t0, min(t0 + s.log_every, s.iterations))]
        host = torch.tensor(rows, dtype=torch.int64)
        return host.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else host

    def result(self) -> BatchResult:
        params = self.param.detach().float().cpu()
        out = [params[off:off + p.init.shape[0]].clone() for p, off in zip(self.problems, self.offsets, strict=True)]
        return BatchResult(out, self.ce_hist.cpu(), self.bn_hist.cpu())


def _check_finite(ce: torch.Tensor, bn: torch.Tensor, start: int, stop: int, problems: list[Problem]) -> None:
    bad = ~(torch.isfinite(ce[start:stop]) & torch.isfinite(bn[start:stop]))
    if bool(bad.any()):
        t, j = (int(v) for v in bad.nonzero()[0])
        a, m = problems[j].key
        raise NonFiniteLossError(
            f"distill: non-finite loss (CE {float(ce[start + t, j])}, BN {float(bn[start + t, j])}) in problem "
            f"(k={a}, m={m}) at iteration {start + t}; finished problems are saved (rerun with --resume after "
            "fixing the cause, e.g. a lower --lr or a different teacher)"
        )
