"""`infer-fast distill --plan` for ImageNet-1k at ipc 10 and 50, M = 3 (the README's cluster section).

ImageNet-1k and its pretrained weights cannot be had on the machines this project is built on, and a plan needs
neither pixels nor accuracy: only the 1,000 class folders (named by wnid), the image size and the real teacher
architectures. This script makes a stand-in layout (one small JPEG per ImageNet-1k class) and torchvision-layout
ImageNet teachers of the paper's three architectures (ResNet-18, MobileNet-V2, EfficientNet-B0, width 1,
1,000 outputs, random weights, declared with ``--teacher-classes imagenet1k``), then runs the plan for each ipc.
FLOP counts are those of the real architectures at 224 px; the probe times this machine.

    python bench/plan_imagenet.py [--ipc 10 50] [--class-chunk 100] [--gpus 64 --nodes 8] [--out DIR]
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from PIL import Image

from infer_fast.cli import main as cli_main
from infer_fast.models import build_model, imagenet1k_wnids
from infer_fast.runtime import cache_root

TEACHERS = ("resnet18", "mobilenet_v2", "efficientnet_b0")


def stand_in_layout(root: str) -> str:
    """ROOT/train/<wnid>/0.JPEG for the 1,000 ImageNet-1k wnids (72 px: ImageNet-style, not small-image)."""
    rng = np.random.default_rng(0)
    for wnid in imagenet1k_wnids():
        d = os.path.join(root, "train", wnid)
        if not os.path.isfile(os.path.join(d, "0.JPEG")):
            os.makedirs(d, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (72, 72, 3), dtype=np.uint8)).save(os.path.join(d, "0.JPEG"))
    return root


def imagenet_teachers(folder: str) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    paths = []
    for arch in TEACHERS:
        path = os.path.join(folder, f"{arch}-imagenet1k-random.pth")
        if not os.path.isfile(path):
            torch.manual_seed(0)
            torch.save(build_model(arch, 1000, image_size=224).state_dict(), path)
        paths.append(path)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ipc", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--class-chunk", type=int, default=100, help="classes per forward (memory per GPU)")
    ap.add_argument("--gpus", type=int, default=64)
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--probe-images", type=int, default=16)
    ap.add_argument("--out", default=os.path.join(cache_root(), "plan_imagenet"))
    args = ap.parse_args()
    data = stand_in_layout(os.path.join(args.out, "imagenet-layout"))
    teachers = imagenet_teachers(os.path.join(args.out, "teachers"))
    for ipc in args.ipc:
        run = os.path.join(args.out, f"in1k-ipc{ipc}")
        cli_main(["distill", "--data", data, "--teachers", *teachers, "--teacher-classes", "imagenet1k",
                  "--ipc", str(ipc), "--class-chunk", str(args.class_chunk), "--out", run, "--plan",
                  "--plan-gpus", str(args.gpus), "--plan-nodes", str(args.nodes),
                  "--plan-probe-images", str(args.probe_images)])


if __name__ == "__main__":
    main()
