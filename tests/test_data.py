"""infer_fast.data: folder validation + cache, labels, errors, digits, sharding, the torch loaders, `data check`."""

from __future__ import annotations

import json
import os

import pytest
import torch
from datagen import CLASSES, color_of, make_folder

from infer_fast.data import DataError, dataset_info, make_loader, sample_naturals, scan_split
from infer_fast.data.sampling import epoch_order, resolve_shard, shard_bounds, shard_indices

pytestmark = pytest.mark.usefixtures("isolated_env")  # own cache, no torchrun variables (conftest)


@pytest.fixture
def folder(tmp_path):
    root = str(tmp_path / "ds")
    bad = make_folder(root)
    return root, bad


def _denorm_colors(x: torch.Tensor, mean, std) -> list[tuple[int, int, int]]:
    """Mean RGB (0..255) of each normalised image of a batch."""
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    px = (x * s + m) * 255.0
    return [tuple(int(round(v)) for v in c) for c in px.mean(dim=(2, 3)).tolist()]


def _identify(colors, split_index: int, n: int) -> list[tuple[int, int]]:
    """(class, i) of each color, matching solid-color files (JPEG decoding is within +-3 of the color)."""
    table = {(c, i): color_of(split_index, c, i) for c in range(len(CLASSES)) for i in range(n)}
    out = []
    for col in colors:
        key, ref = min(table.items(), key=lambda kv: sum(abs(a - b) for a, b in zip(kv[1], col, strict=True)))
        assert max(abs(a - b) for a, b in zip(ref, col, strict=True)) <= 3, f"color {col} matches no file"
        out.append(key)
    return out


# ---------------------------------------------------------------- validation, labels, cache


def test_scan_reports_every_bad_file_with_reason(folder):
    root, bad = folder
    scan = scan_split(root, "train")
    got = {b["file"]: b["reason"] for b in scan.bad}
    assert got == {path: reason for reason, path in bad.items()}, scan.bad
    assert scan.classes == sorted(CLASSES)
    assert scan.counts == {c: 4 for c in CLASSES}
    names = {os.path.basename(f) for f in scan.files}
    assert names == {"img000.jpg", "img001.png", "img002.jpg", "img003.png"}  # junk and nested files ignored
    assert all(os.path.isabs(f) for f in scan.files)


def test_labels_follow_sorted_class_folders(folder):
    root, _ = folder
    scan = scan_split(root, "train")
    for f, lab in zip(scan.files, scan.labels, strict=True):
        assert os.path.basename(os.path.dirname(f)) == scan.classes[lab]
    info = dataset_info(root)
    assert info.classes == ["bird", "cat", "dog"]
    assert info.small and info.image_size == 32 and info.num_train == 12
    assert info.train_bytes == 12 * 3 * 32 * 32


def test_cache_hit_then_invalidated_by_a_change(folder, monkeypatch):
    root, _ = folder
    monkeypatch.delenv("INFER_FAST_CACHE")  # without it, a writable dataset root holds its own scan cache
    first = scan_split(root, "train")
    assert not first.from_cache and first.cache_path.startswith(os.path.join(root, ".infer_fast"))
    again = scan_split(root, "train")
    assert again.from_cache and again.files == first.files
    # a new file changes the listing -> revalidated, and the new file is in
    make_folder(os.path.join(root, "..", "other"), {"train": 5}, with_bad=False)
    os.replace(os.path.join(root, "..", "other", "train", "dog", "img004.jpg"),
               os.path.join(root, "train", "dog", "img004.jpg"))
    third = scan_split(root, "train")
    assert not third.from_cache and third.counts["dog"] == 5
    # rewriting a file (new size/mtime) also invalidates
    path = os.path.join(root, "train", "dog", "img004.jpg")
    with open(path, "wb") as f:
        f.write(b"")
    fourth = scan_split(root, "train")
    assert not fourth.from_cache and fourth.counts["dog"] == 4
    assert any(b["file"].endswith("dog/img004.jpg") and b["reason"] == "empty" for b in fourth.bad)


def test_cache_env_override_and_full_decode_is_not_served_from_a_cheap_check(folder, tmp_path, monkeypatch):
    root, _ = folder
    monkeypatch.setenv("INFER_FAST_CACHE", str(tmp_path / "cache"))
    cheap = scan_split(root, "train")
    assert cheap.cache_path.startswith(str(tmp_path / "cache"))
    assert not os.path.exists(os.path.join(root, ".infer_fast"))
    full = scan_split(root, "train", full_decode=True)
    assert not full.from_cache and full.full_decode
    assert scan_split(root, "train").from_cache  # a full-decode result also serves the cheap check
    assert {b["reason"] for b in full.bad} == {"empty", "truncated", "not an image", "undecodable"}


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        scan_split(str(tmp_path / "missing"))
    (tmp_path / "noroot").mkdir()
    with pytest.raises(DataError, match="no train split folder"):
        scan_split(str(tmp_path / "noroot"))
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="is empty"):
        scan_split(str(tmp_path / "empty"))
    root = tmp_path / "badclass"
    make_folder(str(root), {"train": 2}, with_bad=False)
    (root / "train" / "zebra").mkdir()
    (root / "train" / "zebra" / "x.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="zebra"):
        scan_split(str(root))
    with pytest.raises(DataError, match="zebra"):
        make_loader(str(root), loader="torch")


# ---------------------------------------------------------------- digits


def test_digits_info_and_split():
    info = dataset_info("digits")
    assert info.classes == [str(i) for i in range(10)] and info.num_train == 1437 and info.image_size == 32
    assert info.small and info.train_bytes == 1437 * 3 * 32 * 32
    assert all(0.2 < m < 0.4 for m in info.mean) and all(0.25 < s < 0.4 for s in info.std)
    assert dataset_info("digits", image_size=16).image_size == 16
    ev = make_loader("digits", "eval", batch_size=100, loader="torch", device="cpu")
    xs, ys = zip(*ev, strict=True)
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.shape == (360, 3, 32, 32) and y.dtype == torch.int64 and len(ev) == 4
    assert torch.bincount(y, minlength=10).min() >= 35  # stratified split
    assert torch.equal(x[:, 0], x[:, 1])  # gray in 3 channels
    assert abs(x.mean().item()) < 0.2 and 0.8 < x.std().item() < 1.2  # normalised with its own mean/std


def test_digits_sample_naturals_is_seeded_and_per_class():
    a = sample_naturals("digits", per_class=3, seed=1)
    b = sample_naturals("digits", per_class=3, seed=1)
    c = sample_naturals("digits", per_class=3, seed=2)
    assert a.images.shape == (10, 3, 3, 32, 32) and a.images.dtype == torch.uint8
    assert a.files == b.files and torch.equal(a.images, b.images) and a.files != c.files
    from sklearn.datasets import load_digits

    target = load_digits().target
    for k, files in enumerate(a.files):
        assert all(target[int(f.split(":")[1])] == k for f in files)
    with pytest.raises(DataError, match="fewer than per_class"):
        sample_naturals("digits", per_class=1000, seed=0)


def test_tensor_loader_train_augmentation_and_determinism():
    ld = make_loader("digits", "train", batch_size=128, loader="torch", seed=3, device="cpu")
    assert len(ld) == 1437 // 128
    ld.set_epoch(5)
    a = [(x.clone(), y.clone()) for x, y in ld]
    ld.set_epoch(5)
    b = list(ld)
    assert len(a) == len(ld)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b, strict=True))
    c = list(ld)  # next iteration: epoch 6, another order
    assert not torch.equal(a[0][1], c[0][1])
    # pad-4 crops show zero padding (normalised value of 0) on some borders; flips happen
    zero = (0 - ld.mean[0]) / ld.std[0]
    x = torch.cat([p[0] for p in a])
    assert ((x[:, 0, 0, :] - zero).abs() < 1e-5).all(dim=1).any()


# ---------------------------------------------------------------- sharding


@pytest.mark.parametrize("n", [1, 7, 10, 101])
@pytest.mark.parametrize("world", [2, 3])
def test_shards_cover_every_index_exactly_once(n, world):
    for epoch in (0, 1):
        parts = [shard_indices(n, 0, epoch, True, r, world) for r in range(world)]
        allx = torch.cat(parts)
        assert sorted(allx.tolist()) == list(range(n))
    assert not torch.equal(epoch_order(50, 0, 0, True), epoch_order(50, 0, 1, True))
    assert torch.equal(epoch_order(50, 0, 1, True), epoch_order(50, 0, 1, True))
    assert shard_bounds(10, 1, 3) == (3, 6)


def test_shard_from_environment(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert resolve_shard(None) == (1, 4)
    assert resolve_shard((0, 2)) == (0, 2)
    with pytest.raises(ValueError, match="rank"):
        resolve_shard((2, 2))


def test_torch_eval_shards_cover_all_files_once(tmp_path):
    root = str(tmp_path / "ds")
    make_folder(root, {"train": 4, "val": 5})
    seen = []
    for rank in range(2):
        ld = make_loader(root, "eval", batch_size=2, loader="torch", shard=(rank, 2), num_workers=0, device="cpu")
        assert ld.skipped == 0
        for x, y in ld:
            ids = _identify(_denorm_colors(x, ld.mean, ld.std), 1, 5)
            assert [c for c, _ in ids] == y.tolist()  # labels match the decoded files
            seen += ids
    assert sorted(seen) == [(c, i) for c in range(3) for i in range(5)]


def test_train_batch_count_equal_across_ranks(tmp_path):
    root = str(tmp_path / "ds")
    make_folder(root, {"train": 5, "val": 1}, with_bad=False)  # 15 files: shards of 7 and 8
    lens = []
    for rank in range(2):
        ld = make_loader(root, "train", batch_size=2, loader="torch", shard=(rank, 2), num_workers=0, device="cpu")
        lens.append((len(ld), sum(1 for _ in ld)))
    assert lens == [(3, 3), (3, 3)]


# ---------------------------------------------------------------- torch folder loader


def test_torch_loader_skips_bad_files_and_is_seeded(folder):
    root, bad = folder
    ld = make_loader(root, "train", batch_size=4, loader="torch", num_workers=0, seed=7, device="cpu")
    assert ld.skipped == len(bad) and ld.classes == sorted(CLASSES) and len(ld) == 3
    ld.set_epoch(2)
    torch.manual_seed(11)
    a = list(ld)
    after = torch.rand(3)
    torch.manual_seed(11)
    assert torch.equal(after, torch.rand(3))  # the caller's global RNG is untouched by the seeded augmentation
    assert all(x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 for x, _ in a)
    ld2 = make_loader(root, "train", batch_size=4, loader="torch", num_workers=2, seed=7, device="cpu")
    ld2.set_epoch(2)
    b = list(ld2)  # worker processes do not change the result: augmentation is seeded per sample
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)


def test_imagenet_style_reads(tmp_path):
    root = str(tmp_path / "big")
    make_folder(root, {"train": 2, "val": 2}, size=(120, 160), solid=False, with_bad=False)
    info = dataset_info(root)
    assert not info.small and info.image_size == 224
    ld = make_loader(root, "train", batch_size=3, loader="torch", image_size=64, num_workers=0, device="cpu")
    x, y = next(iter(ld))
    assert x.shape == (3, 3, 64, 64) and y.shape == (3,)
    ev = make_loader(root, "eval", batch_size=6, loader="torch", image_size=64, num_workers=0, device="cpu")
    x, y = next(iter(ev))
    assert x.shape == (6, 3, 64, 64) and y.tolist() == [0, 0, 1, 1, 2, 2]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    assert ld.mean == (0.485, 0.456, 0.406)
    assert ((x * torch.tensor(ld.std).view(1, 3, 1, 1) + mean) * 255).round().clamp(0, 255).ge(0).all()


def test_sample_naturals_from_folder_uses_valid_files(folder):
    root, bad = folder
    s = sample_naturals(root, per_class=4, seed=0)
    assert s.images.shape == (3, 4, 3, 32, 32) and s.classes == sorted(CLASSES)
    picked = {os.path.basename(f) for fs in s.files for f in fs}
    assert not picked & {os.path.basename(p) for p in bad.values()}
    for c, fs in enumerate(s.files):
        for f, img in zip(fs, s.images[c], strict=True):
            i = int(os.path.basename(f)[3:6])
            ref = torch.tensor(color_of(0, c, i), dtype=torch.float32)
            assert (img.float().mean(dim=(1, 2)) - ref).abs().max() <= 3
    assert sample_naturals(root, per_class=2, seed=0).files == sample_naturals(root, per_class=2, seed=0).files
    with pytest.raises(DataError, match="fewer than per_class"):
        sample_naturals(root, per_class=5, seed=0)


def test_make_loader_argument_errors(folder):
    root, _ = folder
    with pytest.raises(ValueError, match="split"):
        make_loader(root, "validation")
    with pytest.raises(ValueError, match="loader"):
        make_loader(root, loader="pil")
    with pytest.raises(ValueError, match="mean"):
        make_loader(root, loader="torch", mean=(0.5, 0.5))
    with pytest.raises(ValueError, match="image_size"):
        dataset_info("digits", image_size=4)


# ---------------------------------------------------------------- CLI


def _cli(argv):
    from infer_fast.cli import main

    return main(argv)  # the one exit path: an unusable root is one line and exit status 2


def test_data_holdout_splits_the_valid_training_images_and_loaders_read_both_parts(folder, tmp_path, capsys):
    root, bad = folder  # 4 valid training images per class, 4 bad ones in train/cat
    out = str(tmp_path / "split")
    assert _cli(["data", "holdout", root, "--per-class", "1", "--seed", "3", "--out", out]) == 0
    assert "3 images held out" in capsys.readouterr().out
    valid = {os.path.abspath(f) for f in scan_split(root, "train").files}
    parts = {}
    for part in ("train", "holdout"):
        files = [os.path.join(out, part, c, n) for c in CLASSES for n in sorted(os.listdir(os.path.join(out, part, c)))]
        parts[part] = {os.path.realpath(f) for f in files}
        assert len(parts[part]) == len(files)
    assert parts["train"] | parts["holdout"] == {os.path.realpath(f) for f in valid}
    assert not parts["train"] & parts["holdout"] and len(parts["holdout"]) == 3
    rep = json.loads(open(os.path.join(out, "holdout.json")).read())
    assert rep["skipped"] == 4 and rep["train_images"] == 9 and {c: len(v) for c, v in rep["holdout"].items()} == {
        c: 1 for c in CLASSES}
    assert {os.path.realpath(f) for v in rep["holdout"].values() for f in v} == parts["holdout"]
    # the two parts are datasets: distillation draws from train/, a student is scored on holdout/
    assert scan_split(out, "train").counts == {c: 3 for c in CLASSES}
    sample = sample_naturals(out, per_class=3, seed=0)
    assert {os.path.realpath(f) for fs in sample.files for f in fs} == parts["train"]
    x, y = next(iter(make_loader(os.path.join(out, "holdout"), "eval", batch_size=8, loader="torch", num_workers=0)))
    assert x.shape[0] == 3 and sorted(y.tolist()) == [0, 1, 2]
    # seeded: the same seed picks the same slice, another seed another one somewhere over a few tries
    again = str(tmp_path / "again")
    assert _cli(["data", "holdout", root, "--per-class", "1", "--seed", "3", "--out", again]) == 0
    assert json.loads(open(os.path.join(again, "holdout.json")).read())["holdout"] == rep["holdout"]
    picks = set()
    for seed in range(4):
        o = str(tmp_path / f"s{seed}")
        assert _cli(["data", "holdout", root, "--per-class", "1", "--seed", str(seed), "--out", o]) == 0
        picks.add(json.dumps(json.loads(open(os.path.join(o, "holdout.json")).read())["holdout"]))
    assert len(picks) > 1
    capsys.readouterr()
    # bad input: one line, exit 2, nothing written
    assert _cli(["data", "holdout", root, "--per-class", "4", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--per-class 4" in err and "keep at least one" in err and len(err.strip().splitlines()) == 1
    assert not os.path.lexists(tmp_path / "x") and not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    assert _cli(["data", "holdout", root, "--out", out]) == 2
    assert "--out: expected a new folder" in capsys.readouterr().err
    assert _cli(["data", "holdout", root, "--per-class", "0", "--out", str(tmp_path / "y")]) == 2
    assert "--per-class: expected an integer >= 1, got 0" in capsys.readouterr().err


def test_evaluate_counts_natural_images_that_are_files_of_the_validation_split(folder, tmp_path, capsys):
    """A set distilled from ROOT/train and scored on a holdout slice of it is warned about, by real path (the
    slice's links count as their targets), and the count goes into summary.json; the same set scored on the
    data holdout's own train/holdout pair is not."""
    from infer_fast.cli import main
    from infer_fast.distilled import write_distilled

    root, _ = folder
    out = str(tmp_path / "split")
    assert _cli(["data", "holdout", root, "--per-class", "1", "--seed", "0", "--out", out]) == 0
    held = json.loads(open(os.path.join(out, "holdout.json")).read())["holdout"]
    classes = scan_split(root, "train").classes
    in_root = [[os.path.join(root, "train", c, os.path.basename(f)) for f in held[c]] for c in classes]
    in_train = [[os.path.join(out, "train", c, sorted(os.listdir(os.path.join(out, "train", c)))[0])]
                for c in classes]
    g = torch.Generator().manual_seed(0)
    for name, files, expected in (("leaky", in_root, 3), ("clean", in_train, 0)):
        d = str(tmp_path / name)
        manifest = {"method": "random", "classes": classes, "mean": [0.5] * 3, "std": [0.25] * 3, "image_size": 32,
                    "small": True, "ipc": 1, "num_natural_sets": 1, "num_teachers": 1,
                    "source": {"source": root, "natural_files": files}}
        write_distilled(d, manifest, {"naturals": torch.randint(0, 256, (1, 3, 3, 32, 32), generator=g,
                                                                dtype=torch.uint8),
                                      "labels": torch.randn(3, 3, generator=g).half()})
        run = str(tmp_path / f"eval-{name}")
        capsys.readouterr()
        assert main(["evaluate", d, "--val", os.path.join(out, "holdout"), "--student", "convnet", "--width",
                     "0.125", "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--workers", "0",
                     "--loader", "torch", "--out", run, "--no-progress"]) == 0
        text = capsys.readouterr().out
        overlap = json.load(open(os.path.join(run, "summary.json")))["val_overlap"]
        assert overlap["naturals"] == 3 and overlap["in_val"] == expected
        assert ("3 of the set's 3 natural images are files of the validation split" in text) == bool(expected)
    # the digits' naturals are disjoint from their validation split by construction: not told
    from infer_fast.data import natural_overlap

    assert natural_overlap([["digits:4"]], "digits") is None and natural_overlap(None, out) is None


def test_data_check_cli(folder, tmp_path, capsys):
    root, bad = folder
    out = tmp_path / "report.json"
    assert _cli(["data", "check", root, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for path in bad.values():
        assert path in text
    rep = json.loads(out.read_text())
    assert set(rep["splits"]) == {"train", "val"}
    tr = rep["splits"]["train"]
    assert tr["num_good"] == 12 and tr["num_bad"] == 4 and tr["counts"] == {c: 4 for c in CLASSES}
    assert {b["reason"] for b in tr["bad"]} == {"empty", "truncated", "not an image", "undecodable"}
    assert _cli(["data", "check", root, "--full-decode"]) == 0
    assert _cli(["data", "check", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "ds" / "train" / "zebra").mkdir()
    (tmp_path / "ds" / "train" / "zebra" / "a.png").write_bytes(b"x")
    assert _cli(["data", "check", root]) == 1
    assert "zebra" in capsys.readouterr().out
