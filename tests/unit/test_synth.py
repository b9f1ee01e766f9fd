from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mltrain.data.layout import check_layout
from mltrain.data.synth import parse_image_size, synthesize
from mltrain.errors import DataError
from tests.helpers import call_cli


def test_synth_layout_and_counts(tmp_path: Path) -> None:
    counts = synthesize(tmp_path / "s", per_class=3, image_size="40x30", seed=0)
    check_layout(tmp_path / "s")
    assert counts == {"training": [3] * 11, "validation": [2] * 11, "evaluation": [2] * 11}
    image = Image.open(tmp_path / "s" / "training" / "class_04" / "4_0.jpg")
    assert image.format == "JPEG" and image.size == (40, 30)


def test_synth_is_deterministic(tmp_path: Path) -> None:
    synthesize(tmp_path / "a", per_class=1, image_size=32, seed=5)
    synthesize(tmp_path / "b", per_class=1, image_size=32, seed=5)
    first = (tmp_path / "a" / "training" / "class_02" / "2_0.jpg").read_bytes()
    assert first == (tmp_path / "b" / "training" / "class_02" / "2_0.jpg").read_bytes()


def test_classes_differ_in_colour(tmp_path: Path) -> None:
    # Learnable means class-dependent: the dominant hue of the foreground differs per class.
    synthesize(tmp_path / "s", per_class=4, image_size=64, seed=0)
    means = []
    for label in range(11):
        files = sorted((tmp_path / "s" / "training" / f"class_{label:02d}").glob("*.jpg"))
        pixels = np.stack([np.asarray(Image.open(f).convert("HSV"), dtype=float) for f in files])
        saturated = pixels[..., 1] > 150
        means.append(np.median(pixels[..., 0][saturated]))
    assert len({round(m / 10) for m in means}) >= 9


def test_image_size_parsing() -> None:
    assert parse_image_size("512x384") == (512, 384)
    assert parse_image_size("96") == (96, 96)
    with pytest.raises(DataError):
        parse_image_size("big")


def test_cli_synth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    done = call_cli(capsys, "data", "synth", "--dest", str(tmp_path / "c"), "--per-class", "2", "--image-size", "32x24")
    assert done.returncode == 0, done.stderr
    assert "training" in done.stdout and "22 images" in done.stdout
    check_layout(tmp_path / "c")
