"""The table-driven hue step gives torchvision's bytes, and its table file is checked and rebuilt."""

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from mltrain.config import TrainConfig
from mltrain.data import hue
from mltrain.data.transforms import build_augment

FACTORS = [-0.5, -0.37, -0.1, -0.0039, 0.0, 0.002, 0.05, 0.1, 0.26, 0.5]


def random_image(seed: int, size: tuple[int, int] = (61, 47), mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    pixels[:5] = pixels[:5, :1]  # some grey and flat rows too (saturation 0, equal channels)
    return Image.fromarray(pixels).convert(mode)


@pytest.mark.parametrize("factor", FACTORS)
def test_same_bytes_as_torchvision(hue_tables_file: Path, factor: float) -> None:
    image = random_image(int(abs(factor) * 1000))
    ours = hue.adjust_hue(image, factor, hue_tables_file)
    assert ours.mode == "RGB" and ours.size == image.size
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(F.adjust_hue(image, hue_factor=factor)))


def test_every_pixel_value_matches_pil(hue_tables_file: Path) -> None:
    """One image holding all 2**24 colours: the tables agree with PIL's conversions everywhere."""
    codes = np.arange(1 << 24, dtype=np.uint32)
    every = Image.frombytes("RGB", (4096, 4096), codes.view(np.uint8), "raw", "RGBX")
    for factor in (0.1, -0.1):
        np.testing.assert_array_equal(
            np.asarray(hue.adjust_hue(every, factor, hue_tables_file)), np.asarray(F.adjust_hue(every, factor))
        )


def test_other_modes_and_bad_factors_behave_like_torchvision(hue_tables_file: Path) -> None:
    for mode in ("L", "RGBA"):
        image = random_image(3, mode=mode)
        np.testing.assert_array_equal(
            np.asarray(hue.adjust_hue(image, 0.2, hue_tables_file)), np.asarray(F.adjust_hue(image, 0.2))
        )
    with pytest.raises(ValueError, match="hue_factor"):
        hue.adjust_hue(random_image(4), 0.7, hue_tables_file)


def test_color_jitter_draws_and_output_match_torchvision(hue_tables_file: Path) -> None:
    settings = {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.1}
    ours, reference = hue.ColorJitter(**settings, tables=hue_tables_file), v2.ColorJitter(**settings)
    table_uses = hue._load.cache_info()
    for seed in range(12):
        image = random_image(seed, size=(40, 40))
        torch.manual_seed(seed)
        got = ours(image)
        torch.manual_seed(seed)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(reference(image)))
    after = hue._load.cache_info()
    assert after.hits + after.misses - table_uses.hits - table_uses.misses == 12  # the tables did the hue steps


def test_training_augmentation_is_the_labs(hue_tables_file: Path) -> None:
    """build_augment == the lab's flip, rotation and ColorJitter on the same PIL image, byte for byte."""
    config = TrainConfig(pretrained=False)
    augment = build_augment(config)
    lab = v2.Compose(
        [
            v2.RandomHorizontalFlip(p=config.random_horizontal_flip),
            v2.RandomRotation(degrees=config.random_rotation),
            v2.ColorJitter(
                brightness=config.color_jitter_brightness,
                contrast=config.color_jitter_contrast,
                saturation=config.color_jitter_saturation,
                hue=config.color_jitter_hue,
            ),
        ]
    )
    for seed in range(8):
        pixels = np.asarray(random_image(seed, size=(32, 32)))
        torch.manual_seed(seed)
        got = augment(pixels)
        torch.manual_seed(seed)
        np.testing.assert_array_equal(got, np.asarray(lab(Image.fromarray(pixels))))
    # DataLoader workers and Ray workers receive the augmentation pickled: a path, not 128 MB of tables.
    assert len(pickle.dumps(augment)) < 20_000


def test_tables_are_reused(hue_tables_file: Path) -> None:
    root = hue_tables_file.parent.parent
    before = hue_tables_file.stat().st_mtime_ns
    assert hue.ensure_hue_tables(root) == hue_tables_file
    assert hue_tables_file.stat().st_mtime_ns == before


@pytest.mark.parametrize("damage", ["truncated", "overwritten", "missing"])
def test_damaged_tables_are_rebuilt(hue_tables_file: Path, tmp_path: Path, damage: str) -> None:
    root = tmp_path / "own-cache"
    path = hue.tables_path(root)
    path.parent.mkdir(parents=True)
    shutil.copyfile(hue_tables_file, path)  # a private copy: the session's file stays intact
    if damage == "truncated":
        with open(path, "r+b") as handle:
            handle.truncate(path.stat().st_size // 2)
    elif damage == "overwritten":
        with open(path, "r+b") as handle:
            handle.seek(0)
            handle.write(b"\0" * (1 << 20))  # the first 256K RGB->HSV entries zeroed
    else:
        path.unlink()
    assert hue.ensure_hue_tables(root) == path
    assert path.stat().st_size == hue_tables_file.stat().st_size
    assert path.read_bytes() == hue_tables_file.read_bytes()
    assert not list(path.parent.glob("*.tmp"))


def test_unwritable_cache_falls_back_to_pil(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    assert hue.ensure_hue_tables(blocker) is None
    assert "cannot write the hue tables" in caplog.text
    image = random_image(9)
    np.testing.assert_array_equal(np.asarray(hue.adjust_hue(image, 0.1, None)), np.asarray(F.adjust_hue(image, 0.1)))
