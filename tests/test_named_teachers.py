"""infer_fast.models.named: ``torchvision:MODEL[:WEIGHTS]`` teachers, offline from a faked torch.hub cache."""

from __future__ import annotations

import os
import urllib.error

import pytest
import torch
from torchvision.models import get_model

from infer_fast.models import CheckpointError, imagenet1k_wnids
from infer_fast.models.named import PAPER_WEIGHTS, is_named, load_named_teacher, resolve


@pytest.fixture(autouse=True)
def _offline(tmp_path, monkeypatch):
    """A private TORCH_HOME, and no network: a download attempt fails as it does offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.hub.set_dir(str(tmp_path / "torch" / "hub"))

    def refuse(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    yield
    torch.hub.set_dir(os.path.join(os.path.expanduser("~"), ".cache", "torch", "hub"))


def _fake_cache(spec: str, seed: int = 0) -> tuple[str, torch.nn.Module]:
    """Save a randomly initialised torchvision model where torchvision's own download would put its weights."""
    named = resolve(spec)
    torch.manual_seed(seed)
    model = get_model(named.model, weights=None).eval()
    os.makedirs(os.path.dirname(named.path), exist_ok=True)
    torch.save(model.state_dict(), named.path)
    return named.path, model


def test_names_default_to_the_papers_weights_even_where_torchvision_defaults_differ():
    assert is_named("torchvision:resnet18") and not is_named("teacher.safetensors")
    for name in ("resnet18", "mobilenet_v2", "efficientnet_b0"):
        named = resolve(f"torchvision:{name}")
        assert named.weights == PAPER_WEIGHTS and named.path.startswith(torch.hub.get_dir())
    assert resolve("torchvision:mobilenet_v2:IMAGENET1K_V2").weights == "IMAGENET1K_V2"  # torchvision's DEFAULT
    assert resolve("torchvision:vit_b_16").weights == "IMAGENET1K_V1"
    assert resolve("torchvision:resnet18").record() == {
        "name": "torchvision:resnet18", "weights": "IMAGENET1K_V1",
        "url": "https://download.pytorch.org/models/resnet18-f37072fd.pth"}


def test_unknown_models_and_tags_are_one_line_errors():
    with pytest.raises(CheckpointError, match=r"torchvision has no classification model 'resnet19'.*resnet18"):
        resolve("torchvision:resnet19")
    with pytest.raises(CheckpointError, match=r"resnet18 has no weights 'IMAGENET1K_V9'; it has IMAGENET1K_V1"):
        resolve("torchvision:resnet18:IMAGENET1K_V9")


def test_without_a_cached_copy_the_error_names_the_file_and_where():
    with pytest.raises(CheckpointError) as err:
        load_named_teacher("torchvision:resnet18")
    msg = str(err.value)
    assert len(msg.splitlines()) == 1 and "resnet18-f37072fd.pth" in msg and torch.hub.get_dir() in msg
    assert "URLError" in msg and "TORCH_HOME" in msg


def test_cached_weights_load_strictly_with_imagenet_classes_and_preset(tmp_path):
    path, reference = _fake_cache("torchvision:resnet18", seed=1)
    model, meta = load_named_teacher("torchvision:resnet18")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    assert meta.arch == "torchvision:resnet18" and meta.classes == list(imagenet1k_wnids())
    assert meta.image_size == 224 and meta.mean == (0.485, 0.456, 0.406) and meta.val_acc == pytest.approx(0.69758)
    assert meta.extra["weights"] == "IMAGENET1K_V1" and len(meta.fingerprint) == 64


def test_restriction_to_an_imagenet_subset_keeps_those_logits():
    _, reference = _fake_cache("torchvision:mobilenet_v2")
    wnids = list(imagenet1k_wnids())
    subset = [wnids[i] for i in (217, 0, 482)]  # any order
    model, meta = load_named_teacher("torchvision:mobilenet_v2", data_classes=subset)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x)[:, [217, 0, 482]])
    assert meta.classes == subset and meta.extra["class_index"] == [217, 0, 482]


def test_a_damaged_or_foreign_cache_file_is_named(tmp_path):
    named = resolve("torchvision:resnet18")
    os.makedirs(os.path.dirname(named.path), exist_ok=True)
    with open(named.path, "wb") as f:
        f.write(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a readable state dict.*delete it"):
        load_named_teacher("torchvision:resnet18")
    torch.save(get_model("resnet34").state_dict(), named.path)
    with pytest.raises(CheckpointError, match="does not fit torchvision's resnet18"):
        load_named_teacher("torchvision:resnet18")
