"""Hyperparameters of `infer-fast distill`: one dataclass, defaults from the INFER paper (spec sections 2-4, 7).

The CLI maps 1:1 onto the fields (``--problems-per-batch`` sets ``problems_per_batch``); a YAML/JSON file given
with ``--config`` sets the same field names, and flags given on the command line override it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

from infer_fast.distilled import METHODS
from infer_fast.ops.backend import BACKENDS

UFC_BOUNDS = ("loose", "set")  # bound rules of the stored UFC, see synth.ufc.ufc_bounds
PRECISIONS = ("fp32", "bf16")
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
    data: str | None = None  # dataset root (ImageFolder split folders); exclusive with `dataset`
    dataset: str | None = None  # embedded dataset name: "digits"
    teachers: list[str] = field(default_factory=list)  # teacher checkpoint files (one per architecture, M of them)
    method: str = "infer"  # infer | sre2l | random
    ipc: int = 10  # storage budget: images per class
    seed: int = 0
    out: str = "distilled"
    resume: bool = False
    image_size: int | None = None  # None: the dataset's size (digits: the data pipeline's default)
    # ---- optimisation (spec section 3) --------------------------------------------------------
    iterations: int | None = None  # T; None: 1000 for small (CIFAR-style) data, 2000 for ImageNet-style
    lr: float = 0.25
    beta1: float = 0.5
    beta2: float = 0.9
    eps: float = 1e-8
    r_bn: float | None = None  # BN-matching weight; None: 1.0 small data, 0.01 ImageNet-style
    first_bn_multiplier: float = 10.0
    jitter: int | None = None  # random roll of up to this many pixels in H and W; None: 4 small, 32 ImageNet-style
    # Bound of the stored UFC (spec 3.5): "loose" [lo - hi, hi - lo] (composed images are clamped per image);
    # "set": the withdrawn intersection rule that pins u to ~0 at 100+ classes (kept for ablations only).
    ufc_bound: str = "loose"
    crop_scale_min: float = 0.08  # ImageNet-style random resized crop scale range (SRe2L's recover setting)
    crop_scale_max: float = 1.0
    per_image_crop: bool = False  # ImageNet-style: one crop+flip per problem and iteration (research code) or per image
    sre2l_init: str = "noise"  # sre2l: "noise" (standard normal in normalised space, as SRe2L) or "natural"
    # ---- execution ----------------------------------------------------------------------------
    # (k, m) problems sharing a teacher in one forward, each its own BN group. 0: auto, enough problems for
    # AUTO_MIN_PIXELS pixels per forward (small images gain from bigger batches; a 224 px chunk is batch enough).
    problems_per_batch: int = 0
    class_chunk: int = 0  # images of one problem per forward (0: all classes); each chunk its own BN group
    label_batch: int = 256  # images per teacher forward when computing the static labels
    log_every: int = 50  # iterations between host reads of the losses (tqdm postfix, NaN/Inf check)
    threads: int | None = None  # CPU intra-op threads per process (None: torch's default; torchrun gives 1 per rank)
    device: str = "auto"  # auto | cpu | cuda | cuda:N (torchrun: each rank uses cuda:LOCAL_RANK)
    backend: str = "fused"  # fused: infer_fast.ops kernels; reference: pure-PyTorch infer_fast.reference
    # Speed levers of the teacher (bench/bench_synthesis.py measures each); results agree to float rounding.
    fold_bn: bool = True  # fold each BN into its conv, statistics recovered from the folded output
    channels_last: bool = True  # teacher and inputs channels-last (oneDNN/cuDNN's fastest conv layout)
    compile: bool = False  # torch.compile the prepared teacher (pays off on GPU and for long runs)
    precision: str = "fp32"  # fp32 | bf16 (bf16 autocast: a GPU lever; refused on CPUs where it would crash)
    teacher_cache: str | None = None  # digits without --teachers: where the default ensemble is cached
    stop_after: int | None = None  # stop (resumably) after this many finished batches in this run; None: run all

    def validate(self) -> None:
        if (self.data is None) == (self.dataset is None):
            raise ValueError("distill: give exactly one of --data ROOT or --dataset NAME "
                             f"(got data={self.data!r}, dataset={self.dataset!r})")
        if self.method not in METHODS:
            raise ValueError(f"distill: --method must be one of {METHODS}, got {self.method!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"distill: --backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"distill: --precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.sre2l_init not in ("noise", "natural"):
            raise ValueError(f"distill: --sre2l-init must be 'noise' or 'natural', got {self.sre2l_init!r}")
        if self.problems_per_batch < 0:
            raise ValueError(f"distill: --problems-per-batch must be >= 0 (0 = auto), got {self.problems_per_batch}")
        for name in ("ipc", "label_batch", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"distill: --{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.iterations is not None and self.iterations < 1:
            raise ValueError(f"distill: --iterations must be >= 1, got {self.iterations}")
        if self.class_chunk < 0:
            raise ValueError(f"distill: --class-chunk must be >= 0 (0 = all classes), got {self.class_chunk}")
        if self.ufc_bound not in UFC_BOUNDS:
            raise ValueError(f"distill: --ufc-bound must be one of {UFC_BOUNDS}, got {self.ufc_bound!r}")
        if self.jitter is not None and self.jitter < 0:
            raise ValueError(f"distill: --jitter must be >= 0, got {self.jitter}")
        if not 0 < self.crop_scale_min <= self.crop_scale_max <= 1:
            raise ValueError("distill: need 0 < --crop-scale-min <= --crop-scale-max <= 1, got "
                             f"{self.crop_scale_min}, {self.crop_scale_max}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"distill: --threads must be >= 1, got {self.threads}")
        if self.stop_after is not None and self.stop_after < 0:
            raise ValueError(f"distill: --stop-after must be >= 0, got {self.stop_after}")

    @property
    def source(self) -> str:
        """The data source string of infer_fast.data ("digits" or a root folder)."""
        return self.dataset if self.dataset is not None else self.data  # type: ignore[return-value]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> DistillConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown}; known fields: {sorted(names)}")
        cfg = cls(**d)
        if isinstance(cfg.teachers, str):
            cfg.teachers = [cfg.teachers]
        return cfg


def load_config_file(path: str) -> dict:
    """Fields from a YAML or JSON file (a mapping of DistillConfig field names)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"distill: --config file {path!r} does not exist")
    with open(path) as f:
        text = f.read()
    if path.endswith(".json"):
        d = json.loads(text)
    else:
        import yaml

        d = yaml.safe_load(text) or {}
    if not isinstance(d, dict):
        raise ValueError(f"distill: --config file {path!r} must hold a mapping of field names, got {type(d).__name__}")
    return {k.replace("-", "_"): v for k, v in d.items()}
