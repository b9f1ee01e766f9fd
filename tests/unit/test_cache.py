"""The decoded-image cache: same pixels and labels as direct decoding, rebuilt when stale or damaged."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets, transforms

from mltrain.config import TrainConfig
from mltrain.data.cache import cache_entry_dir, load_or_build
from mltrain.data.layout import list_samples
from mltrain.data.module import Food11Data

SIZE = 48


def _entry(root: Path, tmp_path: Path, split: str = "validation") -> Path:
    return cache_entry_dir(tmp_path / "cache", root, split, SIZE)


def test_cached_batches_match_direct_decoding(tiny_data: Path, tmp_path: Path) -> None:
    config = TrainConfig(image_size=SIZE, batch_size=8, pretrained=False, cache_dir=str(tmp_path / "cache"))
    data = Food11Data(tiny_data, config, progress=False).setup()
    reference = datasets.ImageFolder(
        tiny_data / "validation", transforms.Compose([transforms.Resize(SIZE), transforms.CenterCrop(SIZE)])
    )
    cached_images, cached_labels = [], []
    for images, labels in data.val_dataloader():
        cached_images.append(images)
        cached_labels.append(labels)
    images = torch.cat(cached_images)
    labels = torch.cat(cached_labels)
    assert images.dtype == torch.uint8 and images.shape[1:] == (3, SIZE, SIZE)
    assert labels.tolist() == [label for _, label in reference.samples]
    for index, (pil, _) in enumerate(reference):
        direct = torch.from_numpy(np.array(pil)).permute(2, 0, 1).float()
        # The cache lets the JPEG decoder downscale first (draft mode): close, not bit-identical.
        difference = (images[index].float() - direct).abs()
        assert difference.mean() < 3.0, index
        assert difference.max() <= 96, index


def test_changed_dataset_invalidates_the_cache(tiny_copy: Path, tmp_path: Path) -> None:
    entry = _entry(tiny_copy, tmp_path)
    first = load_or_build(list_samples(tiny_copy, "validation"), SIZE, entry, progress=False)
    before = np.array(first.open())

    victim = sorted((tiny_copy / "validation" / "class_03").iterdir())[0]
    Image.new("RGB", (80, 60), (255, 0, 0)).save(victim, quality=95)  # same name, new pixels
    (tiny_copy / "validation" / "class_05" / "extra.jpg").write_bytes(victim.read_bytes())

    second = load_or_build(list_samples(tiny_copy, "validation"), SIZE, entry, progress=False)
    assert len(second) == len(first) + 1
    after = np.array(second.open())
    slot = [s.path for s in list_samples(tiny_copy, "validation")].index(victim)
    assert not np.array_equal(before[slot], after[slot])
    assert tuple(after[slot][SIZE // 2, SIZE // 2]) == pytest.approx((255, 0, 0), abs=8)


def test_unchanged_dataset_reuses_the_cache(tiny_data: Path, tmp_path: Path) -> None:
    entry = _entry(tiny_data, tmp_path)
    load_or_build(list_samples(tiny_data, "validation"), SIZE, entry, progress=False)
    stamp = (entry / "images.u8").stat().st_mtime_ns
    load_or_build(list_samples(tiny_data, "validation"), SIZE, entry, progress=False)
    assert (entry / "images.u8").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("damage", ["flip-bytes", "truncate", "bad-meta"])
def test_damaged_cache_is_detected_and_rebuilt(tiny_data: Path, tmp_path: Path, damage: str) -> None:
    entry = _entry(tiny_data, tmp_path)
    samples = list_samples(tiny_data, "validation")
    good = np.array(load_or_build(samples, SIZE, entry, progress=False).open())
    pixels = entry / "images.u8"
    if damage == "flip-bytes":
        raw = bytearray(pixels.read_bytes())
        raw[100:200] = bytes(255 - b for b in raw[100:200])
        pixels.write_bytes(bytes(raw))
    elif damage == "truncate":
        pixels.write_bytes(pixels.read_bytes()[:1000])
    else:
        (entry / "meta.json").write_text("{not json")
    rebuilt = load_or_build(samples, SIZE, entry, progress=False)
    assert np.array_equal(np.array(rebuilt.open()), good)


def test_reserve_allocates_the_blocks_or_falls_back_to_a_sparse_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    from mltrain.data import cache

    allocated = tmp_path / "allocated.u8"
    cache.reserve(allocated, 1 << 20, "a test file")
    assert allocated.stat().st_size == 1 << 20 and allocated.stat().st_blocks * 512 >= 1 << 20  # not sparse

    def unsupported(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    sparse = tmp_path / "sparse.u8"
    cache.reserve(sparse, 1 << 20, "a test file")  # a file system without fallocate: the old sparse file
    assert sparse.stat().st_size == 1 << 20
