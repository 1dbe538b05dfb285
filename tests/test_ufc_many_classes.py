"""The corrected UFC rule (INFER §3.5) at many classes: after a short optimisation most of u moves.

The withdrawn rule bounded the stored u by the intersection ``[lo - min_c x_c, hi - max_c x_c]`` over the set;
with 100+ real images some image is black and another white at almost every pixel, so u was pinned to ~0 and
INFER degenerated into repeated natural images. Each test runs both rules on the same real images: the loose
bound must let at least half of u's pixel-channels move by more than one grey level, the old one must not
(so each test fails on the old rule), and every composed image must stay in the valid range.
"""

from __future__ import annotations

import io
import tarfile

import pytest
import torch
import torch.nn as nn
from conftest import require_shared
from synth_helpers import run_batch

from infer_fast import data
from infer_fast.ops.backend import get as get_op
from infer_fast.runtime import IMAGENET_MEAN, IMAGENET_STD, Normalisation
from infer_fast.synth.augment import AugSettings
from infer_fast.synth.methods.infer import infer_problems
from infer_fast.synth.problem import pinned_fraction

NORM = Normalisation(IMAGENET_MEAN, IMAGENET_STD)
MEAN, STD, LO, HI = NORM.tensors()


def _teacher(num_classes: int, calib: torch.Tensor) -> nn.Module:
    """A small conv net with BatchNorm whose running statistics are those of ``calib`` (normalised images)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(32, num_classes))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average: the statistics of the calibration images
    net.train()
    with torch.no_grad():
        for chunk in calib.split(256):
            net(chunk)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _moved_fraction(set_u8: torch.Tensor, rule: str, iterations: int = 8) -> tuple[float, torch.Tensor]:
    """Optimise one UFC shared by the images ``set_u8`` (uint8 [n, 3, S, S], image c of class c) under the
    ``rule``; returns (fraction of u's values moved by more than 1/255 in pixel units, the composed images)."""
    n, s = set_u8.shape[0], set_u8.shape[-1]
    naturals = set_u8.unsqueeze(0)  # one natural set, K = 1
    model = _teacher(n, NORM.normalise(set_u8))
    problems = infer_problems(naturals, 1, NORM, bound=rule)
    res = run_batch(problems, model, set_u8, MEAN, STD, LO, HI, iterations=iterations,
                    aug=AugSettings(small=True, jitter=4), class_chunk=500, log_every=iterations)
    u = res.params[0]
    assert u.shape == (1, 3, s, s)
    compose = get_op("compensator_broadcast", "fused")
    composed = compose(set_u8, u, torch.arange(n), torch.zeros(n, dtype=torch.int64), MEAN, STD, LO, HI)
    return 1.0 - pinned_fraction(u, STD), composed


def _check(set_u8: torch.Tensor) -> None:
    moved, composed = _moved_fraction(set_u8, "loose")
    assert moved >= 0.5, f"corrected rule: only {moved:.1%} of u moved by more than 1/255 at {set_u8.shape[0]} classes"
    assert (composed >= LO.view(1, 3, 1, 1) - 1e-6).all() and (composed <= HI.view(1, 3, 1, 1) + 1e-6).all()
    old, _ = _moved_fraction(set_u8, "set")
    assert old < 0.5, f"the withdrawn rule should pin u at {set_u8.shape[0]} classes (moved {old:.1%})"
    assert moved > old


def _tiny_imagenet_one_per_class(path: str, size: int = 32) -> torch.Tensor:
    """The first training image of each of the 200 classes, streamed from the tarball (uint8 [200, 3, S, S])."""
    from PIL import Image

    first: dict[str, torch.Tensor] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 4 and parts[1] == "train" and parts[2] not in first:
                img = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB").resize((size, size))
                first[parts[2]] = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(size, size, 3)
    assert len(first) == 200, f"{path}: expected 200 training classes, found {len(first)}"
    return torch.stack([first[k] for k in sorted(first)]).permute(0, 3, 1, 2).contiguous()


def test_u_moves_at_200_real_tiny_imagenet_classes():
    images = _tiny_imagenet_one_per_class(require_shared("tiny-imagenet-32.tar.gz"))
    _check(images)


def test_u_moves_on_a_1000_image_set():
    # 1,000 real digits (100 per class, each its own "class" of the set): black backgrounds, white strokes,
    # the worst case of the old rule; always available.
    sample = data.sample_naturals("digits", per_class=100, seed=0, image_size=16)
    images = sample.images.reshape(-1, 3, 16, 16)
    assert images.shape[0] == 1000
    _check(images)


@pytest.mark.parametrize("rule", ["loose", "set"])
def test_stored_u_respects_its_bound(rule):
    sample = data.sample_naturals("digits", per_class=3, seed=1, image_size=8)
    images = sample.images.reshape(-1, 3, 8, 8)
    naturals = images.unsqueeze(0)
    model = _teacher(images.shape[0], NORM.normalise(images))
    p = infer_problems(naturals, 1, NORM, bound=rule)[0]
    res = run_batch([p], model, images, MEAN, STD, LO, HI, iterations=5, lr=2.0, aug=AugSettings(small=True, jitter=0))
    u = res.params[0]
    assert (u >= p.lower - 1e-6).all() and (u <= p.upper + 1e-6).all()
