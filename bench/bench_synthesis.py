"""Throughput and peak memory of UFC optimisation: infer_fast's `distill` path vs the research code's loop.

    python bench/bench_synthesis.py [--quick] [--levers] [--json PATH] [--workloads cifar10,imagenet] [--device D]

``--device`` defaults to cuda when a GPU is visible; on a GPU every iteration's end is stamped after a synchronise.

Workloads (the teacher's weights are random, its BN statistics calibrated on other images of the workload's
distribution; images are seeded random pixels: throughput does not depend on what they show):

- ``cifar10``: C=10 classes at 32x32, ResNet-18 (CIFAR stem). The paper's ipc 10 problem count: K=7 natural
  sets x M=4 teachers = 28 UFC problems (all on this one teacher). ``--quick``: 8 problems.
- ``imagenet``: 224x224 ResNet-18 with 1000 classes; each problem holds ``2 * chunk`` classes of its set,
  optimised in class chunks of ``chunk`` (each chunk its own BN group, gradients accumulated), as a 1000-class
  set is. Full: 4 problems, chunk 32; ``--quick``: 2 problems, chunk 16.
- ``tiny200``: C=200 classes at 32x32 with the committed Tiny-200 teacher's shape (ResNet-18, CIFAR stem, width 0.5)
  and that workload's default r_bn = 0 (u on the teachers' cross-entropy alone; the BN term is measured, not
  optimised). Full: 6 problems of 200 images; ``--quick``: 2.

Providers, each in its own process (so that peak RSS is its own): ``reference`` (bench/synthesis_reference.py, one
problem per forward) and ``infer_fast`` (``optimise_batch`` with a prepared teacher and the DistillConfig defaults,
exactly what ``infer-fast distill`` runs); on a workload at r_bn = 0 also ``with_bn_backward``, the default with the
BN term's backward run as before the skip (r_bn 1e-30), with ``speedup_vs_bn_backward``. ``--levers`` adds the
levers one at a time, cumulatively: grouped problems in plain PyTorch, fused statistics, BN folding, then
channels-last (= the default), then torch.compile and bf16 autocast (where it can run); ``one_per_forward``, the
default at the reference's batch of one problem per forward; and on CUDA ``+cuda_graphs``, the default with each
iteration replayed from a CUDA graph (``--cuda-graphs``: its first 2 iterations run eagerly and the capture falls in
the third, so with ``--quick``'s few iterations its images/s include one capture; p50 over the iterations does not).
images/s counts the images of every forward and backward after each batch's warm-up iterations; GFLOP/s uses the
FLOPs of one image's forward + input-gradient backward (FlopCounterMode) and is set against a float32 matmul
measured in the same run. Both providers must reach the same losses for the same seed: every problem within 1e-4
relative at iteration 0, and the mean over problems and timed iterations within 1e-2 (bf16: 2e-2 and 5e-2);
TOLERANCE says why later iterations are compared as a window. On CUDA the float32 providers run with TF32 off (cuDNN
convolutions default to TF32, which alone moves iteration 0 by more than 1e-4); bf16 is the reduced-precision lever.

Records (common.record): ``images_per_s`` is the median run's timed images / timed seconds; p20/p50/p80 and
``samples`` are over the images/s of every timed iteration of every ``--repeat`` run. An iteration takes 0.1-3 s on
a CPU, so the figures are end-to-end ones that this bench does not stretch to common.time_fn's rule: full runs and
``--quick`` cifar10 give every provider >= 10 samples, ``--quick`` imagenet 4 (2 problems x 2 iterations); quote
full runs, and read ``samples`` and ``spread_flag`` before quoting any figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn as nn
from common import Stats, base_parser, git_commit, markdown_table, record, write_json

from infer_fast.models.archs import build_model
from infer_fast.runtime import IMAGENET_MEAN, IMAGENET_STD, Normalisation
from infer_fast.synth.augment import AugSettings
from infer_fast.synth.config import MANY_CLASSES_R_BN, DistillConfig, auto_problems_per_batch
from infer_fast.synth.fold import SynthesisTeacher, cpu_bf16_error
from infer_fast.synth.methods.infer import infer_problems
from infer_fast.synth.problem import make_batches
from infer_fast.synth.ufc import PixelGeometry, SynthesisSettings, optimise_batch

NORM = Normalisation(IMAGENET_MEAN, IMAGENET_STD)
MEAN, STD = NORM.tensors()[:2]
# Loss agreement with the reference: (every problem at iteration 0, the mean over problems and timed iterations).
# Iteration 0 sees identical parameters: only float32 rounding differs. Later, Adam's normalised steps move pixels
# whose gradient is at rounding level by a full step either way, so single problems drift apart by a few per cent
# within ten iterations without either side being wrong, and with --quick's 8 problems the problem-mean of a single
# iteration still moves by up to 1.5 % (`bench_synthesis.py --quick --device cpu`, cifar10: infer_fast, +bn_fold and
# +compile against the reference, 0.91-1.47 % per iteration, 0.12-0.22 % over the window). Both per-iteration
# figures are reported, not judged; tests/test_fold.py checks the prepared teacher against the hooked model in
# float64. bf16 rounds every activation.
TOLERANCE = {"fp32": (1e-4, 1e-2), "bf16": (2e-2, 5e-2)}


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    arch: str
    num_classes: int
    size: int
    problems: int
    images: int  # per problem
    class_chunk: int  # 0: all images of a problem in one forward
    warmup: int  # iterations per batch not timed
    timed: int
    small: bool
    r_bn: float
    width: float = 1.0


def workloads(quick: bool) -> dict[str, Workload]:
    return {
        # --quick cifar10: 5 timed iterations so that every provider gets >= 10 samples (2 batches of 4 problems)
        "cifar10": Workload("cifar10", "resnet18_cifar", 10, 32, 8 if quick else 28, 10, 0, 1, 5 if quick else 6,
                            True, 1.0),
        "imagenet": Workload("imagenet", "resnet18", 1000, 224, 2 if quick else 4, 32 if quick else 64,
                             16 if quick else 32, 1, 2 if quick else 3, False, 0.01),
        "tiny200": Workload("tiny200", "resnet18_cifar", 200, 32, 2 if quick else 6, 200, 0, 1, 5 if quick else 3,
                            True, MANY_CLASSES_R_BN, 0.5),
    }


# Provider -> the DistillConfig fields it changes; the levers are cumulative, "infer_fast" is the default config.
_D = DistillConfig()
DEFAULT = {"problems_per_batch": _D.problems_per_batch, "backend": _D.backend, "fold_bn": _D.fold_bn,
           "channels_last": _D.channels_last, "compile": _D.compile, "precision": _D.precision,
           "cuda_graphs": _D.cuda_graphs}
LEVERS = {  # cumulative, in the order; the next step, + channels-last, is the default (infer_fast)
    "grouped": {**DEFAULT, "backend": "reference", "fold_bn": False, "channels_last": False},
    "+fused_stats": {**DEFAULT, "fold_bn": False, "channels_last": False},
    "+bn_fold": {**DEFAULT, "channels_last": False},
    "+compile": {**DEFAULT, "compile": True},
    "+bf16": {**DEFAULT, "precision": "bf16"},
    "one_per_forward": {**DEFAULT, "problems_per_batch": 1},  # not cumulative: the default at the reference's batch
    "+cuda_graphs": {**DEFAULT, "cuda_graphs": True},  # not cumulative: the default captured in a CUDA graph
}
CUDA_ONLY = {"+cuda_graphs"}
# At r_bn = 0 the default runs no backward of the BN term; this provider is the default with that backward run (r_bn
# 1e-30: the same update to float32 rounding, the pass before the skip), so its ratio is what the skip saves.
WITH_BN_BACKWARD = "with_bn_backward"


# ---- one provider in this process -----------------------------------------------------------------


def build(w: Workload, device: str = "cpu") -> tuple[nn.Module, torch.Tensor, list, torch.Tensor, torch.Tensor]:
    """(teacher, base uint8 [K*n, 3, S, S], problems, lo, hi) on ``device``: deterministic for the workload
    (drawn on the CPU, then moved)."""
    torch.manual_seed(0)
    model = build_model(w.arch, w.num_classes, w.size, w.width)
    k_sets = w.problems  # one teacher here: one problem per natural set
    g = torch.Generator().manual_seed(1)
    naturals = torch.randint(0, 256, (k_sets, w.images, 3, w.size, w.size), generator=g, dtype=torch.uint8)
    lo, hi = NORM.tensors()[2:]
    base = naturals.reshape(-1, 3, w.size, w.size)
    for m in model.modules():  # running statistics from other images of the same distribution, as a teacher's
        if isinstance(m, nn.BatchNorm2d):  # come from its whole training set rather than the sampled naturals
            m.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(4):
            calib = torch.randint(0, 256, (16, 3, w.size, w.size), generator=g, dtype=torch.uint8)
            model(NORM.normalise(calib))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    problems = infer_problems(naturals, 1, NORM)
    if device != "cpu":
        first = problems[0]
        moved = [f.name for f in dataclasses.fields(first) if isinstance(getattr(first, f.name), torch.Tensor)]
        problems = [dataclasses.replace(p, **{k: getattr(p, k).to(device) for k in moved}) for p in problems]
    return model.to(device), base.to(device), problems, lo.to(device), hi.to(device)


def _common(w: Workload) -> dict:
    d = DistillConfig()
    return {"lr": d.lr, "betas": (d.beta1, d.beta2), "eps": d.eps, "r_bn": w.r_bn,
            "first_bn_multiplier": d.first_bn_multiplier,
            "aug": AugSettings(small=w.small, jitter=d.jitter, scale=(d.crop_scale_min, d.crop_scale_max))}


def precision_of(provider: str) -> str:
    """fp32 or bf16: the lever's precision; the reference and infer_fast run the default (fp32)."""
    return (LEVERS.get(provider) or DEFAULT)["precision"]


def run_provider(w: Workload, provider: str, device: str = "cpu") -> dict:
    if device.startswith("cuda") and precision_of(provider) == "fp32":
        # float32 means float32 here: no TF32 (see TOLERANCE). The flags torch.compile's conv lowering reads
        # (torch.backends.cudnn.allow_tf32), not the per-operator fp32_precision API: with conv set to "ieee" that
        # getter raises on torch 2.11-2.14 ("cuDNN conv and cuDNN RNN have different TF32 flags").
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    model, base, problems, lo, hi = build(w, device)
    mean, std = MEAN.to(device), STD.to(device)
    common = _common(w)
    if provider == WITH_BN_BACKWARD:
        common["r_bn"] = common["r_bn"] or 1e-30
    cuda = device.startswith("cuda")

    def stamp(*_) -> None:  # on a GPU an iteration ends when its kernels have run, not when they are queued
        if cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    iters = w.warmup + w.timed
    stamps: list[float] = []  # end of every iteration (batches concatenated); None marks a batch start
    starts: list[int] = []
    images_per_iter: list[int] = []
    ce = torch.zeros(iters, len(problems))
    bn = torch.zeros(iters, len(problems))
    t_setup = time.perf_counter()
    if provider == "reference":
        from synthesis_reference import optimise_problem

        setup_s = time.perf_counter() - t_setup
        for j, p in enumerate(problems):
            starts.append(len(stamps))
            images_per_iter.append(p.num_images)
            stamps.append(time.perf_counter())
            _, ces, bns = optimise_problem(p, model, base, mean, std, lo, hi, seed=0, iterations=iters,
                                           class_chunk=w.class_chunk, on_iteration=stamp, **common)
            ce[:, j], bn[:, j] = torch.tensor(ces), torch.tensor(bns)
    else:
        opts = DEFAULT if provider in ("infer_fast", WITH_BN_BACKWARD) else LEVERS[provider]
        teacher = SynthesisTeacher(model, first_bn_multiplier=common["first_bn_multiplier"],
                                   backend=opts["backend"], fold_bn=opts["fold_bn"],
                                   channels_last=opts["channels_last"], compile=opts["compile"], probe_size=w.size)
        del model  # as infer-fast distill does: only the prepared copy stays during the optimisation
        setup_s = time.perf_counter() - t_setup
        per_batch = opts["problems_per_batch"] or auto_problems_per_batch(w.images, w.class_chunk, w.size)
        batches = make_batches(problems, per_batch)
        col = 0
        for batch in batches:
            starts.append(len(stamps))
            images_per_iter.append(sum(p.num_images for p in batch))
            stamps.append(time.perf_counter())
            settings = SynthesisSettings(seed=0, iterations=iters, class_chunk=w.class_chunk, backend=opts["backend"],
                                         precision=opts["precision"], log_every=iters,
                                         iteration="graph" if opts["cuda_graphs"] else "eager", **common)
            res = optimise_batch(batch, teacher, PixelGeometry(base, mean, std, lo, hi), settings, on_progress=stamp)
            ce[:, col:col + len(batch)], bn[:, col:col + len(batch)] = res.ce, res.bn
            col += len(batch)
    timed_s, timed_images, warm_s, per_iter = 0.0, 0, 0.0, []
    for s0, n_img in zip(starts, images_per_iter, strict=True):
        t = stamps[s0:s0 + iters + 1]
        warm_s += t[w.warmup] - t[0]
        timed_s += t[-1] - t[w.warmup]
        timed_images += n_img * w.timed
        per_iter += [n_img / (b - a) for a, b in zip(t[w.warmup:-1], t[w.warmup + 1:], strict=True)]
    return {
        "images_per_s": timed_images / timed_s,
        "per_iter": per_iter,
        "warmup_s": warm_s,
        "setup_s": setup_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "ce": ce.tolist(),
        "bn": bn.tolist(),
    }


# ---- the parent: one process per provider ----------------------------------------------------------


def flops_per_image(w: Workload) -> float:
    """FLOPs of one image's forward + input-gradient backward through the teacher."""
    from torch.utils.flop_counter import FlopCounterMode

    model, _, _, _, _ = build(w)
    x = torch.randn(2, 3, w.size, w.size, requires_grad=True)
    with FlopCounterMode(display=False) as fc:
        model(x).sum().backward()
    return fc.get_total_flops() / 2


def matmul_gflops(seconds: float = 2.0, device: str = "cpu") -> float:
    """float32 GEMM throughput of the device (all threads on a CPU): the practical compute peak."""
    size = 2048 if device == "cpu" else 8192
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    a @ b
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        sync()
        n += 1
    return 2 * size**3 * n / (time.perf_counter() - t0) / 1e9


# ---- H100 projection (a projection, not a measurement) ---------------------------------------------

H100_BF16_DENSE = 989e12  # FLOP/s, H100 SXM dense BF16 tensor-core peak (NVIDIA data sheet)
ASSUMED_MFU = 0.15  # sustained fraction of that peak assumed for ResNet-18 forward+backward (ResNet-50 training
# at MLPerf-class speed is ~15-20 % of this peak; ResNet-18's thinner layers do no better)
PEERS = "FADRM 0.47 s, EDC 4.99 s, SRe2L-style 2.52 s per image (RTX 4090, published)"


def h100_projection(flops_per_image: float, num_teachers: int = 3, iterations: int = 2000) -> list[dict]:
    """ImageNet-1k INFER synthesis on one H100, from the measured FLOPs of one 224 px image's forward + input
    gradient through ResNet-18 (all M teachers priced as ResNet-18), K*M UFCs x T iterations x C images, plus
    the static labels (one forward of every synthetic image per teacher)."""
    from infer_fast.synth import methods

    rows = []
    for ipc in (10, 50):
        st = methods.get("infer").storage(ipc, 1000, num_teachers, 224)
        ufc = st.num_natural_sets * num_teachers * iterations * 1000 * flops_per_image
        labels = st.num_synthetic * num_teachers * flops_per_image / 3  # forward only: ~1/3 of fwd + bwd
        seconds = (ufc + labels) / (H100_BF16_DENSE * ASSUMED_MFU)
        rows.append({"ipc": ipc, "K": st.num_natural_sets, "UFCs": st.num_natural_sets * num_teachers,
                     "PFLOP": (ufc + labels) / 1e15, "h100_hours": seconds / 3600,
                     "s_per_budget_image": seconds / (ipc * 1000), "s_per_synthetic_image": seconds / st.num_synthetic})
    return rows


def spawn(workload: str, provider: str, quick: bool, threads: int | None, device: str = "cpu") -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", workload, provider, "--device", device]
    cmd += ["--quick"] if quick else []
    cmd += ["--threads", str(threads)] if threads else []
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"bench_synthesis: {workload}/{provider} failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def loss_agreement(ref: dict, res: dict, warmup: int) -> tuple[float, float, float, float]:
    """Relative differences of the CE and BN losses, the larger of the two: (worst problem at iteration 0, the mean
    over problems and timed iterations, worst problem-mean of one timed iteration, worst single problem of one timed
    iteration). The first two are judged (TOLERANCE), the last two reported."""
    first = window = per_iter = worst = 0.0

    def rel(x: torch.Tensor, y: torch.Tensor) -> float:
        return float(((x - y).abs() / x.abs().clamp_min(1e-6)).max())

    for key in ("ce", "bn"):
        a, b = torch.tensor(ref[key]), torch.tensor(res[key])
        at, bt = a[warmup:], b[warmup:]
        first = max(first, rel(a[0], b[0]))
        window = max(window, rel(at.mean(), bt.mean()))
        per_iter = max(per_iter, rel(at.mean(1), bt.mean(1)))
        worst = max(worst, rel(at, bt))
    return first, window, per_iter, worst


def main(argv=None) -> int:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--levers", action="store_true", help="also measure each lever on its own (cumulative)")
    p.add_argument("--workloads", default="cifar10,imagenet,tiny200",
                   help="comma-separated subset of cifar10,imagenet,tiny200")
    p.add_argument("--providers", help="comma-separated providers to run instead of the default set "
                   f"(reference, infer_fast, {', '.join(LEVERS)})")
    p.add_argument("--repeat", type=int, default=1, help="runs per provider, interleaved; the median run is reported "
                   "(this shared virtual machine drifts by 10-20 %% between minutes)")
    p.add_argument("--worker", nargs=2, metavar=("WORKLOAD", "PROVIDER"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    all_w = workloads(args.quick)
    if args.worker:
        print(json.dumps(run_provider(all_w[args.worker[0]], args.worker[1], args.device)))
        return 0
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    unknown = sorted(set(names) - set(all_w))
    if unknown:
        p.error(f"--workloads: unknown {unknown}; expected a subset of {sorted(all_w)}")
    providers = ["reference", "infer_fast"]
    if args.levers:
        providers += [k for k in LEVERS if (k != "+bf16" or cpu_bf16_error() is None)
                      and (k not in CUDA_ONLY or args.device.startswith("cuda"))]
    if args.providers:
        providers = [x.strip() for x in args.providers.split(",") if x.strip()]
        bad = sorted(set(providers) - {"reference", "infer_fast", *LEVERS})
        if bad or "reference" not in providers:
            p.error(f"--providers: unknown {bad} or no 'reference'; known: reference, infer_fast, {', '.join(LEVERS)}")
        if not args.device.startswith("cuda") and CUDA_ONLY & set(providers):
            p.error(f"--providers: {sorted(CUDA_ONLY & set(providers))} need --device cuda")
    peak = matmul_gflops(device=args.device)
    print(f"float32 matmul peak of {args.device}: {peak:.0f} GFLOP/s ({torch.get_num_threads()} threads)", flush=True)
    records, failures = [], []
    for name in names:
        w = all_w[name]
        fpi = flops_per_image(w)
        if name == "imagenet":
            fpi_imagenet = fpi
        mine = providers + ([WITH_BN_BACKWARD] if w.r_bn == 0 and "infer_fast" in providers else [])
        runs: dict[str, list[dict]] = {prov: [] for prov in mine}
        for _ in range(max(1, args.repeat)):  # interleaved, so that a slow minute hits every provider
            for prov in mine:
                runs[prov].append(r := spawn(name, prov, args.quick, args.threads, args.device))
                print(f"{name:9s} {prov:15s} {r['images_per_s']:8.2f} images/s  peak RSS {r['peak_rss_mb']:7.0f} MB  "
                      f"setup {r['setup_s']:.1f} s  warm-up {r['warmup_s']:.1f} s", flush=True)
        results = {prov: sorted(rs, key=lambda r: r["images_per_s"])[len(rs) // 2] for prov, rs in runs.items()}
        ref = results["reference"]
        for prov, r in results.items():
            per_iter = [x for run in runs[prov] for x in run["per_iter"]]  # every repeat's timed iterations
            rec = record("synthesis", prov, "full", "images_per_s", "images/s", "workload", name,
                         Stats.of(per_iter), args.device, workload=name, images_per_s=r["images_per_s"],
                         runs=len(runs[prov]), peak_rss_mb=r["peak_rss_mb"], gflops_per_s=r["images_per_s"] * fpi / 1e9,
                         pct_of_matmul_peak=100 * r["images_per_s"] * fpi / 1e9 / peak, setup_s=r["setup_s"],
                         warmup_s=r["warmup_s"], peak_gpu_mb=r["peak_gpu_mb"])
            if prov == "infer_fast" and WITH_BN_BACKWARD in results:
                rec["speedup_vs_bn_backward"] = r["images_per_s"] / results[WITH_BN_BACKWARD]["images_per_s"]
            if prov != "reference":
                rec["speedup_vs_reference"] = r["images_per_s"] / ref["images_per_s"]
                rec["peak_rss_ratio"] = r["peak_rss_mb"] / ref["peak_rss_mb"]
                first, window, per_iter, worst = loss_agreement(ref, r, w.warmup)
                rec.update(loss_rdiff_first=first, loss_rdiff_timed=window, loss_rdiff_iter=per_iter,
                           loss_rdiff_worst=worst)
                tol_first, tol_timed = TOLERANCE[precision_of(prov)]
                rec["loss_check"] = "ok" if first <= tol_first and window <= tol_timed else "MISMATCH"
                if rec["loss_check"] != "ok":
                    failures.append(f"{name}/{prov}: losses differ from the reference by {first:.2e} at iteration 0 "
                                    f"(allowed {tol_first}) and by {window:.2e} in the mean over problems and timed "
                                    f"iterations (allowed {tol_timed})")
            records.append(rec)
    print()
    print(f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__} commit={git_commit()} "
          f"matmul peak {peak:.0f} GFLOP/s")
    print(markdown_table(records, ["workload", "provider", "images_per_s", "samples", "spread",
                                   "speedup_vs_reference", "speedup_vs_bn_backward", "peak_rss_mb",
                                   "peak_rss_ratio", "gflops_per_s", "pct_of_matmul_peak", "loss_check",
                                   "loss_rdiff_first", "loss_rdiff_timed", "loss_rdiff_iter", "loss_rdiff_worst"]))
    if "imagenet" in names:
        print(f"\nPROJECTION (not a measurement): ImageNet-1k INFER synthesis on one H100 SXM, M=3 teachers priced as "
              f"ResNet-18 ({fpi_imagenet / 1e9:.2f} GFLOP per image forward + input gradient, measured), T=2000, "
              f"{ASSUMED_MFU:.0%} of the {H100_BF16_DENSE / 1e12:.0f} TFLOP/s bf16 dense peak. Peers: {PEERS}.")
        print(markdown_table(h100_projection(fpi_imagenet), ["ipc", "K", "UFCs", "PFLOP", "h100_hours",
                                                            "s_per_budget_image", "s_per_synthetic_image"]))
    write_json(args.json, records)
    for f in failures:
        print(f"LOSS MISMATCH: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
