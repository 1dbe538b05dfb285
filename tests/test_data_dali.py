"""DALI loaders (CPU pipelines here; CI installs DALI): agreement with the torch loaders, shards, augmentation."""

from __future__ import annotations

import os
import tarfile

import pytest
import torch
from conftest import require_shared
from datagen import make_folder

pytest.importorskip("nvidia.dali.plugin.pytorch",
                    reason="NVIDIA DALI is not installed (pip install nvidia-dali-cuda130)")

from infer_fast.data import make_loader  # noqa: E402

# Mean |DALI - torch| over eval images, in 0..255 levels. Both decode JPEGs with libjpeg-turbo (identical here);
# the residual comes from the resamplers (DALI's antialiased linear vs Pillow's bilinear): measured 0.34-0.97 on
# 61x97..375x500 smooth images; identity resizes (32 px CIFAR-style reads) agree exactly up to float rounding.
RESIZED_MEAN_ABS = 1.5
UNRESIZED_MEAN_ABS = 0.05


pytestmark = pytest.mark.usefixtures("isolated_env")  # own cache, no torchrun variables (conftest)


def _pixels(x: torch.Tensor, ld) -> torch.Tensor:
    return (x * torch.tensor(ld.std).view(1, 3, 1, 1) + torch.tensor(ld.mean).view(1, 3, 1, 1)) * 255.0


def _eval_all(root, loader, image_size=None, shard=(0, 1), batch_size=4):
    ld = make_loader(root, "eval", batch_size=batch_size, loader=loader, image_size=image_size, shard=shard,
                     num_workers=1, device="cpu")
    xs, ys = [], []
    for x, y in ld:
        xs.append(_pixels(x, ld))
        ys.append(y)
    assert len(xs) == len(ld)
    return torch.cat(xs), torch.cat(ys), ld


@pytest.mark.parametrize(
    "size,image_size,bound",
    [((32, 32), None, UNRESIZED_MEAN_ABS), ((120, 160), 64, RESIZED_MEAN_ABS), ((97, 61), 40, RESIZED_MEAN_ABS)],
)
def test_dali_and_torch_eval_agree(tmp_path, size, image_size, bound):
    root = str(tmp_path / "ds")
    make_folder(root, {"train": 2, "val": 3}, size=size, solid=False, with_bad=False)
    xd, yd, ld = _eval_all(root, "dali", image_size)
    xt, yt, _ = _eval_all(root, "torch", image_size)
    assert ld.provider == "dali" and torch.equal(yd, yt) and yd.dtype == torch.int64
    diff = (xd - xt).abs()
    per_image = diff.mean(dim=(1, 2, 3))
    assert per_image.max() <= bound, f"mean |dali - torch| per image {per_image.tolist()} > {bound} levels"


def test_dali_skips_bad_files_and_shards_cover_all_once(tmp_path):
    root = str(tmp_path / "ds")
    bad = make_folder(root, {"train": 4, "val": 5})
    tr = make_loader(root, "train", batch_size=4, loader="dali", num_workers=1, device="cpu")
    assert tr.skipped == len(bad) and len(tr) == 3 and sum(1 for _ in tr) == 3  # corrupt files never reach DALI
    full, yfull, _ = _eval_all(root, "dali")
    parts = [_eval_all(root, "dali", shard=(r, 2)) for r in range(2)]
    assert [len(p[1]) for p in parts] == [7, 8]
    assert torch.equal(torch.cat([p[0] for p in parts]), full) and torch.equal(torch.cat([p[1] for p in parts]), yfull)
    # the torch loader reads the same files on the same rank
    for r, (_, y, _) in enumerate(parts):
        assert torch.equal(_eval_all(root, "torch", shard=(r, 2))[1], y)


def test_dali_train_reads_are_seeded_and_augmented(tmp_path):
    root = str(tmp_path / "big")
    make_folder(root, {"train": 3, "val": 1}, size=(120, 160), solid=False, with_bad=False)
    ld = make_loader(root, "train", batch_size=3, loader="dali", image_size=48, seed=1, num_workers=2, device="cpu")
    ld.set_epoch(4)
    a = list(ld)
    ld.set_epoch(4)
    b = list(ld)
    c = list(ld)  # epoch 5
    assert len(a) == 3 and all(x.shape == (3, 3, 48, 48) and x.dtype == torch.float32 for x, _ in a)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(a, c, strict=True))
    # the same epoch reads the same files in the same order as the torch loader
    tl = make_loader(root, "train", batch_size=3, loader="torch", image_size=48, seed=1, num_workers=0, device="cpu")
    tl.set_epoch(4)
    assert [y.tolist() for _, y in tl] == [y.tolist() for _, y in a]
    # random-resized crops differ from the eval center view
    ev = _eval_all(root, "dali", 48)[0]
    assert ev.shape == (3, 3, 48, 48)


def test_dali_small_train_pads_and_flips(tmp_path):
    root = str(tmp_path / "ds")
    make_folder(root, {"train": 8, "val": 1}, size=(32, 32), solid=True, with_bad=False)
    ld = make_loader(root, "train", batch_size=8, loader="dali", seed=0, num_workers=1, device="cpu")
    x = torch.cat([_pixels(b, ld) for b, _ in ld])
    assert x.shape == (24, 3, 32, 32)
    # solid images: any zero (padding) border row/column comes from the pad-4 random crop
    zero_rows = (x.abs() < 0.5).all(dim=(1, 3))  # [N, H]
    zero_cols = (x.abs() < 0.5).all(dim=(1, 2))
    assert zero_rows.any() or zero_cols.any()
    assert zero_rows.sum(dim=1).max() <= 4 and zero_cols.sum(dim=1).max() <= 4


def test_dali_digits_matches_tensor_loader():
    d = make_loader("digits", "eval", batch_size=100, loader="dali", device="cpu")
    t = make_loader("digits", "eval", batch_size=100, loader="torch", device="cpu")
    bd, bt = list(d), list(t)
    assert len(bd) == len(d) == 4
    for (xd, yd), (xt, yt) in zip(bd, bt, strict=True):
        assert torch.equal(yd, yt) and (xd - xt).abs().max() < 1e-5
    tr = make_loader("digits", "train", batch_size=128, loader="dali", device="cpu")
    b = list(tr)
    assert len(b) == len(tr) == 1437 // 128 and b[0][0].shape == (128, 3, 32, 32)


def test_dali_agrees_with_torch_on_cifar10_jpegs(tmp_path):
    tar_path = require_shared("cifar10-jpeg.tar.gz")
    root = tmp_path / "cifar10"
    want = {c: 0 for c in ("airplane", "cat", "ship")}
    with tarfile.open(tar_path, "r:gz") as tar:
        for m in tar:
            parts = m.name.split("/")
            if m.isfile() and len(parts) == 4 and parts[2] in want and want[parts[2]] < 6:
                split = "train" if want[parts[2]] < 3 else "val"
                want[parts[2]] += 1
                dst = root / split / parts[2] / parts[3]
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(tar.extractfile(m).read())
                if all(v == 6 for v in want.values()):
                    break
    assert all(v == 6 for v in want.values()), want
    xd, yd, ld = _eval_all(str(root), "dali")
    xt, yt, _ = _eval_all(str(root), "torch")
    assert ld.image_size == 32 and torch.equal(yd, yt)
    assert (xd - xt).abs().mean(dim=(1, 2, 3)).max() <= UNRESIZED_MEAN_ABS


def test_dali_file_list_and_paths_with_spaces(tmp_path):
    plain = tmp_path / "plain"
    make_folder(str(plain), {"train": 2, "val": 2}, with_bad=False)
    spaced = tmp_path / "with space"
    make_folder(str(spaced), {"train": 2, "val": 2}, with_bad=False)
    os.rename(spaced / "val" / "cat", spaced / "val" / "tabby cat")
    os.rename(spaced / "train" / "cat", spaced / "train" / "tabby cat")
    xa, ya, la = _eval_all(str(plain), "dali")
    xb, yb, lb = _eval_all(str(spaced), "dali")
    assert la._lines is not None and lb._lines is None  # file_list normally; list arguments when it cannot
    assert torch.equal(ya, yb) and lb.classes == ["bird", "dog", "tabby cat"]
    xt, yt, _ = _eval_all(str(spaced), "torch")
    assert torch.equal(yb, yt) and (xb - xt).abs().mean(dim=(1, 2, 3)).max() <= UNRESIZED_MEAN_ABS
