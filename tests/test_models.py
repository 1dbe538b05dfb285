"""infer_fast.models: architectures, safe checkpoint loading and refusals."""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch
import torchvision
from conftest import require_shared
from PIL import Image

from infer_fast.models import (
    ARCHS,
    CheckpointError,
    TeacherMeta,
    build_model,
    load_teacher,
    save_teacher,
)
from infer_fast.models.archs import HEADS


def _meta(arch: str, num_classes: int, image_size: int = 32, width: float = 1.0) -> TeacherMeta:
    return TeacherMeta(arch=arch, num_classes=num_classes, classes=[f"c{i}" for i in range(num_classes)],
                       mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2), image_size=image_size, val_acc=0.5, width=width)


# ------------------------------------------------------------------------------------------------ building
@pytest.mark.parametrize("index,arch", list(enumerate(ARCHS)))
def test_every_arch_builds_and_runs_at_32px(index, arch):
    num_classes = (1, 10, 37)[index % 3]  # several class counts across the architectures, one build each
    model = build_model(arch, num_classes, image_size=32, width=0.25).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, num_classes) and torch.isfinite(out).all()
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()), f"{arch} has no BatchNorm"
    assert model.state_dict()[HEADS[arch]].shape[0] == num_classes


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_imagenet_sized_inputs(arch):
    model = build_model(arch, 100, image_size=224, width=0.25).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 100)


def test_small_input_adaptation_keeps_a_4x4_map():
    # 32 px inputs: the mobile networks run their last stage on a 4x4 map (overall stride 8), at 224 px stride 32
    for image_size, expected in ((32, 4), (224, 7)):
        model = build_model("mobilenet_v2", 10, image_size=image_size, width=0.25).eval()
        with torch.no_grad():
            assert model.features(torch.randn(1, 3, image_size, image_size)).shape[-1] == expected


def test_width_scales_channels_and_unknown_arch_lists_archs():
    small, full = build_model("resnet18_cifar", 10, 32, 0.25), build_model("resnet18_cifar", 10, 32, 1.0)
    assert small.conv1.out_channels == 16 and full.conv1.out_channels == 64
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in full.parameters()) / 10
    with pytest.raises(ValueError, match="unknown arch 'resnet99'.*resnet18_cifar.*cifar_resnet56"):
        build_model("resnet99", 10)


def test_cifar_resnet_depths():
    for depth in (20, 32, 44, 56):
        model = build_model(f"cifar_resnet{depth}", 10, 32)
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        assert len(convs) + 1 == depth  # 6n+1 convolutions + the linear layer; option A has no shortcut convs


# ------------------------------------------------------------------------------------------------- loading
@pytest.mark.parametrize("arch,width", [("convnet", 0.25), ("shufflenet_v2", 0.5), ("resnet18_cifar", 0.125)])
def test_safetensors_round_trip(tmp_path, arch, width):
    model = build_model(arch, 7, image_size=32, width=width)
    model.train()
    with torch.no_grad():  # move the BN running statistics away from their initial values
        model(torch.randn(4, 3, 32, 32) * 2 + 1)
    model.eval()
    path = str(tmp_path / "t.safetensors")
    saved = save_teacher(model, _meta(arch, 7, width=width), path)
    loaded, meta = load_teacher(path, num_classes=7)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert not loaded.training
    assert (meta.arch, meta.num_classes, meta.image_size, meta.width) == (arch, 7, 32, width)
    assert meta.classes == [f"c{i}" for i in range(7)] and meta.mean == (0.5, 0.4, 0.3) and meta.val_acc == 0.5
    assert meta.fingerprint == saved.fingerprint and len(meta.fingerprint) == 64
    assert [f for f in os.listdir(tmp_path)] == ["t.safetensors"]  # no temp file left behind


def test_safetensors_header_starting_like_a_pickle_is_read_as_safetensors(tmp_path):
    # The 8-byte header length is little-endian: a header of 0x..80 bytes starts the file with 0x80, the pickle
    # protocol byte. Such a teacher once lost its metadata (read through torch.load) and could not be loaded.
    model = build_model("convnet", 3, image_size=16, width=0.25).eval()
    path = str(tmp_path / "t.safetensors")
    for pad in range(256):
        meta = dataclasses.replace(_meta("convnet", 3, image_size=16, width=0.25), extra={"pad": "x" * pad})
        save_teacher(model, meta, path)
        with open(path, "rb") as f:
            if f.read(1) == b"\x80":
                break
    else:
        pytest.fail("no padding gave a header length with low byte 0x80")
    loaded, meta = load_teacher(path)
    assert (meta.arch, meta.width, meta.image_size, meta.extra["pad"]) == ("convnet", 0.25, 16, "x" * pad)


def test_torchvision_state_dict_loads_into_resnet18(tmp_path):
    reference = torchvision.models.resnet18(num_classes=12).eval()
    path = str(tmp_path / "resnet18.pth")
    torch.save(reference.state_dict(), path)
    for arch in ("resnet18", None):  # given, and inferred from keys and shapes
        model, meta = load_teacher(path, arch=arch)
        assert meta.arch == "resnet18" and meta.num_classes == 12 and meta.image_size == 224
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            assert torch.equal(model(x), reference(x))


@pytest.mark.parametrize("arch", ["resnet50", "resnet101"])
def test_torchvision_bottleneck_resnets_are_the_same_networks(tmp_path, arch):
    # The students of the field's ImageNet tables: torchvision's own state dicts load, with equal outputs, and the
    # file's architecture is inferred from its keys and shapes (ResNet-50 and -101 differ only in layer3's depth).
    reference = getattr(torchvision.models, arch)(num_classes=6).eval()
    path = str(tmp_path / f"{arch}.pth")
    torch.save(reference.state_dict(), path)
    model, meta = load_teacher(path)
    assert meta.arch == arch and meta.num_classes == 6
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_wrapped_and_prefixed_state_dicts_load(tmp_path):
    reference = build_model("convnet", 5, 32).eval()  # plain state dicts carry no width: inferred at width 1
    path = str(tmp_path / "wrapped.pt")
    torch.save({"epoch": 3, "model": {"module." + k: v for k, v in reference.state_dict().items()}}, path)
    model, meta = load_teacher(path)
    assert meta.arch == "convnet" and meta.image_size == 32 and meta.extra == {"epoch": 3}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def _cifar_test_subset(per_class: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The first ``per_class`` test JPEGs of each CIFAR-10 class, read straight from the shared tar.gz."""
    archive = require_shared("cifar10-jpeg.tar.gz")
    images: dict[str, list[np.ndarray]] = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) < 4 or parts[-3] != "test":
                continue
            bucket = images.setdefault(parts[-2], [])
            if len(bucket) < per_class:
                bucket.append(np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")))
            if len(images) == 10 and all(len(b) == per_class for b in images.values()):
                break
    classes = sorted(images)
    x = torch.from_numpy(np.stack([im for c in classes for im in images[c]])).permute(0, 3, 1, 2)
    y = torch.arange(len(classes)).repeat_interleave(per_class)
    return x, y, classes


def test_external_cifar_resnet20_classifies_real_cifar10():
    path = os.path.join(require_shared("weights/cifar10-resnet"), "resnet20-12fca82f.th")
    model, meta = load_teacher(path, num_classes=10)
    assert meta.arch == "cifar_resnet20" and meta.image_size == 32 and abs(meta.val_acc - 0.9178) < 1e-4
    x, y, classes = _cifar_test_subset(per_class=20)
    assert classes == meta.classes
    mean, std = torch.tensor(meta.mean).view(1, 3, 1, 1), torch.tensor(meta.std).view(1, 3, 1, 1)
    with torch.no_grad():
        acc = (model((x.float() / 255 - mean) / std).argmax(1) == y).float().mean().item()
    assert acc > 0.65, f"ResNet-20 top-1 on {len(y)} CIFAR-10 test JPEGs is {acc:.3f} (README: ~0.81 on all)"


# ------------------------------------------------------------------------------------------------ refusals
class _Payload:
    """Unpickling this would create a marker file: loading must refuse it without running it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickled_object_is_refused_without_running_it(tmp_path, writer):
    marker = str(tmp_path / "pwned")
    path = str(tmp_path / "evil.pth")
    payload = {"state_dict": {"fc.weight": torch.zeros(2, 2)}, "extra": _Payload(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    assert not os.path.exists(marker)
    with pytest.raises(CheckpointError, match=r"evil\.pth.*(refused|not a checkpoint)"):
        load_teacher(path)
    assert not os.path.exists(marker), "loading executed code from the checkpoint"


def test_wrong_class_count_is_refused(tmp_path):
    path = str(tmp_path / "t.safetensors")
    save_teacher(build_model("convnet", 10, 32, 0.25), _meta("convnet", 10, width=0.25), path)
    with pytest.raises(CheckpointError, match=r"t\.safetensors.*has 10 classes.*but 100 were requested"):
        load_teacher(path, num_classes=100)
    ext = str(tmp_path / "r.pth")
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), ext)
    with pytest.raises(CheckpointError, match=r"r\.pth.*has 1000 classes.*but 10 were requested"):
        load_teacher(ext, num_classes=10)


def test_missing_unexpected_keys_and_shapes_are_named(tmp_path):
    state = build_model("cifar_resnet20", 10, 32).state_dict()
    missing = dict(state)
    del missing["layer2.0.conv1.weight"]
    missing["extra.weight"] = torch.zeros(1)
    path = str(tmp_path / "keys.pth")
    torch.save(missing, path)
    with pytest.raises(CheckpointError, match=r"keys\.pth.*1 missing keys \(e\.g\. layer2\.0\.conv1\.weight\).*"
                                              r"1 unexpected keys \(e\.g\. extra\.weight\)"):
        load_teacher(path, arch="cifar_resnet20")
    shaped = dict(state)
    shaped["layer1.0.conv2.weight"] = torch.zeros(16, 16, 5, 5)
    path = str(tmp_path / "shape.pth")
    torch.save(shaped, path)
    with pytest.raises(CheckpointError, match=r"shape\.pth.*layer1\.0\.conv2\.weight: expected \(16, 16, 3, 3\), "
                                              r"file has \(16, 16, 5, 5\)"):
        load_teacher(path, arch="cifar_resnet20")
    with pytest.raises(CheckpointError, match=r"shape\.pth: cannot tell the architecture.*cifar_resnet20"):
        load_teacher(path)


def test_non_checkpoints_are_refused(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match=r"notes\.pth: not a checkpoint"):
        load_teacher(str(text))
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage garbage")
    with pytest.raises(CheckpointError, match=r"fake\.safetensors: unreadable safetensors"):
        load_teacher(str(fake))
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(CheckpointError, match=r"tensor\.pt: not a checkpoint: expected a state dict.*Tensor"):
        load_teacher(str(tensor))
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_teacher(str(tmp_path / "absent.pth"))


def test_weights_holding_nan_are_refused_naming_file_and_tensor(tmp_path, capsys):
    from infer_fast.cli import main

    model = build_model("convnet", 10, 16, 0.125)
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_teacher(model, _meta("convnet", 10, 16, 0.125), str(path))
    with pytest.raises(CheckpointError, match=r"nan\.safetensors: tensor 'classifier\.weight' holds 1 non-finite"):
        load_teacher(str(path))
    rc = main(["distill", "--data", "digits", "--teachers", str(path), "--ipc", "1", "--iterations", "1",
               "--image-size", "16", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "classifier.weight" in err
