"""Loader throughput: DALI vs the PyTorch DataLoader (num_workers 0 and 2) in one run, images/s.

Datasets (from ../shared/data, prepared once into a cache dir, never into the project):
  cifar10      the CIFAR-10 JPEGs (32x32), CIFAR-style training reads (pad-4 random crop + flip)
  imagenet375  ImageNet-sized JPEGs (375x500, quality 90) made once from real Imagenette images (upscaled and
               cropped, 10 classes), ImageNet-style training reads (random resized crop 224 + flip) and eval reads
               (resize 256 + center crop 224)
Throughput is steady state: the first batches of each epoch (pipeline build, worker start, prefetch fill) are
not timed. Every provider uses the same number of CPU threads (DALI num_threads = DataLoader num_workers = 2).

Records (common.record): one sample per epoch, its timed images / timed seconds; ``images_per_s`` is their median
(= p50). A sample is an epoch, not a batch: worker prefetching delivers batches in bursts, so single-batch rates
scatter far from the throughput. An epoch takes a second or more here, so this end-to-end bench does not stretch to
common.time_fn's ten samples: 3 epochs per provider and dataset (``--quick`` too: fewer CIFAR batches, no eval reads),
the count in ``samples``, and ``spread_flag`` set when p80/p20 exceeds 1.5.

    python bench/bench_loader.py [--quick] [--json PATH] [--cache-dir DIR] [--images N]
"""

from __future__ import annotations

import io
import os
import statistics
import sys
import tarfile
import time

import torch
from common import Stats, base_parser, git_commit, markdown_table, record, shared_data_dir, write_json
from PIL import Image

from infer_fast.data import dali_available, make_loader
from infer_fast.runtime import cache_root

COLUMNS = ["dataset", "mode", "provider", "images_per_s", "samples", "spread", "speedup_vs_best_torch", "batches",
           "batch_size"]
SKIP_BATCHES = 2
BIG_SIZE = (500, 375)  # width, height: a typical ImageNet photo


def default_cache() -> str:
    return cache_root("data")


def prepare_cifar(cache: str) -> str:
    root = os.path.join(cache, "cifar10")
    done = os.path.join(cache, ".cifar10.done")
    if not os.path.exists(done):
        tar = os.path.join(shared_data_dir(), "cifar10-jpeg.tar.gz")
        if not os.path.exists(tar):
            sys.exit(f"bench_loader: needs {tar} (set INFER_FAST_DATA to the shared data folder)")
        print(f"extracting {tar} into {cache} (once)", flush=True)
        os.makedirs(cache, exist_ok=True)
        with tarfile.open(tar, "r:gz") as t:
            t.extractall(cache, filter="data")
        open(done, "w").close()
    return root


def prepare_imagenet_sized(cache: str, n: int) -> str:
    """About ``n`` real Imagenette train images (+ n/2 val), spread over its 10 classes, upscaled to cover 500x375
    and center-cropped, saved as quality-90 JPEGs."""
    root = os.path.join(cache, f"imagenet375-{n}")
    done = os.path.join(cache, f".imagenet375-{n}.done")
    if os.path.exists(done):
        return root
    tar = os.path.join(shared_data_dir(), "imagenette-224.tar.gz")
    if not os.path.exists(tar):
        sys.exit(f"bench_loader: needs {tar} (set INFER_FAST_DATA to the shared data folder)")
    from tqdm import tqdm

    quota = {"train": max(1, n // 10), "val": max(1, n // 20)}  # per class
    got: dict[tuple[str, str], int] = {}
    w, h = BIG_SIZE
    with tarfile.open(tar, "r:gz") as t, tqdm(total=10 * sum(quota.values()), desc="imagenet-sized JPEGs") as bar:
        for m in t:
            parts = m.name.split("/")
            if not m.isfile() or len(parts) != 4 or parts[1] not in quota:
                continue
            key = (parts[1], parts[2])
            if got.get(key, 0) >= quota[parts[1]]:
                continue
            img = Image.open(io.BytesIO(t.extractfile(m).read())).convert("RGB")
            s = max(w / img.width, h / img.height)
            img = img.resize((round(img.width * s), round(img.height * s)), Image.BICUBIC)
            left, top = (img.width - w) // 2, (img.height - h) // 2
            img = img.crop((left, top, left + w, top + h))
            out = os.path.join(root, parts[1], parts[2], os.path.splitext(parts[3])[0] + ".JPEG")
            os.makedirs(os.path.dirname(out), exist_ok=True)
            img.save(out, "JPEG", quality=90)
            got[key] = got.get(key, 0) + 1
            bar.update()
    open(done, "w").close()
    return root


def measure(root: str, split: str, provider: str, workers: int, batch_size: int, image_size: int | None,
            max_batches: int, epochs: int, device: str = "cpu") -> tuple[list[float], int]:
    """Steady-state images/s of each of ``epochs`` epochs (at most ``max_batches`` timed batches each) and the timed
    batches per epoch. On a GPU a batch counts when its copy has arrived."""
    ld = make_loader(root, split, batch_size=batch_size, loader=provider, image_size=image_size,
                     num_workers=workers, device=device, seed=0)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    rates, timed = [], 0
    for _ in range(epochs):
        n_img, t0, k = 0, None, 0
        for i, (x, _) in enumerate(ld):
            if i == SKIP_BATCHES - 1:
                sync()
                t0 = time.perf_counter()
            elif i >= SKIP_BATCHES:
                n_img += x.shape[0]
                k += 1
                if k >= max_batches:
                    break
        sync()
        if t0 is None or n_img == 0:
            raise SystemExit(f"bench_loader: {root} {split} has too few batches to time (need > {SKIP_BATCHES})")
        rates.append(n_img / (time.perf_counter() - t0))
        timed = k
    return rates, timed


def loader_record(dataset: str, split: str, name: str, provider: str, workers: int, batch_size: int,
                  image_size: int | None, root: str, max_batches: int, epochs: int, device: str = "cpu"
                  ) -> dict[str, object]:
    """``measure`` as a record (also gpu_check.py's loader part)."""
    rates, timed = measure(root, split, provider, workers, batch_size, image_size, max_batches, epochs, device)
    return record("loader", name, split, "images_per_s", "images/s", "dataset", dataset, Stats.of(rates), device,
                  dataset=dataset, images_per_s=statistics.median(rates), workers=workers, batch_size=batch_size,
                  batches=timed, speedup_vs_best_torch=None)


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--cache-dir", default=default_cache(), help="prepared datasets go here (default: %(default)s)")
    p.add_argument("--images", type=int, default=1000, help="ImageNet-sized train images (default %(default)s)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = args.quick
    n_big = args.images
    epochs = 3  # the samples of every figure, --quick included
    cifar = prepare_cifar(args.cache_dir)
    big = prepare_imagenet_sized(args.cache_dir, n_big)
    cases = [  # dataset, root, split, image_size, batch, timed batches per epoch
        ("cifar10", cifar, "train", None, 256, 10 if quick else 40),
        ("imagenet375", big, "train", 224, 64, 1000),
    ]
    if not quick:
        cases.append(("imagenet375", big, "eval", 224, 64, 1000))
    providers = [("torch-w0", "torch", 0), ("torch-w2", "torch", 2)]
    if dali_available():
        providers.append(("dali", "dali", 2))
    else:
        print("bench_loader: DALI is not installed, timing the torch loader only")
    records = []
    for dataset, root, split, size, bs, max_batches in cases:
        rows = []
        for name, provider, workers in providers:
            rows.append(r := loader_record(dataset, split, name, provider, workers, bs, size, root, max_batches,
                                           epochs))
            print(f"{dataset} {split} {name}: {r['images_per_s']:.0f} images/s ({r['samples']} epochs)", flush=True)
        best_torch = max(r["images_per_s"] for r in rows if r["provider"].startswith("torch"))
        for r in rows:
            r["speedup_vs_best_torch"] = r["images_per_s"] / best_torch if r["provider"] == "dali" else None
        records += rows
    print()
    print(f"loader throughput, steady state, {os.cpu_count()} cores, torch {torch.__version__}, commit {git_commit()}")
    print(markdown_table(records, COLUMNS))
    write_json(args.json, records)
    return records


if __name__ == "__main__":
    main()
