"""The distilled-dataset format: write/load round trip, indexing, composition, corruption detection."""

from __future__ import annotations

import json
import os

import pytest
import torch

from infer_fast import reference
from infer_fast.distilled import (
    DistilledFormatError,
    load_distilled,
    synthetic_index,
    write_distilled,
)


def _manifest(c=4, s=6, method="infer"):
    return {"method": method, "classes": [f"c{i}" for i in range(c)], "mean": [0.5, 0.4, 0.3],
            "std": [0.2, 0.25, 0.3], "image_size": s, "small": True, "ipc": 3, "num_natural_sets": 2,
            "num_teachers": 2,
            "teachers": [{"arch": "convnet", "fingerprint": "ab"}, {"arch": "x", "fingerprint": "cd"}]}


def _tensors(k=2, c=4, m=2, s=6, with_ufcs=True):
    g = torch.Generator().manual_seed(0)
    t = {"naturals": torch.randint(0, 256, (k, c, 3, s, s), generator=g, dtype=torch.uint8)}
    if with_ufcs:
        t["ufcs"] = (torch.randn(k, m, 3, s, s, generator=g) * 2).half()
    n = k * c * ((m if with_ufcs else 0) + 1)
    t["labels"] = torch.randn(n, c, generator=g).half()
    return t


def test_synthetic_index():
    base, ufc, cls = synthetic_index(2, 3, 2)
    assert len(base) == 2 * 3 * 3
    assert base[:6].tolist() == list(range(6)) and (ufc[:6] == -1).all()
    # i = K*C + (k*M + m)*C + c  ->  natural k*C + c, ufc k*M + m
    i = 6 + (1 * 2 + 0) * 3 + 2
    assert (int(base[i]), int(ufc[i]), int(cls[i])) == (1 * 3 + 2, 1 * 2 + 0, 2)


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_roundtrip_and_compose(tmp_path, backend):
    if backend == "fused":
        pytest.importorskip("infer_fast.ops.compensator_broadcast")
    t = _tensors()
    man = write_distilled(str(tmp_path), _manifest(), t)
    assert set(man.files) == {"naturals.safetensors", "ufcs.safetensors", "labels.safetensors"}
    ds = load_distilled(str(tmp_path), backend=backend)
    assert len(ds) == 2 * 4 * 3 and ds.method == "infer" and ds.classes == ["c0", "c1", "c2", "c3"]
    assert ds.image_size == 6 and ds.small and ds.mean == (0.5, 0.4, 0.3)
    for name in t:
        assert torch.equal(ds.tensors[name], t[name])
    assert ds.hard_labels.tolist() == [i % 4 for i in range(24)]
    assert ds.soft_labels.dtype == torch.float32 and torch.equal(ds.soft_labels, t["labels"].float())
    idx = torch.tensor([0, 5, 8, 23, 13])
    x = ds.compose(idx)
    assert x.dtype == torch.float32 and x.shape == (5, 3, 6, 6)
    mean, std = torch.tensor(ds.mean), torch.tensor(ds.std)
    base, ufc, _ = synthetic_index(2, 4, 2)
    expect = reference.compensator_broadcast(t["naturals"].reshape(-1, 3, 6, 6), t["ufcs"].reshape(-1, 3, 6, 6).float(),
                                             base[idx], ufc[idx], mean, std, -mean / std, (1 - mean) / std)
    torch.testing.assert_close(x, expect, atol=1e-5, rtol=1e-5)
    lo, hi = (-mean / std).view(1, 3, 1, 1), ((1 - mean) / std).view(1, 3, 1, 1)
    assert (x >= lo - 1e-6).all() and (x <= hi + 1e-6).all()
    images, labels = ds.get_batch(idx)
    assert torch.equal(labels, ds.soft_labels[idx]) and torch.equal(images, x)
    with pytest.raises(IndexError, match="indices must be in"):
        ds.compose([24])


def test_baseline_layout(tmp_path):
    t = _tensors(k=3, with_ufcs=False)
    write_distilled(str(tmp_path), _manifest(method="random"), t)
    ds = load_distilled(str(tmp_path), backend="reference")
    assert len(ds) == 12 and "ufcs" not in ds.tensors
    x = ds.compose(torch.arange(12))
    expect = (t["naturals"].reshape(-1, 3, 6, 6).float() / 255 - torch.tensor(ds.mean).view(1, 3, 1, 1)) / torch.tensor(
        ds.std).view(1, 3, 1, 1)
    torch.testing.assert_close(x, expect, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fname", ["naturals.safetensors", "ufcs.safetensors", "labels.safetensors"])
def test_flipped_byte_is_caught(tmp_path, fname):
    write_distilled(str(tmp_path), _manifest(), _tensors())
    path = tmp_path / fname
    data = bytearray(path.read_bytes())
    data[len(data) - 7] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(DistilledFormatError, match=f"checksum mismatch in .*{fname}"):
        load_distilled(str(tmp_path))


def test_bad_directories(tmp_path):
    with pytest.raises(DistilledFormatError, match="no manifest.json"):
        load_distilled(str(tmp_path))
    write_distilled(str(tmp_path), _manifest(), _tensors())
    mpath = tmp_path / "manifest.json"
    man = json.loads(mpath.read_text())
    man["format_version"] = 99
    mpath.write_text(json.dumps(man))
    with pytest.raises(DistilledFormatError, match="format_version 99"):
        load_distilled(str(tmp_path))
    man["format_version"] = 1
    mpath.write_text(json.dumps(man))
    os.remove(tmp_path / "ufcs.safetensors")
    with pytest.raises(DistilledFormatError, match="ufcs.safetensors is listed in the manifest but missing"):
        load_distilled(str(tmp_path))


def test_a_set_written_under_the_withdrawn_ufc_rule_still_loads(tmp_path):
    """Sets distilled before INFER §3.5 was corrected (u inside the set's no-clamp interval, no ``ufc_bound`` in the
    config) keep the same format version and compose to exactly x + u."""
    from infer_fast.runtime import Normalisation
    from infer_fast.synth.problem import ufc_bounds

    t = _tensors()
    man = _manifest()
    norm = Normalisation(man["mean"], man["std"])
    _, _, lo, hi = norm.tensors()
    for k in range(2):
        lower, upper = ufc_bounds(norm.normalise(t["naturals"][k]), lo, hi, "set")
        t["ufcs"][k] = torch.maximum(torch.minimum(t["ufcs"][k].float(), upper), lower).half()
    man["config"] = {"method": "infer", "jitter": 4, "iterations": 1000}  # an old config: no ufc_bound field
    write_distilled(str(tmp_path), man, t)
    ds = load_distilled(str(tmp_path), backend="reference")
    x = norm.normalise(t["naturals"])  # [K, C, 3, S, S]
    i = 2 * 4 + (1 * 2 + 1) * 4 + 3  # set 1, UFC teacher 1, class 3
    expected = x[1, 3] + t["ufcs"][1, 1].float()
    torch.testing.assert_close(ds.compose(torch.tensor([i]))[0].float(), expected, atol=1e-3, rtol=0)


@pytest.mark.parametrize("with_ufcs", [True, False])
def test_ddranking_export_is_class_major(tmp_path, capsys, with_ufcs):
    """`export --format ddranking`: DD-Ranking's SoftLabelEvaluator labels row r as class r // ipc, so the image
    tensor is class-major with ipc = K(M+1) (INFER) or K (stored images only) per class, labels row for row."""
    from safetensors.torch import load_file

    from infer_fast.cli import main

    k, c, m, s = 2, 4, 2, 6
    d = str(tmp_path / "d")
    write_distilled(d, _manifest(c, s, "infer" if with_ufcs else "random"), _tensors(k, c, m, s, with_ufcs))
    out = tmp_path / "dd"
    assert main(["export", d, "--out", str(out), "--format", "ddranking", "--backend", "reference"]) == 0
    ds = load_distilled(d, backend="reference")
    ipc = k * (m + 1) if with_ufcs else k
    info = json.loads((out / "ddranking.json").read_text())
    assert (info["ipc"], info["num_classes"], info["classes"], info["images"]) == (ipc, c, ds.classes, c * ipc)
    assert info["mean"] == pytest.approx(list(ds.mean)) and info["normalised"] is True
    t = load_file(str(out / "ddranking.safetensors"))
    assert t["image_tensor"].shape == (c * ipc, 3, s, s) and t["image_tensor"].dtype == torch.float32
    assert t["soft_labels"].shape == (c * ipc, c) and t["soft_labels"].dtype == torch.float32
    # ddranking's own hard labels: torch.tensor(np.array([np.ones(ipc) * i for i in range(num_classes)])).view(-1)
    assert torch.equal(t["hard_labels"], torch.arange(c).repeat_interleave(ipc))
    idx = t["synthetic_index"]
    assert sorted(idx.tolist()) == list(range(len(ds))), "every synthetic image once"
    assert torch.equal(ds.hard_labels[idx], t["hard_labels"]), "row r holds an image of class r // ipc"
    assert all(idx[r * ipc:(r + 1) * ipc].tolist() == sorted(idx[r * ipc:(r + 1) * ipc].tolist()) for r in range(c))
    torch.testing.assert_close(t["image_tensor"], ds.compose(idx))  # normalised, as the student sees them
    torch.testing.assert_close(t["soft_labels"], ds.soft_labels[idx])  # the static labels, row for row
    assert f"ipc={ipc}" in (out / "README.md").read_text()
    capsys.readouterr()
    assert main(["export", d, "--out", str(out), "--format", "ddranking"]) == 2, "an --out that holds files"
    err = capsys.readouterr().err.splitlines()
    assert err == [f"infer-fast export: error: --out: expected a new or empty folder, got {str(out)!r}"]
