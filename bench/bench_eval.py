"""`infer-fast evaluate` with the validation split streamed (decoded and resized at every evaluation) against the
same run with the split decoded once and served from memory (``--val-memory-gb``), on real ImageNet JPEGs.

The case of issue #11: a 64 px distilled set of a 10-class ImageNet subset (Imagenette: 180 images, ``random``
method, the committed Imagenette teachers' static labels), 30 student epochs validated about every epoch, on the
3,925 full-size validation JPEGs. Both providers train the same student with the same seed; the bench checks that
every accuracy figure agrees and prints the wall-time ratio. Runs are interleaved (stream, memory, stream, ...) and
the figure is the median of ``--repeats`` runs per provider (the on-disk decoded cache is removed before the
first memory run, so its first decode is inside the timing; later memory runs reuse it, as later evaluations of a
user would).

    python bench/bench_eval.py [--repeats 3] [--epochs 30] [--data ROOT] [--val-side 448] [--json F]

The shared Imagenette copy was resized to 224 x 224 by its uploader, so its JPEGs decode several times faster than
ImageNet's full-size files (about 400 x 350 on average), on which the issue's 218 s were measured. ``--val-side N``
validates on a copy of the validation split upscaled to N x N (bicubic, JPEG quality 90, made once): the same
images at a full-size decode cost.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import time

import torch
from bench_quality import TEACHER_DIR, data_root
from common import Stats, markdown_table, record, write_json

from infer_fast.cli import main as cli_main
from infer_fast.runtime import cache_root

TEACHERS = ("resnet18-w0.25", "mobilenet_v2-w0.5", "efficientnet_b0-w0.5")


def upscaled_val(root: str, side: int) -> str:
    """``<root>-val<side>/val/<class>/<file>``: the validation JPEGs upscaled to side x side (made once)."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    out = f"{root.rstrip(os.sep)}-val{side}"
    done = os.path.join(out, ".complete")
    if os.path.isfile(done):
        return out
    jobs = []
    for cls in sorted(os.listdir(os.path.join(root, "val"))):
        os.makedirs(os.path.join(out, "val", cls), exist_ok=True)
        for name in os.listdir(os.path.join(root, "val", cls)):
            jobs.append((os.path.join(root, "val", cls, name), os.path.join(out, "val", cls, name)))

    def convert(job: tuple[str, str]) -> None:
        with Image.open(job[0]) as im:
            im.convert("RGB").resize((side, side), Image.BICUBIC).save(job[1], "JPEG", quality=90)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(convert, jobs))
    open(done, "w").close()
    return out


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="Imagenette tarball or extracted root (default: ../shared/data, unpacked once)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--val-side", type=int, default=0, help="validate on the val split upscaled to N x N (0: as is)")
    p.add_argument("--work", default=os.path.join(cache_root(), "bench_eval"))
    a = p.parse_args(argv)
    # bench_quality's Imagenette (checked against its sha256, unpacked once into the same cache)
    root = data_root(argparse.Namespace(workload="imagenette", data=a.data, cache=None))
    val = upscaled_val(root, a.val_side) if a.val_side else root
    teachers = [os.path.join(TEACHER_DIR, "imagenette112", f"{t}.safetensors") for t in TEACHERS]
    ds = os.path.join(a.work, "random-ipc18-64px")
    if not os.path.isfile(os.path.join(ds, "manifest.json")):
        shutil.rmtree(ds, ignore_errors=True)
        assert cli_main(["distill", "--data", root, "--teachers", *teachers, "--method", "random", "--ipc", "18",
                         "--image-size", "64", "--out", ds]) == 0
    cache = os.environ.get("INFER_FAST_CACHE")
    for f in glob.glob(os.path.join(cache, "check", "eval-*") if cache else
                       os.path.join(val, ".infer_fast", "eval-*")):
        os.remove(f)
    seconds: dict[str, list[float]] = {"stream": [], "memory": []}
    results: dict[str, list[list[float]]] = {"stream": [], "memory": []}
    for rep in range(a.repeats):
        for provider, gb in (("stream", "0"), ("memory", "2")):
            run = os.path.join(a.work, f"{provider}-{rep}")
            shutil.rmtree(run, ignore_errors=True)
            t0 = time.perf_counter()
            assert cli_main(["evaluate", ds, "--val", val, "--epochs", str(a.epochs), "--eval-every", "1",
                             "--student", "resnet18", "--width", "0.25", "--val-memory-gb", gb, "--out", run,
                             "--no-progress"]) == 0
            seconds[provider].append(time.perf_counter() - t0)
            with open(os.path.join(run, "metrics.jsonl")) as f:
                results[provider].append([r["top1"] for r in map(json.loads, f) if "top1" in r])
            print(f"bench_eval: {provider} run {rep}: {seconds[provider][-1]:.1f} s", flush=True)
    identical = all(r == results["stream"][0] for rs in results.values() for r in rs)
    rows = []
    base = statistics.median(seconds["stream"])
    for provider, values in seconds.items():
        rows.append(record("evaluate", provider, "imagenette-64px-random-ipc18", "wall_time", "s", "epochs",
                           a.epochs, Stats.of(values), "cpu", speedup_vs_stream=base / statistics.median(values),
                           identical_accuracy=identical, val_images=3925, val_side=a.val_side or 224))
    print(markdown_table(rows, ["provider", "p50", "p20", "p80", "samples", "speedup_vs_stream",
                                "identical_accuracy"]))
    print(f"bench_eval: every validation top-1 identical across providers and runs: {identical}; "
          f"final top-1 {results['memory'][0][-1]:.2f} %; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    write_json(a.json, rows)
    return rows


if __name__ == "__main__":
    main()
