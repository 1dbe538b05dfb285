"""Teacher classes by identity: the ImageNet-1k wnid list, subset mapping, restriction of the head, refusals."""

from __future__ import annotations

import pytest
import torch

from infer_fast.models import IMAGENET1K, ClassMismatchError, build_model, imagenet1k_wnids, load_teacher
from infer_fast.models.checkpoint import CheckpointError
from infer_fast.models.classes import class_index, declared_classes

# Imagenette's ten classes (tench, English springer, cassette player, chain saw, church, French horn, garbage
# truck, gas pump, golf ball, parachute), as its folders name them.
IMAGENETTE = ["n01440764", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916", "n03417042",
              "n03425413", "n03445777", "n03888605"]


def test_imagenet1k_wnids_are_the_standard_sorted_list():
    wnids = imagenet1k_wnids()
    assert len(wnids) == 1000 and len(set(wnids)) == 1000 and list(wnids) == sorted(wnids)
    assert wnids[0] == "n01440764" and wnids[-1] == "n15075141"
    assert set(IMAGENETTE) <= set(wnids)
    assert declared_classes(IMAGENET1K) == list(wnids)


def test_class_index_identity_subset_permutation_and_placeholders():
    assert class_index(["a", "b", "c"], ["a", "b", "c"], "t") is None
    assert class_index(["a", "b", "c"], ["c", "a"], "t") == [2, 0]
    assert class_index(["0", "1", "2"], ["x", "y", "z"], "t") is None  # placeholder names: positional
    with pytest.raises(ClassMismatchError, match=r"teacher t: its 3 classes do not cover the data's 2: 1 missing"):
        class_index(["a", "b", "c"], ["a", "d"], "t")


def _imagenet_teacher(tmp_path) -> str:
    # A torchvision-style state dict (no infer_fast metadata, so width 1) of a 1,000-output ResNet-18.
    torch.manual_seed(0)
    model = build_model("resnet18", 1000, image_size=64).eval()
    path = str(tmp_path / "imagenet_teacher.pth")
    torch.save(model.state_dict(), path)
    return path


def test_subset_logits_equal_full_logits_indexed_by_the_mapping(tmp_path):
    path = _imagenet_teacher(tmp_path)
    full, _ = load_teacher(path, arch="resnet18", classes=IMAGENET1K)
    data = sorted(IMAGENETTE, reverse=True)  # the data's order, not the teacher's
    sub, meta = load_teacher(path, arch="resnet18", classes=IMAGENET1K, data_classes=data)
    index = [imagenet1k_wnids().index(w) for w in data]
    assert meta.num_classes == 10 and meta.classes == data
    assert meta.extra["class_index"] == index and meta.extra["teacher_classes"] == 1000
    assert meta.fingerprint == load_teacher(path, arch="resnet18")[1].fingerprint  # the file's, not the subset's
    x = torch.randn(3, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        expect = full.double()(x)[:, index]
        got = sub.double()(x)
    assert got.shape == (3, 10)
    torch.testing.assert_close(got, expect, rtol=1e-12, atol=1e-12)


def test_undeclared_imagenet_teacher_and_foreign_classes_are_refused(tmp_path):
    path = _imagenet_teacher(tmp_path)
    # Without the declaration a torchvision file's outputs carry torchvision's English names: refused, with the fix.
    with pytest.raises(ClassMismatchError, match=r"10 missing \(n01440764.*--teacher-classes imagenet1k"):
        load_teacher(path, arch="resnet18", data_classes=IMAGENETTE)
    with pytest.raises(ClassMismatchError, match=r"1 missing \(n99999999\)"):
        load_teacher(path, arch="resnet18", classes=IMAGENET1K, data_classes=IMAGENETTE[:9] + ["n99999999"])
    small = tmp_path / "small.pth"
    torch.save(build_model("resnet18", 10, 64).state_dict(), small)
    with pytest.raises(CheckpointError, match=r"1000 classes declared.*teacher has 10 outputs"):
        load_teacher(str(small), arch="resnet18", classes=IMAGENET1K)
    with pytest.raises(ValueError, match="--teacher-classes 'imagenet21k': expected one of imagenet1k or a text file"):
        declared_classes("imagenet21k")
