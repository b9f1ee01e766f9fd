from pathlib import Path

import pytest

from mltrain.data.layout import CLASS_NAMES, check_layout, class_dir_name, list_samples
from mltrain.errors import DataError


def test_tiny_set_is_valid(tiny_data: Path) -> None:
    check_layout(tiny_data)
    samples = list_samples(tiny_data, "training")
    assert len(samples) == 44
    assert {s.label for s in samples} == set(range(11))
    assert all(s.path.parent.name == class_dir_name(s.label) for s in samples)


def test_class_names() -> None:
    assert len(CLASS_NAMES) == 11
    assert CLASS_NAMES[0] == "Bread" and CLASS_NAMES[-1] == "Vegetable/Fruit"


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        check_layout(tmp_path / "nope")


def test_missing_split(tiny_copy: Path) -> None:
    import shutil

    shutil.rmtree(tiny_copy / "validation")
    with pytest.raises(DataError) as err:
        check_layout(tiny_copy)
    assert "missing split folder(s) validation" in str(err.value)
    assert "found evaluation, training" in str(err.value)


def test_no_class_folders(tmp_path: Path) -> None:
    for split in ("training", "validation", "evaluation"):
        (tmp_path / "d" / split).mkdir(parents=True)
        (tmp_path / "d" / split / "0_1.jpg").write_bytes(b"x")
    with pytest.raises(DataError) as err:
        check_layout(tmp_path / "d")
    message = str(err.value)
    assert "exactly 11 class folders class_00 … class_10" in message
    assert "found 0 class folder(s)" in message and "mltrain data prepare" in message


def test_wrong_class_count(tiny_copy: Path) -> None:
    import shutil

    shutil.rmtree(tiny_copy / "training" / "class_10")
    with pytest.raises(DataError, match="found 10 class folder"):
        check_layout(tiny_copy)
