from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from mltrain.data.images import BadImageError, decode_square, open_rgb, resize_center_crop


def _write(path: Path, mode: str) -> Path:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (30, 50, 3), dtype=np.uint8))
    if mode == "P":
        image = rgb.convert("P", palette=Image.Palette.ADAPTIVE)
        image.info["transparency"] = 0
    else:
        image = rgb.convert(mode)
    image.save(path)
    return path


@pytest.mark.parametrize(("mode", "suffix"), [("L", ".jpg"), ("RGBA", ".png"), ("P", ".png"), ("RGB", ".bmp")])
def test_any_mode_becomes_rgb(tmp_path: Path, mode: str, suffix: str) -> None:
    image = open_rgb(_write(tmp_path / f"x{suffix}", mode))
    assert image.mode == "RGB" and image.size == (50, 30)
    assert decode_square(tmp_path / f"x{suffix}", 16).shape == (16, 16, 3)


def test_bad_files_raise_bad_image(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image")
    good = _write(tmp_path / "good.jpg", "RGB").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(good[: len(good) // 2])
    for name in ("empty.jpg", "notes.txt", "truncated.jpg"):
        with pytest.raises(BadImageError, match=name):
            decode_square(tmp_path / name, 16)


def test_resize_crop_matches_torchvision(tmp_path: Path) -> None:
    image = open_rgb(_write(tmp_path / "x.png", "RGB"))
    ours = np.asarray(resize_center_crop(image, 24))
    reference = v2.Compose([v2.Resize(24), v2.CenterCrop(24)])(image)
    assert np.array_equal(ours, np.asarray(reference))


def test_fast_decode_is_close_to_exact(tmp_path: Path) -> None:
    big = Image.fromarray(np.random.default_rng(1).integers(0, 255, (384, 512, 3), dtype=np.uint8))
    big = big.resize((128, 96)).resize((512, 384))  # smooth content, like a photo
    big.save(tmp_path / "big.jpg", quality=95)
    fast = torch.tensor(decode_square(tmp_path / "big.jpg", 64, fast=True)).float()
    exact = torch.tensor(decode_square(tmp_path / "big.jpg", 64, fast=False)).float()
    assert (fast - exact).abs().mean() < 4.0
