"""Small generated ImageFolder datasets for the data tests (real JPEG/PNG files written with PIL)."""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

CLASSES = ["bird", "cat", "dog"]  # created out of order on purpose: labels follow the sorted names


def color_of(split_index: int, cls: int, i: int) -> tuple[int, int, int]:
    """A distinct solid color per file, so that a decoded image identifies its file."""
    return (40 + 60 * cls, 30 + 20 * i, 200 - 50 * split_index)


def smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random RGB image (low-frequency, like a photo: JPEG-friendly, resize-stable)."""
    small = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))


def write_jpeg(path: str, arr: np.ndarray, quality: int = 95) -> None:
    Image.fromarray(arr).save(path, "JPEG", quality=quality)


def make_folder(root: str, per_class: dict[str, int] | None = None, size: tuple[int, int] = (32, 32),
                solid: bool = True, with_bad: bool = True, seed: int = 0) -> dict[str, list[str]]:
    """ROOT/train and ROOT/val with CLASSES; returns {"bad": [rel paths of the bad files by reason order]}.

    Every split/class holds ``per_class[split]`` valid images (alternating JPEG and PNG). With ``with_bad``,
    train/cat also gets a corrupt JPEG, an empty file, a truncated JPEG and a text file named .jpg; plus junk that
    must be ignored: a README.txt, a nested folder with an image, a hidden file, a root-level _meta folder.
    """
    per_class = per_class or {"train": 4, "val": 2}
    rng = np.random.default_rng(seed)
    h, w = size
    for si, (split, n) in enumerate(per_class.items()):
        for cls in CLASSES[::-1]:
            c = CLASSES.index(cls)
            d = os.path.join(root, split, cls)
            os.makedirs(d, exist_ok=True)
            for i in range(n):
                arr = (np.full((h, w, 3), color_of(si, c, i), np.uint8) if solid else smooth_image(rng, h, w))
                if i % 2 == 0:
                    write_jpeg(os.path.join(d, f"img{i:03d}.jpg"), arr)
                else:
                    Image.fromarray(arr).save(os.path.join(d, f"img{i:03d}.png"))
    bad = {}
    if with_bad:
        d = os.path.join(root, "train", "cat")
        buf = io.BytesIO()
        Image.fromarray(smooth_image(rng, 64, 64)).save(buf, "JPEG", quality=90)
        jpg = bytearray(buf.getvalue())
        corrupt = bytearray(jpg)
        mid = len(corrupt) // 2
        corrupt[mid:mid + 200] = rng.integers(0, 256, 200, dtype=np.uint8).tobytes()
        files = {
            "undecodable": ("corrupt.jpg", bytes(corrupt)),
            "empty": ("empty.jpg", b""),
            "truncated": ("truncated.jpg", bytes(jpg[: len(jpg) // 2])),
            "not an image": ("notes.jpg", b"this is not an image, just text\n" * 10),
        }
        for reason, (name, data) in files.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
            bad[reason] = os.path.join("train", "cat", name)
        with open(os.path.join(d, "README.txt"), "w") as f:
            f.write("ignored")
        with open(os.path.join(d, ".hidden.jpg"), "wb") as f:
            f.write(b"junk")
        os.makedirs(os.path.join(d, "nested"), exist_ok=True)
        write_jpeg(os.path.join(d, "nested", "deep.jpg"), np.zeros((8, 8, 3), np.uint8))
        os.makedirs(os.path.join(root, "_meta"), exist_ok=True)
        with open(os.path.join(root, "_meta", "wnids.txt"), "w") as f:
            f.write("\n".join(CLASSES))
    return bad
