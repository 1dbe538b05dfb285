"""The batched UFC optimiser (spec section 3), also used for the sre2l baseline.

A *problem* is one optimisation with its own parameters, its own images and its own BN-statistics group: for
INFER one UFC ``u_{k,m}`` ([1, 3, S, S]) shared by the C natural images of set k under teacher m; for sre2l
C free images (one per class). Problems that share a teacher run in one forward pass, one BN group each
(classes chunked when ``class_chunk`` is set: each chunk its own group, gradients accumulated over chunks).

Per iteration t of T: ``X = clamp(norm(base) + u, lo, hi)`` per image (compensator broadcast: the teacher sees
exactly what a student will see, and the gradient is masked where an image is clamped), augment (per problem,
from the problem's own RNG), ``L = CE(f(X_aug), classes) + r_bn * sum_l w_l R_l``, Adam step with cosine lr, then
the stored parameter is clamped to the problem's loose box (spec section 3.5, corrected): for INFER
``[lo - hi, hi - lo]`` per channel, beyond which every composed image is clamped anyway, so the bound never pins
u. (The old rule, the intersection ``[lo - min_c x_c, hi - max_c x_c]`` over the set, is empty or zero at most
pixels once a set has 100+ classes; it survives only as ``ufc_bound="set"`` for ablations.) For sre2l the
parameters are the images themselves, bounded to [lo, hi].

Each problem draws its augmentations from a CPU generator seeded by (seed, key), and a batch's partition is
fixed by the config, so a problem's result does not depend on execution order, resumption or torchrun
sharding. Losses stay on the device; the host reads them every ``log_every`` iterations only: on CUDA an
iteration never waits for the device (the augmentation parameters are drawn on the host, the index tensors are
checked once, Adam's step count lives on the host).

``iteration="graph"`` (``--cuda-graphs``) captures one whole iteration (compose, augment, forward, backward,
Adam step, clamp) in a CUDA graph and replays it T times. Its graph-ready formulation, ``iteration="static"``
(eager, any device, what the CPU tests check), reads every per-iteration input from a static device tensor: the
augmentation parameters, pre-drawn on the host from the same generators in the same order and copied once per
``log_every`` window; the cosine lr as a tensor for Adam's capturable arithmetic. It augments with fixed-shape
tensor ops (:func:`apply_aug_static`): the roll is a gather (exactly ``torch.roll``), the random resized crop a
product with bilinear resampling matrices, equal to the default's ``interpolate`` up to float rounding. Adam's
capturable arithmetic also rounds differently from the default's, so a static or graph run follows the default
run to float rounding, not bit for bit (which is why ``cuda_graphs`` is part of a run's resume fingerprint).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from infer_fast.ops.backend import get as get_op
from infer_fast.synth.config import UFC_BOUNDS
from infer_fast.synth.fold import SynthesisTeacher, autocast

ITERATIONS = ("eager", "static", "graph")  # optimise_batch's loops, see the module docstring
GRAPH_WARMUP = 2  # eager iterations before the capture (torch's whole-network example runs 3; one creates it all)


class NonFiniteLossError(RuntimeError):
    """A loss became NaN/Inf; names the problem and the iteration."""


def problem_seed(seed: int, a: int, b: int, salt: str = "aug") -> int:
    """A 63-bit seed for problem (a, b) that depends on nothing else (stable across processes and versions)."""
    h = hashlib.sha256(f"infer_fast:{salt}:{seed}:{a}:{b}".encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


@dataclass
class Problem:
    key: tuple[int, int]  # (k, m) for INFER, (i, m) for sre2l
    teacher: int
    base_index: torch.Tensor  # [n] int64 rows of the base tensor
    ufc_index: torch.Tensor  # [n] int64 rows of this problem's parameters
    targets: torch.Tensor  # [n] int64 classes
    init: torch.Tensor  # [p, 3, S, S] float32 initial parameters
    lower: torch.Tensor  # [p, 3, S, S] clamp bounds of the stored parameters
    upper: torch.Tensor

    @property
    def num_images(self) -> int:
        return int(self.base_index.numel())


@dataclass
class BatchResult:
    params: list[torch.Tensor]  # per problem, [p, 3, S, S] float32 on CPU
    ce: torch.Tensor  # [T, P] float32 per-iteration CE per problem
    bn: torch.Tensor  # [T, P] float32 per-iteration BN-matching loss per problem


# ---- augmentation -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AugSettings:
    small: bool  # CIFAR-style: roll only; else random resized crop + flip, then roll
    jitter: int
    scale: tuple[float, float] = (0.08, 1.0)
    per_image_crop: bool = False


def _uniform(g: torch.Generator, a: float, b: float) -> float:
    return a + (b - a) * float(torch.rand((), generator=g))


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi] inclusive."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


def _crop_params(g: torch.Generator, h: int, w: int, scale: tuple[float, float]) -> tuple[int, int, int, int, bool]:
    """torchvision RandomResizedCrop.get_params (ratio 3/4..4/3) + a flip coin, drawn from ``g``."""
    area = h * w
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    box = None
    for _ in range(10):
        target = area * _uniform(g, *scale)
        aspect = math.exp(_uniform(g, *log_ratio))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            box = (_randint(g, 0, h - ch), _randint(g, 0, w - cw), ch, cw)
            break
    if box is None:  # fallback: whole image (torchvision's central crop at ratio 1 for square inputs)
        box = (0, 0, h, w)
    return (*box, bool(torch.rand((), generator=g) < 0.5))


def draw_aug(g: torch.Generator, s: AugSettings, n: int, size: int) -> dict:
    """One iteration's augmentation parameters for one problem of n images."""
    p: dict = {}
    if not s.small:
        p["crops"] = [_crop_params(g, size, size, s.scale) for _ in range(n if s.per_image_crop else 1)]
    p["roll"] = (_randint(g, -s.jitter, s.jitter), _randint(g, -s.jitter, s.jitter)) if s.jitter else (0, 0)
    return p


def _crop(x: torch.Tensor, box: tuple[int, int, int, int, bool], size: int) -> torch.Tensor:
    top, left, ch, cw, flip = box
    y = x[:, :, top:top + ch, left:left + cw]
    if (ch, cw) != (size, size):
        y = F.interpolate(y, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return y.flip(3) if flip else y


def apply_aug(x: torch.Tensor, p: dict, image_ids: range) -> torch.Tensor:
    """Augment one problem's chunk ``x`` [n, 3, S, S] (images ``image_ids`` of the problem)."""
    size = x.shape[-1]
    if "crops" in p:
        crops = p["crops"]
        if len(crops) == 1:
            x = _crop(x, crops[0], size)
        else:
            x = torch.cat([_crop(x[j:j + 1], crops[i], size) for j, i in enumerate(image_ids)])
    dy, dx = p["roll"]
    if dy or dx:
        x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    return x


def aug_width(s: AugSettings, n: int) -> int:
    """Length of an :func:`aug_row` for a problem of n images."""
    return 2 + 5 * (0 if s.small else n if s.per_image_crop else 1)


def aug_row(p: dict) -> list[int]:
    """:func:`draw_aug`'s parameters as integers: ``[dy, dx]`` then ``top, left, ch, cw, flip`` per crop."""
    row = list(p["roll"])
    for top, left, ch, cw, flip in p.get("crops", ()):
        row += [top, left, ch, cw, int(flip)]
    return row


def _resample(offset: torch.Tensor, length: torch.Tensor, flip: torch.Tensor | None, size: int) -> torch.Tensor:
    """Bilinear resampling matrices ``[..., size (output), size (input)]``: the window ``[offset, offset + length)``
    of a line resized to ``size`` (align_corners=False), output reversed where ``flip``. A crop is never larger than
    the image, so the antialiasing filter of the default's ``interpolate(antialias=True)`` is this triangle filter;
    a whole line (``length == size``) gives the identity, exactly so in float32 matmul (torch's default; TF32 would
    round it)."""
    pos = torch.arange(size, device=offset.device, dtype=torch.float32)
    length = length.unsqueeze(-1).float()
    src = ((pos + 0.5) * (length / size) - 0.5).clamp_min(0).minimum(length - 1) + offset.unsqueeze(-1)
    if flip is not None:
        src = torch.where(flip.unsqueeze(-1).bool(), src.flip(-1), src)
    return (1 - (pos - src.unsqueeze(-1)).abs()).clamp_min(0)


def apply_aug_static(x: torch.Tensor, params: torch.Tensor, image_ids: range) -> torch.Tensor:
    """:func:`apply_aug` for every problem of a chunk at once, driven by the device tensor ``params`` [P, F] (one
    :func:`aug_row` per problem): fixed shapes, no host read, so it can be captured in a CUDA graph.

    ``x`` [P * nj, 3, S, S] holds the chunk's ``nj = len(image_ids)`` images of each problem in turn. The roll is a
    gather, so forward and backward equal ``torch.roll`` exactly; the crop and flip are a product with
    :func:`_resample` matrices, equal to the default's ``interpolate`` up to float rounding (the identity where
    the crop is the whole image).
    """
    num_p, size = params.shape[0], x.shape[-1]
    x = x.view(num_p, -1, *x.shape[1:])  # [P, nj, 3, S, S]
    if params.shape[1] > 2:
        crops = params[:, 2:].view(num_p, -1, 5)
        if crops.shape[1] > 1:  # one crop per image
            crops = crops[:, image_ids.start:image_ids.stop]
        top, left, ch, cw, flip = crops.unbind(-1)  # [P, 1 or nj] each
        rows = _resample(top, ch, None, size).unsqueeze(2)  # [P, 1 or nj, 1, S, S], broadcast over channels
        cols = _resample(left, cw, flip, size).unsqueeze(2)
        x = rows @ x @ cols.transpose(-1, -2)
    shift = (torch.arange(size, device=x.device) - params[:, :2, None]) % size  # [P, 2, S]: out[i] = in[i - d]
    x = x.gather(3, shift[:, 0].view(num_p, 1, 1, size, 1).expand_as(x))
    x = x.gather(4, shift[:, 1].view(num_p, 1, 1, 1, size).expand_as(x))
    return x.reshape(-1, *x.shape[2:])


# ---- optimisation -----------------------------------------------------------------------------


def ufc_bounds(base_norm: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
               rule: str = "loose") -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds [1, 3, S, S] of the stored compensator shared by the normalised images ``base_norm`` [n, 3, S, S].

    ``"loose"`` (spec 3.5, the default): ``[lo - hi, hi - lo]`` per channel. Every composed image is clamped to
    [lo, hi] in the optimisation forward and wherever it is composed, so u only needs a box beyond which all
    images are clamped anyway; this never pins u, whatever the number of classes.
    ``"set"`` (the old, withdrawn rule, for ablations): ``lo - min_n x <= u <= hi - max_n x``, the condition for
    every ``x + u`` to be in range without clamping; with 100+ images per set it pins u to ~0 at most pixels.
    """
    c, s = base_norm.shape[1], base_norm.shape[-2:]
    if rule == "loose":
        span = (hi - lo).view(1, c, 1, 1)
        return (-span).expand(1, c, *s).clone(), span.expand(1, c, *s).clone()
    if rule == "set":
        lower = lo.view(1, c, 1, 1) - base_norm.amin(0, keepdim=True)
        upper = hi.view(1, c, 1, 1) - base_norm.amax(0, keepdim=True)
        return lower, upper
    raise ValueError(f"ufc_bounds: rule must be one of {UFC_BOUNDS}, got {rule!r}")


def pinned_fraction(ufc: torch.Tensor, std: torch.Tensor, tol: float = 1.0 / 255) -> float:
    """Fraction of a compensator's values [..., 3, S, S] (normalised units) whose size in pixel units,
    ``|u| * std_c``, is at most ``tol`` (default one grey level): the values that the bound pinned at ~0."""
    pixel = ufc.float().abs() * std.float().view(3, 1, 1)
    return float((pixel <= tol).float().mean())


def optimise_batch(
    problems: list[Problem],
    model: nn.Module | SynthesisTeacher,
    base: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    *,
    seed: int,
    iterations: int,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    r_bn: float,
    first_bn_multiplier: float,
    aug: AugSettings,
    class_chunk: int = 0,
    backend: str = "fused",
    precision: str = "fp32",
    log_every: int = 50,
    on_progress: Callable[[int, float | None, float | None], None] | None = None,
    iteration: str = "eager",
) -> BatchResult:
    """Optimise ``problems`` (all for ``model``, all with the same image count) together for ``iterations`` steps.

    ``model`` is a prepared :class:`~infer_fast.synth.fold.SynthesisTeacher` (prepare it once per teacher: BN
    folding, channels-last, compilation), or a plain eval-mode teacher, used as it is with the BN loss on every
    BN input. ``base`` [Nb, 3, S, S] (uint8 images or float images in [0, 1]) and the [3] tensors live on the
    model's device. ``precision="bf16"`` runs the teacher under bf16 autocast (GPU lever; refused where it
    cannot run, see :func:`infer_fast.synth.fold.autocast`). ``on_progress(n_iterations_done, ce_mean, bn_mean)``
    is called every iteration (losses None except every ``log_every`` iterations, when the host reads them).
    ``iteration``: ``"eager"`` (the default loop), ``"static"`` (its graph-ready formulation, run eagerly) or
    ``"graph"`` (that formulation captured in a CUDA graph and replayed; CUDA only), see the module docstring.
    Raises NonFiniteLossError naming the problem.
    """
    if iteration not in ITERATIONS:
        raise ValueError(f"optimise_batch: iteration must be one of {ITERATIONS}, got {iteration!r}")
    if iteration == "graph" and base.device.type != "cuda":
        raise ValueError(f"optimise_batch: --cuda-graphs (iteration='graph') needs a CUDA device, got device "
                         f"{base.device}")
    compose = get_op("compensator_broadcast", backend)
    device = base.device
    size = base.shape[-1]
    if not isinstance(model, SynthesisTeacher):
        model = SynthesisTeacher(model, first_bn_multiplier=first_bn_multiplier, backend=backend, fold_bn=False,
                                 probe_size=size)
    elif (model.first_bn_multiplier, model.backend) != (float(first_bn_multiplier), backend):
        raise ValueError(f"optimise_batch: the prepared teacher was built with first_bn_multiplier="
                         f"{model.first_bn_multiplier}, backend={model.backend!r} but this call asks for "
                         f"{first_bn_multiplier}, {backend!r}; prepare it with the settings of the run")
    teacher = model.runner()
    n = problems[0].num_images
    if any(p.num_images != n for p in problems):
        raise ValueError("optimise_batch: all problems of a batch must have the same number of images")
    num_p = len(problems)
    # Stack parameters; problem j's rows start at offsets[j].
    offsets, rows = [], 0
    for p in problems:
        offsets.append(rows)
        rows += p.init.shape[0]
    param = torch.cat([p.init for p in problems]).to(device=device, dtype=torch.float32).requires_grad_(True)
    lower = torch.cat([p.lower for p in problems]).to(device=device, dtype=torch.float32)
    upper = torch.cat([p.upper for p in problems]).to(device=device, dtype=torch.float32)
    with torch.no_grad():
        param.copy_(torch.clamp(param, lower, upper))
    chunk = class_chunk if 0 < class_chunk < n else n
    chunks = [range(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    chunk_idx = []
    for ids in chunks:
        sl = slice(ids.start, ids.stop)
        bidx = torch.cat([p.base_index[sl] for p in problems]).to(device)
        uidx = torch.cat([p.ufc_index[sl] + off for p, off in zip(problems, offsets, strict=True)]).to(device)
        tgt = torch.cat([p.targets[sl] for p in problems]).to(device)
        chunk_idx.append((ids, bidx, uidx, tgt))
    gens = [torch.Generator().manual_seed(problem_seed(seed, *p.key)) for p in problems]
    ce_hist = torch.zeros(iterations, num_p, device=device)
    bn_hist = torch.zeros(iterations, num_p, device=device)
    checked = 0
    model.groups = num_p
    # The autocast cache would keep casts made during a capture in the graph's pool; caching is off under graphs.
    amp = autocast(device, precision, cache=iteration != "graph")

    def cosine(t: int) -> float:
        return 0.5 * lr * (1.0 + math.cos(math.pi * t / iterations))  # cosine to 0, no warm-up

    def forward_backward(x: torch.Tensor, tgt: torch.Tensor, nj: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One chunk's forward and backward (gradients accumulate into param.grad); its share of (CE, BN)."""
        with amp:
            logits, bn = teacher(x)
        ce = F.cross_entropy(logits.float(), tgt, reduction="none").view(num_p, nj).mean(1)
        loss = (ce + r_bn * bn) / len(chunks)
        loss.sum().backward()
        return ce.detach() / len(chunks), bn.detach() / len(chunks)

    def log(t: int) -> None:
        """The host's only reads of the device: every ``log_every`` iterations and after the last."""
        nonlocal checked
        logged = (t + 1) % log_every == 0 or t + 1 == iterations
        if logged:
            _check_finite(ce_hist, bn_hist, checked, t + 1, problems)
            checked = t + 1
            ce_m, bn_m = float(ce_hist[t].mean()), float(bn_hist[t].mean())
        if on_progress is not None:
            on_progress(1, ce_m if logged else None, bn_m if logged else None)

    if iteration != "eager":
        # Every per-iteration input of the static body lives in one of these tensors, written before each run.
        lr_t = torch.tensor(lr, dtype=torch.float64, device=device)  # the host's double, as the eager loop's lr
        aug_t = torch.zeros(num_p, aug_width(aug, n), dtype=torch.int64, device=device)
        ce_step, bn_step = torch.zeros(num_p, device=device), torch.zeros(num_p, device=device)
        param.grad = torch.zeros_like(param)  # exists before any capture; backward accumulates into it in place
        opt = _capturable_adam(param, lr_t, betas, eps)

        def body() -> None:
            param.grad.zero_()
            ce_step.zero_()
            bn_step.zero_()
            for ids, bidx, uidx, tgt in chunk_idx:
                x = apply_aug_static(compose(base, param, bidx, uidx, mean, std, lo, hi), aug_t, ids)
                ce, bn = forward_backward(x, tgt, len(ids))
                ce_step.add_(ce)
                bn_step.add_(bn)
            opt.step()
            with torch.no_grad():
                param.copy_(torch.clamp(param, lower, upper))

        def draw_window(t0: int) -> torch.Tensor:
            """[W, P, F] parameters of iterations t0 .. t0 + W - 1, drawn per iteration and problem in the eager
            loop's order, on the device in one copy (pinned, non-blocking: the host does not wait)."""
            rows = [[aug_row(draw_aug(g, aug, n, size)) for g in gens]
                    for _ in range(t0, min(t0 + log_every, iterations))]
            host = torch.tensor(rows, dtype=torch.int64)
            return host.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else host

        run = _GraphRunner(body, device) if iteration == "graph" else body
        for t in range(iterations):
            if t % log_every == 0:
                window = draw_window(t)
            lr_t.fill_(cosine(t))
            aug_t.copy_(window[t % log_every])
            run()
            ce_hist[t].copy_(ce_step)
            bn_hist[t].copy_(bn_step)
            log(t)
    else:
        opt = torch.optim.Adam([param], lr=lr, betas=betas, eps=eps)
        for t in range(iterations):
            for group in opt.param_groups:
                group["lr"] = cosine(t)
            opt.zero_grad(set_to_none=False)
            augs = [draw_aug(g, aug, n, size) for g in gens]
            for ids, bidx, uidx, tgt in chunk_idx:
                x = compose(base, param, bidx, uidx, mean, std, lo, hi)
                nj = len(ids)
                x = torch.cat([apply_aug(x[j * nj:(j + 1) * nj], augs[j], ids) for j in range(num_p)])
                ce, bn = forward_backward(x, tgt, nj)
                ce_hist[t] += ce
                bn_hist[t] += bn
            opt.step()
            with torch.no_grad():
                param.copy_(torch.clamp(param, lower, upper))
            log(t)
    params = param.detach().float().cpu()
    out = [params[off:off + p.init.shape[0]].clone() for p, off in zip(problems, offsets, strict=True)]
    return BatchResult(out, ce_hist.cpu(), bn_hist.cpu())


def _capturable_adam(param: torch.Tensor, lr: torch.Tensor, betas: tuple[float, float], eps: float) -> torch.optim.Adam:
    """torch's Adam in its capturable arithmetic (step count and bias corrections on the device, ``lr`` a device
    tensor) for ``param``, whose ``grad`` must exist. torch allows ``capturable=True`` on CUDA only;
    ``differentiable=True`` runs the same branch of its code on other devices (``foreach=False``: one code path
    everywhere), so that the CPU tests check the arithmetic a graph replays. It steps a detached alias of ``param``
    (same storage and grad) because the differentiable branch updates under grad mode, where autograd refuses an
    in-place write to a leaf that requires grad."""
    alias = param.detach()
    alias.grad = param.grad
    cuda = param.device.type == "cuda"
    return torch.optim.Adam([alias], lr=lr, betas=betas, eps=eps, foreach=False, capturable=cuda,
                            differentiable=not cuda)


class _GraphRunner:
    """Runs ``body`` like a function: the first GRAPH_WARMUP calls eagerly on a side stream (they create Adam's
    state, the BLAS/cuDNN handles of that stream and the index checks' cache, which a capture cannot), then captures
    one call in a CUDA graph and replays it on every later call. Only valid while ``body`` reads and writes the same
    tensors every time (see optimise_batch's static formulation)."""

    def __init__(self, body: Callable[[], None], device: torch.device) -> None:
        self.body = body
        self.calls = 0
        self.side = torch.cuda.Stream(device)
        self.graph: torch.cuda.CUDAGraph | None = None

    def __call__(self) -> None:
        current = torch.cuda.current_stream(self.side.device)
        if self.graph is not None:
            self.graph.replay()
            return
        self.side.wait_stream(current)  # the inputs written on the current stream
        if self.calls < GRAPH_WARMUP:
            with torch.cuda.stream(self.side):
                self.body()
            self.calls += 1
        else:
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph, stream=self.side):  # the warm-up's stream: its handles exist
                    self.body()
            except RuntimeError as e:
                raise RuntimeError(f"--cuda-graphs: capturing the synthesis iteration failed ({e}); "
                                   "run without --cuda-graphs") from e
            self.graph = graph
            graph.replay()  # the capture only recorded this iteration
        current.wait_stream(self.side)


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
