"""``infer-fast distill --plan``: everything needed to decide on resources before a run, without optimising.

The plan resolves the config exactly as ``distill`` does (per-dataset defaults, automatic problems per forward),
loads the real teachers (restricted to the data's classes) and reports:

- the budget: K natural sets, UFCs, synthetic images, stored bytes, label bytes (INFER §2);
- the work: problems, problems per forward, class chunks, batches (the unit ``torchrun`` ranks share);
- FLOPs per problem and in total, counted with ``torch.utils.flop_counter.FlopCounterMode`` on each real teacher
  (one forward and the backward to the input, the weights frozen as in synthesis; the fused BN-matching and
  compensator ops are elementwise and left out), plus the forward FLOPs of the static labels;
- seconds per iteration measured on this device by a short probe: a few iterations of one real batch of each
  teacher, on at most ``probe_images`` images per problem, scaled linearly to the problem's images;
- a projection for N GPUs of a stated peak and utilisation, labelled as a projection;
- the exact ``torchrun`` command for the chosen layout.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shlex
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from infer_fast.config_cli import option, require, to_argv
from infer_fast.runtime import DistContext, atomic_write_json
from infer_fast.synth.config import DistillConfig
from infer_fast.synth.fold import SynthesisTeacher
from infer_fast.synth.runner import DefaultTeachers, RunSetup, prepare
from infer_fast.synth.ufc import PixelGeometry, SynthesisSettings, optimise_batch

# H100 SXM dense TF32 tensor-core peak (PyTorch runs fp32 convolutions as TF32 on cuDNN by default). The assumed
# utilisation is deliberately modest: batches of ~100 images through BN-heavy convnets, with per-layer statistics
# and small elementwise ops in between, keep GPUs far from their tensor-core peak. Both are stated in every plan
# and are flags; a measured s/iteration from --plan on the target GPU replaces the guess.
DEFAULT_PEAK_TFLOPS = 495.0
DEFAULT_UTILISATION = 0.10


@dataclasses.dataclass
class PlanSettings:
    """The settings of ``distill --plan``; the CLI's ``--plan-*`` flags are generated from these fields."""

    gpus: int = option(8, flag="plan-gpus", help="GPUs of the projected layout, in all")
    nodes: int = option(1, flag="plan-nodes", help="nodes of that layout")
    peak_tflops: float = option(DEFAULT_PEAK_TFLOPS, flag="plan-peak-tflops", help="peak TFLOP/s per GPU (the default "
                                "is an H100 SXM's dense TF32)")
    utilisation: float = option(DEFAULT_UTILISATION, flag="plan-utilisation", help="assumed fraction of the peak")
    probe_iterations: int = option(2, flag="plan-probe-iterations", help="timed probe iterations per teacher on this "
                                   "device, after one warm-up iteration (0: no probe)")
    probe_images: int = option(64, flag="plan-probe-images", help="images per problem in the probe, scaled to the "
                               "real count")
    json_path: str | None = option(None, flag="plan-json", metavar="FILE", help="where the plan's JSON goes "
                                   "(default: <out>.plan.json)")

    def validate(self) -> None:
        require(self.gpus >= 1, "--plan-gpus", ">= 1", self.gpus)
        require(self.nodes >= 1 and self.gpus % self.nodes == 0, "--plan-nodes", f"a divisor of --plan-gpus "
                f"{self.gpus}", self.nodes)
        require(self.peak_tflops > 0, "--plan-peak-tflops", "> 0", self.peak_tflops)
        require(0 < self.utilisation <= 1, "--plan-utilisation", "a fraction in (0, 1]", self.utilisation)
        require(self.probe_iterations >= 0, "--plan-probe-iterations", ">= 0 (0 = no probe)", self.probe_iterations)
        require(self.probe_images >= 1, "--plan-probe-images", ">= 1", self.probe_images)


def teacher_flops(model: torch.nn.Module, image_size: int, device: torch.device) -> tuple[int, int]:
    """(forward, forward + backward-to-input) FLOPs per image of a frozen teacher, counted on a batch of 2."""
    x = torch.randn(2, 3, image_size, image_size, device=device, requires_grad=True)
    with FlopCounterMode(display=False) as fwd:
        with torch.no_grad():
            model(x)
    with FlopCounterMode(display=False) as both:
        logits = model(x)
        F.cross_entropy(logits.float(), torch.zeros(2, dtype=torch.long, device=device)).backward()
    return fwd.get_total_flops() // 2, both.get_total_flops() // 2


def _probe(setup: RunSetup, m: int, opts: PlanSettings, device: torch.device) -> dict[str, Any]:
    """A few timed iterations of one real-sized batch of teacher ``m`` (at most ``opts.probe_images`` images per
    problem, scaled to the real count)."""
    cfg, c, s = setup.cfg, len(setup.classes), setup.image_size
    chunk = cfg.class_chunk if 0 < cfg.class_chunk < c else c
    n = min(chunk, opts.probe_images)
    problems, base = setup.method.probe_batch(cfg, m, len(setup.teachers), n, s, setup.norm)
    prepared = SynthesisTeacher(setup.teachers[m], first_bn_multiplier=cfg.first_bn_multiplier, backend=cfg.backend,
                                fold_bn=cfg.fold_bn, channels_last=cfg.channels_last, compile=cfg.compile,
                                probe_size=s)
    stamps: list[float] = []
    settings = dataclasses.replace(SynthesisSettings.from_config(cfg, setup.info.small),
                                   iterations=opts.probe_iterations + 1, class_chunk=0, log_every=10**9,
                                   iteration="eager")

    def tick(_n, _ce, _bn):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())

    start = time.perf_counter()
    optimise_batch(problems, prepared, PixelGeometry.of(base, setup.norm, device), settings, on_progress=tick)
    per_iter = statistics.median(b - a for a, b in zip(stamps, stamps[1:], strict=False)) if len(stamps) > 1 \
        else stamps[0] - start
    scale = c / n  # the batch's real images per problem over the probe's
    return {"probe_images_per_problem": n, "probe_problems": len(problems), "probe_seconds_per_iteration": per_iter,
            "seconds_per_iteration": per_iter * scale, "scaled_by": scale}


def make_plan(cfg: DistillConfig, opts: PlanSettings, progress: bool = True,
              default_teachers: DefaultTeachers | None = None) -> dict[str, Any]:
    """The plan of ``cfg`` (see the module docstring); nothing is written but the JSON, nothing optimised."""
    cfg.validate()
    opts.validate()
    with DistContext(cfg.device) as dist:
        device = dist.device
        setup = prepare(cfg, dist, default_teachers)
        cfg, info, s, c = setup.cfg, setup.info, setup.image_size, len(setup.classes)
        teachers, tmetas, storage = setup.teachers, setup.teacher_metas, setup.storage
        chunks = math.ceil(c / cfg.class_chunk) if 0 < cfg.class_chunk < c else 1

        per_teacher = []
        for m, (model, meta) in enumerate(zip(teachers, tmetas, strict=True)):
            problems = setup.method.problems_of_teacher(cfg, storage, m)
            fwd, fwd_bwd = teacher_flops(model, s, device)
            row = {"teacher": meta.arch, "width": meta.width, "problems": problems,
                   "batches": math.ceil(problems / cfg.problems_per_batch) if problems else 0,
                   "forward_flops_per_image": fwd, "synthesis_flops_per_image_iteration": fwd_bwd,
                   "flops_per_problem": fwd_bwd * c * cfg.iterations}
            if problems and opts.probe_iterations:
                if progress:
                    print(f"distill --plan: probing {meta.arch} ({opts.probe_iterations} iterations)", flush=True)
                row.update(_probe(setup, m, opts, device))
                row["seconds_this_device"] = row["seconds_per_iteration"] * cfg.iterations * row["batches"]
            per_teacher.append(row)

    synthesis_flops = sum(r["flops_per_problem"] * r["problems"] for r in per_teacher)
    label_flops = storage.num_synthetic * sum(r["forward_flops_per_image"] for r in per_teacher)
    total_flops = synthesis_flops + label_flops
    # Ranks take whole batches round robin in the runner's order (teacher-major): the busiest rank sets the time.
    batch_flops = [r["flops_per_problem"] * min(cfg.problems_per_batch, r["problems"] - b * cfg.problems_per_batch)
                   for r in per_teacher for b in range(r["batches"])]
    rank_flops = [sum(batch_flops[i::opts.gpus]) for i in range(opts.gpus)]
    batches = len(batch_flops)
    sustained = opts.peak_tflops * 1e12 * opts.utilisation
    projection = {
        "label": "PROJECTION, not a measurement: FLOPs of the busiest rank (whole batches, round robin) / (peak x "
                 "utilisation); static labels on rank 0",
        "gpus": opts.gpus, "nodes": opts.nodes, "busy_gpus": sum(1 for f in rank_flops if f > 0),
        "peak_tflops_per_gpu": opts.peak_tflops, "utilisation": opts.utilisation,
        "synthesis_hours": max(rank_flops) / sustained / 3600,
        "labels_hours": label_flops / sustained / 3600,
    }
    measured = [r for r in per_teacher if "seconds_this_device" in r]
    per_node = opts.gpus // opts.nodes
    skip = ("out", "resume", "device", "threads", "stop_after", "teacher_cache")
    argv = to_argv(cfg, skip=skip) + ["--out", cfg.out]
    torchrun = ["torchrun", f"--nnodes={opts.nodes}", f"--nproc-per-node={per_node}"]
    if opts.nodes > 1:
        torchrun += ["--rdzv-backend=c10d", "--rdzv-endpoint=$MASTER_ADDR:29500", "--rdzv-id=infer-fast-distill"]
    command = " ".join(shlex.quote(a) if not a.startswith("--rdzv-endpoint") else a
                       for a in [*torchrun, "-m", "infer_fast", "distill", *argv])
    plan = {
        "config": cfg.to_dict(),
        "data": {"source": info.source, "classes": c, "image_size": s, "small": info.small},
        "budget": {"K": storage.num_natural_sets, "ufcs": storage.stored_ufcs,
                   "natural_images": storage.stored_naturals, "synthetic_images": storage.num_synthetic,
                   "stored_bytes": storage.stored_bytes, "label_bytes": storage.label_bytes},
        "work": {"problems": sum(r["problems"] for r in per_teacher), "problems_per_forward": cfg.problems_per_batch,
                 "class_chunks": chunks, "images_per_forward": cfg.problems_per_batch * math.ceil(c / chunks),
                 "batches": batches, "iterations": cfg.iterations},
        "teachers": per_teacher,
        "flops": {"synthesis": synthesis_flops, "static_labels": label_flops, "total": total_flops},
        "this_device": {"device": str(device), "threads": torch.get_num_threads(),
                        "synthesis_hours_one_process": sum(r["seconds_this_device"] for r in measured) / 3600
                        if measured else None},
        "projection": projection,
        "torchrun": command,
    }
    path = opts.json_path or f"{cfg.out.rstrip(os.sep)}.plan.json"
    atomic_write_json(path, plan)
    plan["json"] = path
    return plan


def _si(x: float) -> str:
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} "


def _duration(hours: float) -> str:
    if hours >= 1:
        return f"{hours:.1f} h"
    return f"{hours * 60:.1f} min" if hours * 60 >= 1 else f"{hours * 3600:.1f} s"


def format_plan(plan: dict[str, Any]) -> str:
    b, w, f, p = plan["budget"], plan["work"], plan["flops"], plan["projection"]
    lines = [
        f"plan: {plan['config']['method']} ipc {plan['config']['ipc']} on {plan['data']['source']} "
        f"({plan['data']['classes']} classes, {plan['data']['image_size']} px), M = {len(plan['teachers'])}",
        f"  budget: K = {b['K']}, {b['ufcs']} UFCs, {b['natural_images']:,} naturals -> {b['synthetic_images']:,} "
        f"synthetic images; stored {b['stored_bytes'] / 2**20:,.1f} MiB + labels {b['label_bytes'] / 2**20:,.1f} MiB",
        f"  work: {w['problems']} problems x {w['iterations']} iterations, {w['problems_per_forward']} per forward, "
        f"{w['class_chunks']} class chunk(s), {w['images_per_forward']} images per forward, {w['batches']} batches",
    ]
    for r in plan["teachers"]:
        line = (f"  {r['teacher']} w{r['width']:g}: {r['problems']} problems, "
                f"{_si(r['synthesis_flops_per_image_iteration'])}FLOP per image-iteration, "
                f"{_si(r['flops_per_problem'])}FLOP per problem")
        if "seconds_per_iteration" in r:
            line += (f"; measured {r['seconds_per_iteration']:.3f} s per batch iteration here (probe of "
                     f"{r['probe_images_per_problem']} images/problem x{r['scaled_by']:.1f})")
        lines.append(line)
    hours = plan["this_device"]["synthesis_hours_one_process"]
    lines.append(f"  FLOPs: synthesis {_si(f['synthesis'])}FLOP + static labels {_si(f['static_labels'])}FLOP")
    if hours is not None:
        lines.append(f"  this device ({plan['this_device']['device']}, one process, measured probe x scale): "
                     f"{_duration(hours)} of synthesis")
    lines.append(f"  {p['label']}: {p['gpus']} GPUs ({p['busy_gpus']} busy) at {p['peak_tflops_per_gpu']:g} TFLOP/s "
                 f"x {p['utilisation']:.0%}: synthesis {_duration(p['synthesis_hours'])}, labels "
                 f"{_duration(p['labels_hours'])}")
    lines.append(f"  run: {plan['torchrun']}")
    lines.append(f"  plan written to {plan['json']}")
    return "\n".join(lines)
