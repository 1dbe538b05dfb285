"""Hyperparameters of `infer-fast distill`: one dataclass, defaults from the INFER paper (INFER §2-4, §7).

The CLI maps 1:1 onto the fields (``--problems-per-batch`` sets ``problems_per_batch``); a YAML/JSON file given
with ``--config`` sets the same field names, and flags given on the command line override it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from infer_fast.config_cli import check_choices, data_option, option, require
from infer_fast.ops.backend import BACKENDS
from infer_fast.runtime import resolve_device
from infer_fast.synth import methods
from infer_fast.synth.problem import UFC_BOUNDS

PRECISIONS = ("fp32", "bf16")
SRE2L_INITS = ("noise", "natural")
# Per-dataset defaults of the fields left None (INFER §3.2): small (CIFAR-style) images and ImageNet-style ones.
SMALL_DEFAULTS = {"iterations": 1000, "r_bn": 1.0, "jitter": 4}
LARGE_DEFAULTS = {"iterations": 2000, "r_bn": 0.01, "jitter": 32}
# The measured per-dataset choice of r_bn (issue 18; bench/bench_sweep.py on class evidence, never on the validation
# split): small images with more than MANY_CLASSES classes take MANY_CLASSES_R_BN. On Tiny-ImageNet-32 (200 classes,
# its committed teachers) the compositions lose their naturals' class evidence at the paper's small-image r_bn = 1
# (-0.11) and a little at 0.01; r_bn = 0 (u optimised on the teachers' CE alone) keeps it at the workload's T = 100
# on 3 of 3 seeds and loses least at T = 300, and its students at equal steps are level with 0.01's (README, "The
# balance of the objective"). On CIFAR-10 (10 classes) r_bn = 1 keeps it. CIFAR-100 (100 classes, unmeasured here)
# keeps the paper's 1. Only methods that optimise compensators take it (Method.measured_r_bn); sre2l keeps the paper's.
MANY_CLASSES = 100
MANY_CLASSES_R_BN = 0.0
# problems_per_batch=0: enough problems per forward for this many pixels (32 CIFAR images; bench_synthesis.py
# measured 4 CIFAR-10 problems per forward fastest; at 224 px one class chunk is already batch enough).
AUTO_MIN_PIXELS = 32 * 32 * 32
AUTO_MAX_PROBLEMS = 16


def paper_defaults(small: bool) -> dict:
    """The paper's per-regime defaults (INFER §3.2) of the fields left None."""
    return SMALL_DEFAULTS if small else LARGE_DEFAULTS


def auto_problems_per_batch(images_per_problem: int, class_chunk: int, image_size: int) -> int:
    """Problems per forward for ``problems_per_batch=0``: enough for AUTO_MIN_PIXELS pixels per forward."""
    per_forward = min(images_per_problem, class_chunk) if class_chunk > 0 else images_per_problem
    pixels = max(1, per_forward) * image_size * image_size
    return min(AUTO_MAX_PROBLEMS, max(1, -(-AUTO_MIN_PIXELS // pixels)))


@dataclass
class DistillConfig:
    # ---- what to distil -----------------------------------------------------------------------
    data: str | None = data_option(None, required=True)
    teachers: list[str] = option(default_factory=list, metavar="FILE", help="teacher checkpoint files, one per "
                                 "architecture (--data digits: the default ensemble, trained and cached, when omitted)")
    # What a teacher file without infer_fast metadata predicts (torchvision's ImageNet .pth files: imagenet1k, the
    # 1,000 sorted wnids); the data's classes must be those classes or a subset (models.classes).
    teacher_classes: str | None = option(None, metavar="imagenet1k|FILE", help="declare the output classes of "
                                         "teacher files that do not state them: imagenet1k (the 1,000 ImageNet-1k "
                                         "wnids, sorted) or a text file with one class name per line")
    method: str = option("infer", choices=methods.names(), help="infer (UFCs), sre2l (class-specific synthesis) or "
                         "random (random naturals); same budget and format. Content controls of the quality study: "
                         "infer-noise (u replaced by noise of the same per-channel norm), infer-swap (each set "
                         "composed with another set's u), infer-views (u = 0: M fixed random augmentations of each "
                         "natural, stored as images)")
    # not a result field: the transformed compensators equal those the control would optimise (checked), so the
    # resume fingerprint of every run stays as it was
    compensators_from: str | None = option(None, metavar="DIR", resume=False,
                                           help="infer-noise, infer-swap: take the compensators of this finished "
                                           "--method infer run (same data, seed, teachers and optimisation "
                                           "settings, checked) instead of optimising them again")
    ipc: int = option(10, help="storage budget in images per class")
    seed: int = option(0, help="seed of the natural-image sample and of the optimisation")
    out: str = option("distilled", resume=False, help="output folder of the distilled dataset")
    resume: bool = option(False, resume=False,
                          help="continue an interrupted run in --out (the result equals an uninterrupted run)")
    image_size: int | None = option(None, help="image side in pixels (default: the dataset's; digits: the data "
                                    "pipeline's 32)")
    # ---- optimisation (INFER §3) --------------------------------------------------------
    # None below: the per-dataset default of SMALL_DEFAULTS / LARGE_DEFAULTS, filled in by resolved() and saved in
    # the manifest's config.
    iterations: int | None = option(None, help="optimisation steps T per problem (default: 1000 small images, 2000 "
                                    "ImageNet-style)")
    lr: float = option(0.25, help="Adam learning rate of the UFCs / synthesised images")
    beta1: float = option(0.5, help="Adam beta1")
    beta2: float = option(0.9, help="Adam beta2")
    eps: float = option(1e-8, help="Adam epsilon")
    r_bn: float | None = option(None, help="weight of the BN-statistic matching loss (default: 1 small images, 0.01 "
                                "ImageNet-style; infer and its controls: 0 on small images with more than 100 "
                                "classes, the measured choice)")
    first_bn_multiplier: float = option(10.0, help="extra weight of the first BatchNorm layer's statistic loss")
    jitter: int | None = option(None, help="random roll of up to this many pixels per iteration in H and W (default: "
                                "4 small images, 32 ImageNet-style)")
    # "set" pins u to ~0 at 100+ classes, which is why "loose" is the default and "set" is kept for ablations only.
    ufc_bound: str = option("loose", choices=UFC_BOUNDS, help="bound of the stored UFC: loose [lo-hi, hi-lo] (INFER "
                            "§3.5; images are clamped per image) or set (the withdrawn intersection rule, pins u to ~0 "
                            "at 100+ classes; ablations only)")
    crop_scale_min: float = option(0.08, help="ImageNet-style images: smallest area fraction of the random resized "
                                   "crop (SRe2L's recover setting)")
    crop_scale_max: float = option(1.0, help="ImageNet-style images: largest area fraction of that crop")
    per_image_crop: bool = option(False, help="ImageNet-style images: one crop + flip per problem and iteration (as "
                                  "the research code) instead of one per batch")
    sre2l_init: str = option("noise", choices=SRE2L_INITS, help="sre2l: start from noise (standard normal in "
                             "normalised space, as SRe2L) or natural images")
    # ---- execution ----------------------------------------------------------------------------
    # Small images gain from bigger batches; a 224 px chunk is batch enough (see AUTO_MIN_PIXELS).
    problems_per_batch: int = option(0, help="(k, m) problems of one teacher per forward pass, each its own "
                                     "BN-statistics group (0: auto, enough for the pixels of 32 CIFAR images per "
                                     "forward)")
    class_chunk: int = option(0, help="images of a problem per forward (0: all classes); each chunk its own BN group")
    label_batch: int = option(256, resume=False, help="images per teacher forward when computing the static labels")
    log_every: int = option(50, resume=False, help="iterations between host reads of the losses (progress bar, "
                            "NaN/Inf check)")
    threads: int = option(0, resume=False, help="CPU threads per process (0: torch's default, which torchrun's "
                          "OMP_NUM_THREADS=1 makes one per rank)")
    device: str = option("auto", resume=False, help="auto, cpu, cuda or cuda:N (under torchrun each rank uses "
                         "cuda:LOCAL_RANK)")
    backend: str = option("fused", choices=BACKENDS,
                          help="fused: infer_fast kernels; reference: pure-PyTorch references")
    # Speed levers of the teacher (bench/bench_synthesis.py measures each); results agree to float rounding.
    fold_bn: bool = option(True, help="fold each BatchNorm into its convolution (BN statistics recovered exactly "
                           "from the folded output)")
    channels_last: bool = option(True, help="run the teacher channels-last (fastest convolution layout of oneDNN "
                                 "and cuDNN)")
    compile: bool = option(False, help="torch.compile the prepared teacher (pays off on GPU and for long runs)")
    precision: str = option("fp32", choices=PRECISIONS,
                            help="fp32, or bf16 autocast of the teacher (GPU lever; refused where it would crash)")
    # Same result up to float rounding (resampled crop, Adam's capturable arithmetic), hence in the resume fingerprint.
    cuda_graphs: bool = option(False, help="capture one synthesis iteration in a CUDA graph and replay it (CUDA only)")
    teacher_cache: str | None = option(None, metavar="DIR", resume=False, help="--data digits without --teachers: "
                                       "where the default ensemble is cached (default: ~/.cache/infer_fast or "
                                       "$INFER_FAST_CACHE)")
    log_dir: str | None = option(None, metavar="DIR", resume=False,
                                 help="also write TensorBoard scalars (losses, iterations/s, class evidence) and the "
                                      "preview grid to DIR")
    stop_after: int = option(0, metavar="N", resume=False,
                             help="stop after N finished batches, resumable with --resume (0: run to the end)")

    def validate(self) -> None:
        require(self.data == "digits" or (self.data is not None and os.path.isdir(self.data)), "--data",
                "digits or a dataset folder", self.data)
        check_choices(self)
        require(self.problems_per_batch >= 0, "--problems-per-batch", ">= 0 (0 = auto)", self.problems_per_batch)
        for name in ("ipc", "label_batch", "log_every"):
            require(getattr(self, name) >= 1, f"--{name.replace('_', '-')}", ">= 1", getattr(self, name))
        require(self.iterations is None or self.iterations >= 1, "--iterations", ">= 1", self.iterations)
        require(self.class_chunk >= 0, "--class-chunk", ">= 0 (0 = all classes)", self.class_chunk)
        require(self.jitter is None or self.jitter >= 0, "--jitter", ">= 0", self.jitter)
        require(0 < self.crop_scale_min <= self.crop_scale_max <= 1, "--crop-scale-min, --crop-scale-max",
                "0 < min <= max <= 1", (self.crop_scale_min, self.crop_scale_max))
        require(self.lr > 0, "--lr", "> 0", self.lr)
        require(self.threads >= 0, "--threads", ">= 0 (0 = torch's default)", self.threads)
        require(self.stop_after >= 0, "--stop-after", ">= 0 (0 = run to the end)", self.stop_after)
        if self.compensators_from is not None:
            require(methods.get(self.method).takes_compensators, "--compensators-from", "--method of a content "
                    "control built on INFER's compensators (" + ", ".join(
                        n for n in methods.names() if methods.get(n).takes_compensators) + ")",
                    f"--method {self.method}")
            require(os.path.isfile(os.path.join(self.compensators_from, "manifest.json")), "--compensators-from",
                    "the folder of a finished --method infer run (with manifest.json)", self.compensators_from)
        if self.cuda_graphs:
            require((dev := resolve_device(self.device)).type == "cuda", "--cuda-graphs", "a CUDA --device",
                    f"--device {self.device} ({dev} here)")

    @property
    def source(self) -> str:
        """The data source string of infer_fast.data ("digits" or a root folder)."""
        return self.data  # type: ignore[return-value]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def defaults(self, small: bool, num_classes: int) -> dict[str, tuple[float, str]]:
        """{field: (value, where it comes from)} of the per-dataset defaults of this method on data of the ``small``
        regime with ``num_classes`` classes: T, r_bn and the jitter of the image regime (INFER §3.2), r_bn replaced by
        the measured choice for small images with many classes (MANY_CLASSES)."""
        regime = "small images" if small else "ImageNet-style images"
        out = {k: (v, f"INFER §3.2, {regime}") for k, v in paper_defaults(small).items()}
        if small and num_classes > MANY_CLASSES and methods.get(self.method).measured_r_bn:
            out["r_bn"] = (MANY_CLASSES_R_BN, f"measured choice for small images with more than {MANY_CLASSES} "
                           f"classes ({num_classes}): bench_sweep.py on Tiny-ImageNet-32 (README); the paper's "
                           f"{SMALL_DEFAULTS['r_bn']:g} is --r-bn {SMALL_DEFAULTS['r_bn']:g}")
        return out

    def default_sources(self, small: bool, num_classes: int) -> dict[str, str]:
        """{field: where its value comes from} for the fields this config leaves to the per-dataset default (what
        the manifest records beside the resolved config)."""
        return {k: f"{v:g}: {why}" for k, (v, why) in self.defaults(small, num_classes).items()
                if getattr(self, k) is None}

    def resolved(self, small: bool, num_classes: int) -> DistillConfig:
        """This config with every per-dataset default filled in, as the run uses it and writes it into the manifest:
        T, r_bn and the jitter depend on the image regime and the class count (:meth:`defaults`), the automatic
        problems per forward on the class count, chunk and image size (``image_size`` must be set)."""
        regime = self.defaults(small, num_classes)
        return dataclasses.replace(
            self,
            **{k: getattr(self, k) if getattr(self, k) is not None else v for k, (v, _) in regime.items()},
            problems_per_batch=self.problems_per_batch or auto_problems_per_batch(num_classes, self.class_chunk,
                                                                                  int(self.image_size)),
        )
