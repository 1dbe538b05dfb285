"""data/augment.py: the student-training augmentation (shapes, value ranges, exact crops/flips on a known image)
and the batch mixing (mixup, CutMix)."""

from __future__ import annotations

import pytest
import torch

from infer_fast.data.augment import (
    augment_batch,
    cutmix_inputs,
    mix_batch,
    mixup_inputs,
    random_crop,
    random_flip,
    random_resized_crop,
)


def _known(b: int = 6, c: int = 3, s: int = 12) -> torch.Tensor:
    # distinct value at every position, so a crop/flip is identified exactly
    return torch.arange(b * c * s * s, dtype=torch.float32).view(b, c, s, s) / 100.0 - 3.0


def test_flip_all_and_none():
    x = _known()
    assert torch.equal(random_flip(x, torch.Generator().manual_seed(0), p=1.0), x.flip(3))
    assert torch.equal(random_flip(x, torch.Generator().manual_seed(0), p=0.0), x)
    y = random_flip(x, torch.Generator().manual_seed(3))
    flipped = [bool(torch.equal(y[i], x[i].flip(2))) for i in range(x.shape[0])]
    kept = [bool(torch.equal(y[i], x[i])) for i in range(x.shape[0])]
    assert all(f != k for f, k in zip(flipped, kept, strict=True)), "each image is either flipped or kept"


def test_random_crop_is_a_window_of_the_padded_image():
    x = _known(b=16)
    pad = 4
    y = random_crop(x, pad, torch.Generator().manual_seed(1))
    assert y.shape == x.shape and y.is_contiguous()
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    s = x.shape[-1]
    offsets = set()
    for i in range(x.shape[0]):
        hits = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                if torch.equal(padded[i, :, dy:dy + s, dx:dx + s], y[i])]
        assert len(hits) == 1, f"image {i}: output is not exactly one window of the padded input"
        offsets.add(hits[0])
    assert len(offsets) > 3, f"offsets should vary across the batch, got {offsets}"


def test_random_resized_crop_shapes_ranges_identity():
    x = _known(b=8, s=16)
    y = random_resized_crop(x, generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    lo, hi = x.amin(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3))
    # bilinear with border padding: convex combinations of each image's own pixels
    assert bool((y.amin(dim=(1, 2, 3)) >= lo - 1e-5).all() and (y.amax(dim=(1, 2, 3)) <= hi + 1e-5).all())
    same = random_resized_crop(x, scale=(1.0, 1.0), ratio=(1.0, 1.0), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(same, x, atol=1e-4, rtol=0)


@pytest.mark.parametrize("small", [True, False])
def test_augment_batch_shapes_ranges_and_determinism(small):
    x = torch.randn(5, 3, 16, 16)
    a = augment_batch(x, small, torch.Generator().manual_seed(7))
    b = augment_batch(x, small, torch.Generator().manual_seed(7))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b), "same generator seed must give the same augmentation"
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    assert float(a.min()) >= lo - 1e-5 and float(a.max()) <= hi + 1e-5
    assert not torch.equal(a, augment_batch(x, small, torch.Generator().manual_seed(8)))


def test_augment_batch_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"expected images \[B, C, H, W\]"):
        augment_batch(torch.zeros(3, 8, 8), True)


def test_mixup_inputs_is_the_convex_combination():
    x = torch.randn(5, 3, 4, 4)
    perm = torch.tensor([2, 0, 1, 4, 3])
    torch.testing.assert_close(mixup_inputs(x, 0.25, perm), 0.25 * x + 0.75 * x[perm])
    assert mixup_inputs(x, 1.0, perm) is x and mixup_inputs(x, 0.4, None) is x


def test_cutmix_pastes_a_box_and_weights_the_label_by_the_kept_area():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    perm = torch.tensor([1, 0])
    g = torch.Generator().manual_seed(3)
    out, lam = cutmix_inputs(x, 0.75, perm, g)  # box side sqrt(0.25) = 1/2 of 8 -> at most 4 x 4, clipped
    pasted = (out != x).any(dim=1)[0]
    area = int(pasted.sum())
    assert 0 < area <= 16 and lam == pytest.approx(1 - area / 64)
    rows, cols = pasted.nonzero(as_tuple=True)
    box = (slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1))
    assert int(pasted[box].sum()) == area  # one rectangle
    assert torch.equal(out[0][:, box[0], box[1]], x[1][:, box[0], box[1]])
    assert torch.equal(out[:, :, ~pasted], x[:, :, ~pasted])
    same, one = cutmix_inputs(x, 1.0, perm, g)  # lam 1: nothing to paste
    assert one == 1.0 and torch.equal(same, x)


def test_mix_batch_draws_lam_then_perm_and_skips_single_images():
    import numpy as np

    x = torch.randn(4, 3, 8, 8)
    same = mix_batch(x[:1], "mixup", 0.8, np.random.default_rng(0), torch.Generator().manual_seed(0))
    assert same[0] is x[:1] or torch.equal(same[0], x[:1])
    assert same[1:] == (1.0, None)
    assert mix_batch(x, "mixup", 0.0, np.random.default_rng(0), torch.Generator())[1:] == (1.0, None)
    out, lam, perm = mix_batch(x, "mixup", 0.8, np.random.default_rng(0), torch.Generator().manual_seed(0))
    assert lam == float(np.random.default_rng(0).beta(0.8, 0.8))
    assert torch.equal(perm, torch.randperm(4, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(out, mixup_inputs(x, lam, perm))
