"""Hyperparameters of `infer-fast distill`: one dataclass, defaults from the INFER paper (INFER §2-4, §7).

The CLI maps 1:1 onto the fields (``--problems-per-batch`` sets ``problems_per_batch``); a YAML/JSON file given
with ``--config`` sets the same field names, and flags given on the command line override it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from infer_fast.config_cli import check_choices, option
from infer_fast.ops.backend import BACKENDS
from infer_fast.runtime import resolve_device
from infer_fast.synth import methods
from infer_fast.synth.problem import UFC_BOUNDS

PRECISIONS = ("fp32", "bf16")
SRE2L_INITS = ("noise", "natural")
# Per-dataset defaults of the fields left None (INFER §3.2): small (CIFAR-style) images and ImageNet-style ones.
SMALL_DEFAULTS = {"iterations": 1000, "r_bn": 1.0, "jitter": 4}
LARGE_DEFAULTS = {"iterations": 2000, "r_bn": 0.01, "jitter": 32}
# problems_per_batch=0: enough problems per forward for this many pixels (32 CIFAR images; bench_synthesis.py
# measured 4 CIFAR-10 problems per forward fastest; at 224 px one class chunk is already batch enough).
AUTO_MIN_PIXELS = 32 * 32 * 32
AUTO_MAX_PROBLEMS = 16


def auto_problems_per_batch(images_per_problem: int, class_chunk: int, image_size: int) -> int:
    """Problems per forward for ``problems_per_batch=0``: enough for AUTO_MIN_PIXELS pixels per forward."""
    per_forward = min(images_per_problem, class_chunk) if class_chunk > 0 else images_per_problem
    pixels = max(1, per_forward) * image_size * image_size
    return min(AUTO_MAX_PROBLEMS, max(1, -(-AUTO_MIN_PIXELS // pixels)))


@dataclass
class DistillConfig:
    # ---- what to distil -----------------------------------------------------------------------
    data: str | None = option(None, help="dataset root folder (ImageFolder split folders train/ and val/ or test/)")
    dataset: str | None = option(None, help="embedded dataset name instead of --data: digits")
    teachers: list[str] = option(default_factory=list, metavar="FILE", help="teacher checkpoint files, one per "
                                 "architecture (digits: default ensemble when omitted)")
    # What a teacher file without infer_fast metadata predicts (torchvision's ImageNet .pth files: imagenet1k, the
    # 1,000 sorted wnids); the data's classes must be those classes or a subset (models.classes).
    teacher_classes: str | None = option(None, metavar="imagenet1k|FILE", help="declare the output classes of "
                                         "teacher files that do not state them: imagenet1k (the 1,000 ImageNet-1k "
                                         "wnids, sorted) or a text file with one class name per line")
    method: str = option("infer", choices=methods.names(), help="infer (UFCs), sre2l (class-specific synthesis) or "
                         "random (random naturals); same budget and format. Content controls of the quality study: "
                         "infer-noise (u replaced by noise of the same per-channel norm), infer-swap (each set "
                         "composed with another set's u)")
    ipc: int = option(10, help="storage budget in images per class")
    seed: int = option(0)
    out: str = option("distilled", resume=False, help="output folder of the distilled dataset")
    resume: bool = option(False, resume=False,
                          help="continue an interrupted run in --out (the result equals an uninterrupted run)")
    image_size: int | None = option(None)  # None: the dataset's size (digits: the data pipeline's default)
    # ---- optimisation (INFER §3) --------------------------------------------------------
    # None below: the per-dataset default of SMALL_DEFAULTS / LARGE_DEFAULTS, filled in by resolved() and saved in
    # the manifest's config.
    iterations: int | None = option(None, help="optimisation steps T per problem (default: 1000 small images, 2000 "
                                    "ImageNet-style)")
    lr: float = option(0.25)
    beta1: float = option(0.5)
    beta2: float = option(0.9)
    eps: float = option(1e-8)
    r_bn: float | None = option(None, help="weight of the BN-statistic matching loss (default: 1 small images, 0.01 "
                                "ImageNet-style)")
    first_bn_multiplier: float = option(10.0)
    jitter: int | None = option(None, help="random roll of up to this many pixels per iteration in H and W (default: "
                                "4 small images, 32 ImageNet-style)")
    # "set" pins u to ~0 at 100+ classes, which is why "loose" is the default and "set" is kept for ablations only.
    ufc_bound: str = option("loose", choices=UFC_BOUNDS, help="bound of the stored UFC: loose [lo-hi, hi-lo] (INFER "
                            "§3.5; images are clamped per image) or set (the withdrawn intersection rule, pins u to ~0 "
                            "at 100+ classes; ablations only)")
    crop_scale_min: float = option(0.08)  # ImageNet-style random resized crop scale range (SRe2L's recover setting)
    crop_scale_max: float = option(1.0)
    per_image_crop: bool = option(False)  # ImageNet-style: one crop+flip per problem and iteration (research code)
    sre2l_init: str = option("noise", choices=SRE2L_INITS, help="sre2l: start from noise (standard normal in "
                             "normalised space, as SRe2L) or natural images")
    # ---- execution ----------------------------------------------------------------------------
    # Small images gain from bigger batches; a 224 px chunk is batch enough (see AUTO_MIN_PIXELS).
    problems_per_batch: int = option(0, help="(k, m) problems of one teacher per forward pass, each its own "
                                     "BN-statistics group (0: auto, enough for the pixels of 32 CIFAR images per "
                                     "forward)")
    class_chunk: int = option(0, help="images of a problem per forward (0: all classes); each chunk its own BN group")
    label_batch: int = option(256, resume=False)  # images per teacher forward when computing the static labels
    log_every: int = option(50, resume=False)  # iterations between host reads of the losses (tqdm, NaN/Inf check)
    threads: int | None = option(None, resume=False)  # CPU threads per process (None: torch's; torchrun: 1 per rank)
    device: str = option("auto", resume=False)  # auto | cpu | cuda | cuda:N (torchrun: each rank cuda:LOCAL_RANK)
    backend: str = option("fused", choices=BACKENDS,
                          help="fused: infer_fast kernels; reference: pure-PyTorch references")
    # Speed levers of the teacher (bench/bench_synthesis.py measures each); results agree to float rounding.
    fold_bn: bool = option(True, help="fold each BatchNorm into its convolution (BN statistics recovered exactly "
                           "from the folded output)")
    channels_last: bool = option(True, help="run the teacher channels-last (fastest convolution layout of oneDNN "
                                 "and cuDNN)")
    compile: bool = option(False, help="torch.compile the prepared teacher")  # pays off on GPU and for long runs
    precision: str = option("fp32", choices=PRECISIONS,
                            help="fp32, or bf16 autocast of the teacher (GPU lever; refused where it would crash)")
    # Same result up to float rounding (resampled crop, Adam's capturable arithmetic), hence in the resume fingerprint.
    cuda_graphs: bool = option(False, help="capture one synthesis iteration in a CUDA graph and replay it (CUDA only)")
    teacher_cache: str | None = option(None, resume=False)  # digits without --teachers: the default ensemble's cache
    log_dir: str | None = option(None, metavar="DIR", resume=False,
                                 help="also write TensorBoard scalars (losses, iterations/s, class evidence) and the "
                                      "preview grid to DIR")
    stop_after: int | None = option(None, resume=False,
                                    help="stop after this many finished batches (resumable with --resume)")

    def validate(self) -> None:
        if (self.data is None) == (self.dataset is None):
            raise ValueError("distill: give exactly one of --data ROOT or --dataset NAME "
                             f"(got data={self.data!r}, dataset={self.dataset!r})")
        check_choices(self, "distill")
        if self.problems_per_batch < 0:
            raise ValueError(f"distill: --problems-per-batch must be >= 0 (0 = auto), got {self.problems_per_batch}")
        for name in ("ipc", "label_batch", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"distill: --{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.iterations is not None and self.iterations < 1:
            raise ValueError(f"distill: --iterations must be >= 1, got {self.iterations}")
        if self.class_chunk < 0:
            raise ValueError(f"distill: --class-chunk must be >= 0 (0 = all classes), got {self.class_chunk}")
        if self.jitter is not None and self.jitter < 0:
            raise ValueError(f"distill: --jitter must be >= 0, got {self.jitter}")
        if not 0 < self.crop_scale_min <= self.crop_scale_max <= 1:
            raise ValueError("distill: need 0 < --crop-scale-min <= --crop-scale-max <= 1, got "
                             f"{self.crop_scale_min}, {self.crop_scale_max}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"distill: --threads must be >= 1, got {self.threads}")
        if self.stop_after is not None and self.stop_after < 0:
            raise ValueError(f"distill: --stop-after must be >= 0, got {self.stop_after}")
        if self.cuda_graphs and (dev := resolve_device(self.device)).type != "cuda":
            raise ValueError(f"distill: --cuda-graphs needs a CUDA device; --device {self.device} is {dev} here")

    @property
    def source(self) -> str:
        """The data source string of infer_fast.data ("digits" or a root folder)."""
        return self.dataset if self.dataset is not None else self.data  # type: ignore[return-value]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def resolved(self, small: bool, num_classes: int) -> DistillConfig:
        """This config with every per-dataset default filled in, as the run uses it and writes it into the manifest:
        T, r_bn and the jitter depend on the image regime (INFER §3.2), the automatic problems per forward on the
        class count, chunk and image size (``image_size`` must be set)."""
        regime = SMALL_DEFAULTS if small else LARGE_DEFAULTS
        return dataclasses.replace(
            self,
            **{k: getattr(self, k) if getattr(self, k) is not None else v for k, v in regime.items()},
            problems_per_batch=self.problems_per_batch or auto_problems_per_batch(num_classes, self.class_chunk,
                                                                                  int(self.image_size)),
        )
