"""Evaluation sources: val/- or test/-only roots, plain ROOT/<class>/<image> trees, class order from the caller
(a distilled set's manifest) with named refusals, and the decoded-once in-memory validation cache."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from datagen import CLASSES, make_folder

from infer_fast.data import DataError, make_loader, scan_split
from infer_fast.data.api import dali_available

pytestmark = pytest.mark.usefixtures("isolated_env")  # own cache, no torchrun variables (conftest)


def _batches(ld) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*list(ld), strict=True)
    return torch.cat(xs), torch.cat(ys)


def _make(tmp_path, layout: str) -> str:
    full = str(tmp_path / "full")
    if not os.path.isdir(full):
        make_folder(full, {"train": 2, "val": 3}, size=(48, 40), solid=False, with_bad=False)
    root = str(tmp_path / layout)
    if layout == "val-only":
        shutil.copytree(os.path.join(full, "val"), os.path.join(root, "val"))
    elif layout == "test-only":
        shutil.copytree(os.path.join(full, "val"), os.path.join(root, "test"))
    else:  # plain: the class folders directly under the root
        shutil.copytree(os.path.join(full, "val"), root)
    return root


@pytest.mark.parametrize("layout", ["val-only", "test-only", "plain"])
def test_eval_only_roots_read_the_same_images(tmp_path, layout, capsys):
    reference_root = _make(tmp_path, "val-only")
    ref = make_loader(reference_root, "eval", batch_size=4, loader="torch", image_size=32, num_workers=0,
                      device="cpu")
    root = reference_root if layout == "val-only" else _make(tmp_path, layout)
    ld = make_loader(root, "eval", batch_size=4, loader="torch", image_size=32, num_workers=0, device="cpu")
    x, y = _batches(ld)
    rx, ry = _batches(ref)
    assert ld.classes == CLASSES and torch.equal(y, ry) and torch.equal(x, rx)
    if layout == "plain":
        assert "reading it as one evaluation split laid out ROOT/<class>/<image>" in capsys.readouterr().err
        assert scan_split(root, "eval").split == "."
    with pytest.raises(DataError, match="has no train split folder"):
        make_loader(root, "train", loader="torch", device="cpu")


def test_class_order_comes_from_the_caller_and_other_classes_are_refused(tmp_path):
    root = _make(tmp_path, "val-only")
    natural = make_loader(root, "eval", batch_size=9, loader="torch", image_size=32, num_workers=0, device="cpu")
    order = ["dog", "bird", "cat"]  # a manifest's order, not the sorted folder order
    ld = make_loader(root, "eval", batch_size=9, loader="torch", image_size=32, num_workers=0, device="cpu",
                     classes=order)
    (x, y), (nx, ny) = _batches(ld), _batches(natural)
    assert ld.classes == order and torch.equal(x, nx)
    assert [order[i] for i in y.tolist()] == [CLASSES[i] for i in ny.tolist()]
    with pytest.raises(DataError, match=r"val'? differ from the given classes: missing 1 \(fish\); extra 1 \(cat\)"):
        make_loader(root, "eval", loader="torch", device="cpu", classes=["bird", "dog", "fish"])
    with pytest.raises(DataError, match=r"extra 1 \(cat\)"):
        make_loader(root, "eval", loader="torch", device="cpu", classes=["bird", "dog"])


@pytest.mark.parametrize("provider", ["torch", "dali"])
def test_in_memory_validation_equals_streaming(tmp_path, provider):
    if provider == "dali" and not dali_available():
        pytest.skip("NVIDIA DALI is not installed")
    root = str(tmp_path / "big")
    make_folder(root, {"train": 2, "val": 5}, size=(120, 90), solid=False, with_bad=False)
    kw = dict(batch_size=4, loader=provider, image_size=48, num_workers=1, device="cpu", classes=["cat", "dog", "bird"])
    stream = make_loader(root, "eval", **kw)
    memory = make_loader(root, "eval", memory_budget=1 << 20, **kw)
    assert memory.provider.startswith("memory") and stream.provider == provider
    (sx, sy), (mx, my) = _batches(stream), _batches(memory)
    assert torch.equal(sy, my)
    # the same decoded pixels, normalised by the same formula (DALI normalises inside its pipeline: last-ulp)
    torch.testing.assert_close(mx, sx, rtol=0, atol=0 if provider == "torch" else 1e-5)
    assert torch.equal(_batches(memory)[0], mx)  # a second pass (next evaluation) reads memory again
    cache = [f for f in os.listdir(tmp_path / "cache" / "check") if f.startswith("eval-")]
    assert len(cache) == 1
    again = make_loader(root, "eval", memory_budget=1 << 20, **kw)  # from the disk cache
    assert torch.equal(_batches(again)[0], mx)
    over = make_loader(root, "eval", memory_budget=15 * 3 * 48 * 48 - 1, **kw)  # one byte short: streams
    assert over.provider == provider


def test_data_check_accepts_eval_only_and_plain_roots(tmp_path, capsys):
    from infer_fast.cli import main

    for layout in ("test-only", "plain"):
        root = _make(tmp_path, layout)
        assert main(["data", "check", root]) == 0
        out = capsys.readouterr().out
        assert f"{'test' if layout == 'test-only' else '.'}: 3 classes, 9 good, 0 bad files" in out
    empty = tmp_path / "empty"
    (empty / "notes").mkdir(parents=True)
    assert main(["data", "check", str(empty)]) == 2
    assert "or, for evaluation, ROOT/<class>/<image>" in capsys.readouterr().err


def test_small_train_split_in_memory_is_the_streamed_reads_augmented_in_memory(tmp_path):
    """A small-image train split that fits the budget is decoded once (the S x S images) and augmented in memory:
    same batches per epoch, every image a pad-4 crop (+ flip) of its file's decoded pixels, disjoint shards; an
    ImageNet-style train split (random resized crops of the full image) keeps streaming."""
    root = str(tmp_path / "small")
    make_folder(root, {"train": 6, "val": 1}, size=(16, 16), solid=False, with_bad=False)
    kw = dict(batch_size=4, loader="torch", num_workers=0, device="cpu", seed=3)
    stream = make_loader(root, "train", **kw)
    memory = make_loader(root, "train", memory_budget=1 << 20, **kw)
    assert memory.provider.startswith("memory") and memory.train and len(memory) == len(stream) == 4
    (mx, my) = _batches(memory)
    mean, std = torch.tensor(memory.mean).view(3, 1, 1), torch.tensor(memory.std).view(3, 1, 1)
    originals = memory.images.float() / 255  # the decoded train files, [0, 1]
    assert originals.shape[0] == 18 and memory.labels.bincount().tolist() == [6, 6, 6]
    for img, lab in zip(mx, my, strict=True):  # each augmented image is a crop (+ flip) of a same-label original
        pixels = img * std + mean  # zero padding is black, as RandomCrop pads the streamed uint8 reads
        crops = [torch.nn.functional.pad(o, (4, 4, 4, 4))[:, dy:dy + 16, dx:dx + 16]
                 for o in originals[memory.labels == lab] for o in (o, o.flip(2)) for dy in range(9)
                 for dx in range(9)]
        assert min(float((pixels - c).abs().max()) for c in crops) < 1e-5
    assert not torch.equal(_batches(memory)[0], mx)  # the next epoch draws other crops
    memory.set_epoch(0)
    assert torch.equal(_batches(memory)[0], mx)  # epoch-seeded: a resumed run replays them
    halves = [make_loader(root, "train", memory_budget=1 << 20, shard=(r, 2), **kw) for r in (0, 1)]
    seen = [set(h.indices(0).tolist()) for h in halves]
    assert not seen[0] & seen[1] and len(halves[0]) == len(halves[1])
    big = str(tmp_path / "big")
    make_folder(big, {"train": 2, "val": 1}, size=(120, 90), solid=False, with_bad=False)
    assert make_loader(big, "train", memory_budget=1 << 30, image_size=48, **kw).provider == "torch"
