"""`mltrain bench` end to end on a tiny set: both loops run and the JSON holds every number."""

import json
import math
from pathlib import Path

import pytest

from tests.helpers import run_cli

pytestmark = pytest.mark.integration


@pytest.mark.timeout(300)
def test_bench_runs_both_loops_and_writes_json(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = run_cli(
        "bench", "--data", str(tiny_data), "--epochs", "1+1", "--json", str(out), "--no-progress",
        "--set", "image_size=64", "--set", "batch_size=16",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "| head (1 epoch) |" in done.stdout and "| fine-tune (1 epoch) |" in done.stdout

    result = json.loads(out.read_text())
    assert result["settings"]["head_epochs"] == 1 and result["settings"]["fine_tune_epochs"] == 1
    assert result["settings"]["image_size"] == 64 and result["settings"]["batch_size"] == 16
    train_images = 11 * 4
    for loop in ("naive", "mltrain"):
        for phase in ("head", "fine-tune"):
            numbers = result[loop]["phases"][phase]
            assert numbers["epochs"] == 1
            assert numbers["train_images"] == train_images
            assert numbers["images_per_second"] > 0
            assert 0 <= numbers["data_wait_fraction"] <= 1
            assert numbers["epoch_seconds"] >= numbers["train_seconds"] > 0
        assert 0 <= result[loop]["val_accuracy"] <= 1
    assert set(result["ratios"]) == {"head", "fine-tune", "overall"}
    assert all(math.isfinite(value) and value > 0 for value in result["ratios"].values())
    assert result["machine"]["device"] == "cpu" and result["machine"]["cpus_available"] >= 1


def test_bench_rejects_bad_epochs(tiny_data: Path) -> None:
    done = run_cli("bench", "--data", str(tiny_data), "--epochs", "two")
    assert done.returncode == 2
    assert "HEAD+FINE_TUNE" in done.stderr
