import zipfile
from pathlib import Path

import pytest

from mltrain.data.layout import check_layout
from mltrain.data.prepare import prepare
from mltrain.data.synth import synthesize
from mltrain.errors import DataError
from tests.helpers import call_cli


def _food11_zip(tmp_path: Path, top: str = "") -> Path:
    """A zip laid out like the Food-11 mirror: split folders of flat ``<class>_<n>.jpg`` files."""
    source = tmp_path / "src"
    synthesize(source, per_class=2, image_size=24, seed=3, eval_per_class=1)
    archive = tmp_path / "food11.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for file in sorted(source.rglob("*.jpg")):
            split = file.parents[1].name
            bundle.write(file, f"{top}{split}/{file.name}")
    return archive


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("top", ["", "Food-11/"])
def test_prepare_from_archive_is_idempotent(tmp_path: Path, top: str) -> None:
    archive = _food11_zip(tmp_path, top)
    dest = tmp_path / "data"
    report = prepare(dest, archive=archive, progress=False)
    check_layout(dest)
    assert report.extracted and report.moved == 44
    assert report.counts == {"training": [2] * 11, "validation": [1] * 11, "evaluation": [1] * 11}
    assert (dest / "training" / "class_07" / "7_1.jpg").is_file()
    before = _snapshot(dest)
    again = prepare(dest, archive=archive, progress=False)
    assert not again.changed
    assert _snapshot(dest) == before


def test_no_network_says_use_archive(tmp_path: Path) -> None:
    # Port 9 (discard) on loopback is closed: the same failure as being offline, without waiting.
    with pytest.raises(DataError, match="--archive"):
        prepare(tmp_path / "data", url="http://127.0.0.1:9/food11.zip", progress=False)


def test_archive_without_splits(tmp_path: Path) -> None:
    archive = tmp_path / "other.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("readme.txt", "hello")
    with pytest.raises(DataError, match="holds no training, validation, evaluation"):
        prepare(tmp_path / "data", archive=archive, progress=False)
    not_zip = tmp_path / "x.zip"
    not_zip.write_text("nope")
    with pytest.raises(DataError, match="not a zip"):
        prepare(tmp_path / "data2", archive=not_zip, progress=False)


def test_cli_prepare_offline_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    done = call_cli(capsys, "data", "prepare", "--dest", str(tmp_path / "d"), "--url", "http://127.0.0.1:9/x.zip")
    assert done.returncode == 2
    assert "--archive" in done.stderr and "Traceback" not in done.stderr


def test_cli_prepare_archive_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = _food11_zip(tmp_path)
    first = call_cli(capsys, "data", "prepare", "--dest", str(tmp_path / "d"), "--archive", str(archive))
    assert first.returncode == 0, first.stderr
    assert "training" in first.stdout and "22 images" in first.stdout
    second = call_cli(capsys, "data", "prepare", "--dest", str(tmp_path / "d"), "--archive", str(archive))
    assert second.returncode == 0
    assert "nothing changed" in second.stdout
