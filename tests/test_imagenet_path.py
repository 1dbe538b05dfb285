"""The ImageNet path end to end on generated JPEG folders named by WordNet id: an ImageNet-1k teacher (1,000 outputs,
declared with --teacher-classes imagenet1k) distilling and labelling an Imagenette-like subset, the refusals, a
C = 1,000 smoke run (class chunking, the 1,000 x 1,000 label table, memory, the manifest), the student protocol
(--preset imagenet, CutMix, several students) and the one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from infer_fast.cli import main
from infer_fast.distilled import load_distilled
from infer_fast.models import build_model, imagenet1k_wnids, save_teacher
from infer_fast.models.checkpoint import TeacherMeta

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGENETTE = ["n01440764", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916", "n03417042",
              "n03425413", "n03445777", "n03888605"]


pytestmark = pytest.mark.usefixtures("isolated_env")  # own cache, no torchrun variables (conftest)


def _wnid_folder(root: str, classes: list[str], per_split: dict[str, int], size: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    for split, n in per_split.items():
        for c in classes:
            d = os.path.join(root, split, c)
            os.makedirs(d, exist_ok=True)
            for i in range(n):
                small = rng.integers(0, 256, (size // 4 + 1, size // 4 + 1, 3), dtype=np.uint8)
                img = Image.fromarray(small).resize((size, size), Image.BICUBIC)
                img.save(os.path.join(d, f"{c}_{i}.JPEG"), "JPEG", quality=90)
    return root


@pytest.fixture(scope="module")
def imagenet_teacher(tmp_path_factory) -> str:
    # A torchvision-style state dict of a 1,000-output ImageNet-stem MobileNet-V2 (no metadata: its classes must be
    # declared). Random weights: what is tested is the class identity, not the accuracy.
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("teacher") / "mobilenet_v2_imagenet.pth")
    torch.save(build_model("mobilenet_v2", 1000, image_size=224).state_dict(), path)
    return path


def test_imagenet_teacher_distils_and_labels_a_wnid_subset(tmp_path, imagenet_teacher, capsys):
    data = _wnid_folder(str(tmp_path / "nette"), IMAGENETTE, {"train": 2, "val": 2}, 40)
    out = str(tmp_path / "set")

    def distill(root: str, dest: str, declare: bool = True) -> list[str]:
        return ["distill", "--data", root, "--teachers", imagenet_teacher, "--ipc", "2", "--iterations", "2",
                "--image-size", "32", "--out", dest, "--device", "cpu", "--threads", "1",
                *(["--teacher-classes", "imagenet1k"] if declare else [])]

    assert main(distill(data, out)) == 0
    ds = load_distilled(out)
    assert ds.classes == IMAGENETTE and ds.soft_labels.shape == (len(ds), 10)
    entry = ds.teachers[0]
    wnids = imagenet1k_wnids()
    assert entry["classes"] == "imagenet1k" and entry["teacher_classes"] == 1000
    assert entry["class_index"] == [wnids.index(w) for w in IMAGENETTE] and entry["num_classes"] == 10
    # dynamic labels reload the file with the declaration the distillation used
    run = str(tmp_path / "eval")
    assert main(["evaluate", out, "--labels", "dynamic", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
                 "--student", "resnet18", "--width", "0.125", "--out", run, "--no-progress"]) == 0
    assert json.load(open(os.path.join(run, "summary.json")))["classes"] == 10

    # A class outside ImageNet-1k: one line naming the teacher file and the class; nothing written.
    other = _wnid_folder(str(tmp_path / "other"), IMAGENETTE[:9] + ["n99999999"], {"train": 2, "val": 1}, 40)
    capsys.readouterr()
    bad_out = str(tmp_path / "bad")
    assert main(distill(other, bad_out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and imagenet_teacher in err[0] and "1 missing (n99999999)" in err[0]
    assert not os.path.exists(bad_out)
    # Without the declaration: refused, and the message says how to declare it.
    assert main(distill(data, bad_out, declare=False)) == 2
    assert "--teacher-classes imagenet1k" in capsys.readouterr().err


def test_validation_folder_with_other_classes_is_refused_in_one_line(tmp_path, imagenet_teacher, capsys):
    data = _wnid_folder(str(tmp_path / "nette"), IMAGENETTE, {"train": 2}, 40)
    out = str(tmp_path / "set")
    assert main(["distill", "--data", data, "--teachers", imagenet_teacher, "--teacher-classes", "imagenet1k",
                 "--method", "random", "--ipc", "1", "--image-size", "32", "--out", out, "--device", "cpu"]) == 0
    val = _wnid_folder(str(tmp_path / "val-only"), IMAGENETTE[1:] + ["n04037443"], {"val": 1}, 40)
    capsys.readouterr()
    run = str(tmp_path / "eval")
    assert main(["evaluate", out, "--val", val, "--epochs", "1", "--device", "cpu", "--out", run]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing 1 (n01440764)" in err[0] and "extra 1 (n04037443)" in err[0], err
    # the preset's resolution is checked against the set before anything is written
    assert main(["evaluate", out, "--val", data, "--preset", "imagenet", "--device", "cpu", "--out", run]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds 32 px images; the preset trains 224 px students" in err[0]
    assert not os.path.exists(os.path.join(run, "checkpoint.pt"))


def test_imagenet_preset_resolves_into_the_saved_config(tmp_path):
    from infer_fast.cli import build_parser
    from infer_fast.train.commands import _config

    (tmp_path / "set").mkdir()
    manifest = {"format_version": 1, "method": "random", "classes": ["a"], "mean": [0.5] * 3, "std": [0.25] * 3,
                "image_size": 224, "small": False, "source": {"source": str(tmp_path)}}
    (tmp_path / "set" / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "val").mkdir()
    args = build_parser().parse_args(["evaluate", str(tmp_path / "set"), "--preset", "imagenet", "--epochs", "30"])
    cfg = _config(args)
    assert (cfg.student, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.temperature, cfg.mix, cfg.cutmix_alpha) == \
        ("resnet18", 1024, 1e-3, 0.01, 20.0, "cutmix", 1.0)
    assert cfg.epochs == 30  # a flag given on the command line wins over the preset


def test_several_students_and_cutmix_on_one_set(tmp_path):
    out = str(tmp_path / "set")
    assert main(["distill", "--data", "digits", "--method", "random", "--ipc", "2", "--image-size", "16",
                 "--out", out, "--device", "cpu"]) == 0
    run = str(tmp_path / "eval")
    assert main(["evaluate", out, "--val", "digits", "--student", "convnet,resnet18_cifar", "--width", "0.25",
                 "--epochs", "2", "--mix", "cutmix", "--device", "cpu", "--out", run, "--no-progress"]) == 0
    rows = json.load(open(os.path.join(run, "students.json")))
    assert [r["student"] for r in rows] == ["convnet", "resnet18_cifar"]
    table = open(os.path.join(run, "students.md")).read()
    assert "| convnet |" in table and "| resnet18_cifar |" in table
    for name in ("convnet", "resnet18_cifar"):
        cfg = json.load(open(os.path.join(run, name, "config.json")))["config"]
        assert cfg["student"] == name and cfg["mix"] == "cutmix"


@pytest.mark.slow
def test_one_thousand_classes_smoke(tmp_path):
    """C = 1,000 on generated JPEGs: class chunks, the 1,000 x 1,000 label table, peak memory, the manifest."""
    wnids = list(imagenet1k_wnids())
    data = _wnid_folder(str(tmp_path / "in1k"), wnids, {"train": 1, "val": 1}, 16)
    teacher = str(tmp_path / "convnet1k.safetensors")
    torch.manual_seed(0)
    meta = TeacherMeta(arch="convnet", num_classes=1000, classes=wnids, mean=(0.485, 0.456, 0.406),
                       std=(0.229, 0.224, 0.225), image_size=16, width=0.25)
    save_teacher(build_model("convnet", 1000, 16, 0.25).eval(), meta, teacher)
    out = str(tmp_path / "set")
    code = (
        "import resource, sys; from infer_fast.cli import main; "
        f"rc = main(['distill', '--data', {data!r}, '--teachers', {teacher!r}, '--ipc', '2', '--iterations', '2', "
        f"'--class-chunk', '250', '--out', {out!r}, '--device', 'cpu', '--threads', '2']); "
        "print('maxrss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)"
    )
    env = {**os.environ, "INFER_FAST_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    peak_gb = int(proc.stdout.split("maxrss_kb")[1].split()[0]) / 2**20
    # K = (2 * 1000) // (1000 + 1) = 1 natural set: 1,000 naturals + 1 UFC, 2,000 synthetic images
    ds = load_distilled(out)
    man = ds.manifest
    assert ds.classes == wnids and len(ds) == 2000 and ds.num_ufc_teachers == 1
    assert ds.soft_labels.shape == (2000, 1000) and ds.tensors["labels"].dtype == torch.float16
    assert man.config["class_chunk"] == 250
    assert peak_gb < 3.0, f"peak RSS {peak_gb:.2f} GB for a 1,000-class set of 16 px images"
    run = str(tmp_path / "eval")
    assert main(["evaluate", out, "--student", "convnet", "--width", "0.25", "--epochs", "1", "--batch-size",
                 "250", "--device", "cpu", "--out", run, "--no-progress"]) == 0
    summary = json.load(open(os.path.join(run, "summary.json")))
    assert summary["classes"] == 1000 and summary["top5"] is not None
